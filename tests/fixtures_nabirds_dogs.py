"""Tiny NABirds and Stanford Dogs in their official layouts.

`write_nabirds` and `write_dogs` write a few 32x24 JPEGs (some grayscale or
CMYK) and the annotation files into a manual dir, as the extracted folders or
as the official archives, and return what a correct builder must produce
(`fixtures_official.Expected`): the expectations are worked out here from the
values the fixture chose, not by reading the files back.
"""

import io
import os
import tarfile
import uuid

import numpy as np
import scipy.io

import fixtures_official as fx

WIDTH, HEIGHT = fx.WIDTH, fx.HEIGHT


def _text(lines) -> bytes:
  return ('\n'.join(lines) + '\n').encode()


def normalised(x0, y0, x1, y1, width=WIDTH, height=HEIGHT):
  """(ymin, xmin, ymax, xmax) in [0, 1], the way the builders must store a pixel box."""
  clip = lambda v: min(1.0, max(0.0, v))
  return (clip(y0 / height), clip(x0 / width), clip(y1 / height), clip(x1 / width))


def _mode(i: int) -> str:
  return {1: 'L', 2: 'CMYK'}.get(i % 5, 'RGB')


def write_tar(path: str, members: dict, compress: bool = False):
  """A tar archive holding {member name: bytes}, in the order given."""
  with tarfile.open(path, 'w:gz' if compress else 'w') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def write_files(manual_dir: str, files: dict) -> dict:
  """Writes {relative path: bytes} below manual_dir; returns {path: full path}."""
  where = {}
  for rel, data in files.items():
    full = os.path.join(manual_dir, *rel.split('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'wb') as f:
      f.write(data)
    where[rel] = full
  return where


# --- NABirds ----------------------------------------------------------------------------

# classes.txt: inner nodes and leaves of the taxonomy, ids with gaps, names with spaces.
NABIRDS_CLASSES = {
    0: 'Birds', 1: 'Perching Birds', 22: 'Hawks, Kites, Eagles, and Allies',
    295: 'Bald Eagle (Adult, subadult)', 313: 'Sharp-shinned Hawk (Adult )',
    400: 'Tree Swallow',  # A leaf that labels no image: not a class of the data set.
    599: 'Red-tailed Hawk', 817: 'Red-tailed Hawk (Light morph adult)',
    1000: 'Northern Cardinal (Adult Male)',
}
NABIRDS_HIERARCHY = {1: 0, 22: 0, 295: 22, 313: 22, 599: 22, 817: 599, 400: 1, 1000: 1}
NABIRDS_LABELS = [817, 295, 1000, 313]  # Image k has class NABIRDS_LABELS[k % 4].
NABIRDS_TRAIN = [1, 0, 0, 1, 1, 0, 1, 0, 1]  # is_training_image of image k.


def nabirds_uuid(k: int) -> str:
  return str(uuid.UUID(int=(0x9e3779b97f4a7c15 * (k + 3)) % (1 << 128)))


def write_nabirds(manual_dir, archive=False, bad=None) -> fx.Expected:
  """nabirds/ (or nabirds.tar.gz) with 9 images; `bad` maps image k to replacement bytes."""
  bad = bad or {}
  leaves = sorted(set(NABIRDS_LABELS))  # The classes, by id: 295, 313, 817, 1000.
  expected = fx.Expected([NABIRDS_CLASSES[c] for c in leaves], {'train': {}, 'test': {}})
  ids = [nabirds_uuid(k) for k in range(len(NABIRDS_TRAIN))]
  line_of = {image_id: n + 1 for n, image_id in enumerate(sorted(ids))}  # images.txt is sorted.
  files, rows = {}, {}
  for k, image_id in enumerate(ids):
    class_id = NABIRDS_LABELS[k % len(NABIRDS_LABELS)]
    path = f'{class_id:04d}/{image_id.replace("-", "")}.jpg'
    data = bad.get(k, fx.jpeg(500 + k, _mode(k)))
    files[f'nabirds/images/{path}'] = data
    x, y, w, h = 2 + k, 1, 12, 10 + 2 * k  # Tall boxes run past the bottom edge.
    rows[image_id] = dict(path=path, class_id=class_id, train=NABIRDS_TRAIN[k],
                          box=f'{x} {y} {w} {h}')
    split = 'train' if NABIRDS_TRAIN[k] else 'test'
    expected.splits[split][f'images/{path}'] = dict(
        image=data, label=leaves.index(class_id), image_id=line_of[image_id],
        bbox=normalised(x, y, x + w, y + h))
  order = sorted(ids)
  files['nabirds/images.txt'] = _text(f'{i} {rows[i]["path"]}' for i in order)
  # The other tables in another order: rows are matched by id, not by line.
  files['nabirds/image_class_labels.txt'] = _text(
      f'{i} {rows[i]["class_id"]}' for i in reversed(order))
  files['nabirds/train_test_split.txt'] = _text(f'{i} {rows[i]["train"]}' for i in ids)
  files['nabirds/bounding_boxes.txt'] = _text(f'{i} {rows[i]["box"]}' for i in order)
  files['nabirds/classes.txt'] = _text(f'{c} {n}' for c, n in NABIRDS_CLASSES.items())
  # Present in the real layout and not read.
  files['nabirds/hierarchy.txt'] = _text(f'{c} {p}' for c, p in NABIRDS_HIERARCHY.items())
  files['nabirds/sizes.txt'] = _text(f'{i} {WIDTH} {HEIGHT}' for i in order)
  files['nabirds/photographers.txt'] = _text(f'{i} Jane Q. Birder' for i in order)
  files['nabirds/parts/parts.txt'] = _text(['0 bill', '1 crown'])
  files['nabirds/parts/part_locs.txt'] = _text(f'{i} 0 3 4 1' for i in order)
  if archive:
    path = os.path.join(manual_dir, 'nabirds.tar.gz')
    write_tar(path, files, compress=True)
    expected.paths = {rel[len('nabirds/'):]: f'{path}:{rel}' for rel in files}
  else:
    expected.paths = {rel[len('nabirds/'):]: full
                      for rel, full in write_files(manual_dir, files).items()}
  return expected


# --- Stanford Dogs ----------------------------------------------------------------------

DOG_BREEDS = [('n02085620', 'Chihuahua'), ('n02086240', 'Shih-Tzu'), ('n02088364', 'beagle')]
DOG_TEST = (2,)  # The third image of each breed is a test image, the others train.


def dog_objects(i: int) -> list:
  """The boxes (xmin, ymin, xmax, ymax) of image i's dogs, in the XML's order."""
  if i == 4:  # Two dogs, the second larger: 10 x 10 < 12 x 15.
    return [(1, 1, 11, 11), (15, 3, 27, 18)]
  if i == 7:  # Three dogs, two of the same largest area: the first of them is kept.
    return [(0, 0, 4, 4), (2, 2, 10, 12), (20, 5, 30, 13)]
  return [(1 + i, 2, 20 + i, 30)]  # Runs past the bottom edge (height 24): clipped.


def largest(boxes):
  """The box the builder must keep, by an explicit loop: the first of largest area."""
  best, best_area = None, -1.0
  for b in boxes:
    area = (b[2] - b[0]) * (b[3] - b[1])
    if area > best_area:
      best, best_area = b, area
  return best


def annotation_xml(folder: str, name: str, boxes, size=(WIDTH, HEIGHT)) -> bytes:
  """An annotation as the official files write it (ImageNet / PASCAL VOC style)."""
  objects = ''.join(
      f'\t<object>\n\t\t<name>{folder.split("-", 1)[1]}</name>\n\t\t<pose>Unspecified</pose>\n'
      f'\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n'
      f'\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n'
      f'\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n'
      for x0, y0, x1, y1 in boxes)
  return (f'<annotation>\n\t<folder>{folder.split("-")[0][1:]}</folder>\n'
          f'\t<filename>{name}</filename>\n\t<source>\n\t\t<database>ImageNet database'
          f'</database>\n\t</source>\n\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>'
          f'{size[1]}</height>\n\t\t<depth>3</depth>\n\t</size>\n\t<segment>0</segment>\n'
          f'{objects}</annotation>').encode()


def cell_column(strings) -> np.ndarray:
  """A MATLAB cell array of strings shaped (N, 1), as in the official lists."""
  cells = np.empty((len(strings), 1), dtype=object)
  for i, s in enumerate(strings):
    cells[i, 0] = np.array([s])
  return cells


def list_mat(images: list, labels: list, annotations: list | None = None) -> bytes:
  """One list .mat file: file_list, annotation_list and labels as (N, 1) columns."""
  annotations = [p[:-4] for p in images] if annotations is None else annotations
  return fx.save_mat(file_list=cell_column(images), annotation_list=cell_column(annotations),
                     labels=np.asarray(labels, np.float64).reshape(-1, 1))


def write_dogs(manual_dir, archive=False, lists_folder=False, bad=None) -> fx.Expected:
  """Images/, Annotation/ and the lists (or the three .tar) for 3 breeds x 3 images.

  Args:
    manual_dir: where to write.
    archive: write images.tar, annotation.tar and lists.tar instead (True), or
      those of them named (a tuple of 'images', 'annotation', 'lists').
    lists_folder: put the extracted .mat files in lists/ rather than manual_dir.
    bad: {image index: bytes} replacing some images.
  """
  bad = bad or {}
  expected = fx.Expected([breed for _, breed in DOG_BREEDS], {'train': {}, 'test': {}})
  images, annotations, lists = {}, {}, {'file': [], 'train': [], 'test': []}
  for i in range(3 * len(DOG_BREEDS)):
    label = i // 3 + 1
    wnid, breed = DOG_BREEDS[label - 1]
    folder, name = f'{wnid}-{breed}', f'{wnid}_{1000 + 37 * i}'
    data = bad.get(i, fx.jpeg(700 + i, _mode(i)))
    images[f'Images/{folder}/{name}.jpg'] = data
    size = (640, 480) if i == 5 else (WIDTH, HEIGHT)  # A wrong <size> is not used.
    annotations[f'Annotation/{folder}/{name}'] = annotation_xml(folder, name, dog_objects(i),
                                                                size)
    split = 'test' if i % 3 in DOG_TEST else 'train'
    lists['file'].append((f'{folder}/{name}.jpg', label))
    lists[split].append((f'{folder}/{name}.jpg', label))
    expected.splits[split][f'Images/{folder}/{name}.jpg'] = dict(
        image=data, label=label - 1, image_id=i + 1, bbox=normalised(*largest(dog_objects(i))))
  mats = {f'{key}_list.mat': list_mat([p for p, _ in v], [k for _, k in v])
          for key, v in lists.items()}
  archived = {'images', 'annotation', 'lists'} if archive is True else set(archive or ())
  for part, members in (('images', images), ('annotation', annotations), ('lists', mats)):
    if part in archived:
      write_tar(os.path.join(manual_dir, f'{part}.tar'), members)
    else:
      where = write_files(os.path.join(manual_dir, 'lists') if part == 'lists' and lists_folder
                          else manual_dir, members)
      expected.paths.update(where if part == 'images' else {})
  if 'images' in archived:
    expected.paths = {rel: f'{os.path.join(manual_dir, "images.tar")}:{rel}' for rel in images}
  return expected
