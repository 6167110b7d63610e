"""Tiny CUB, FGVC-Aircraft and Stanford Cars in their official layouts.

Each `write_*` function writes a few 32x24 JPEGs (a few grayscale and CMYK)
and the annotation files into a manual dir, as extracted folders or as the
official archives, and returns what a correct builder must produce:
`Expected.splits[split][file_name]` holds the original bytes, label, box
(ymin, xmin, ymax, xmax normalised) and id of every example.
"""

import dataclasses
import io
import os
import tarfile

import numpy as np
import PIL.Image
import scipy.io

WIDTH, HEIGHT = 32, 24
BANNER = 20  # FGVC-Aircraft's banner rows.
BANNER_RGB = (255, 255, 255)  # Brighter than any content pixel, in every mode.


@dataclasses.dataclass
class Expected:
  class_names: list
  splits: dict  # split -> file_name -> {'image', 'label', 'bbox', 'image_id'}.
  paths: dict = dataclasses.field(default_factory=dict)  # file_name -> path on disk.


def jpeg(seed: int, mode: str = 'RGB', banner: int = 0) -> bytes:
  """A WIDTH x (HEIGHT + banner) JPEG; the banner rows are white, the rest darker."""
  rng = np.random.default_rng(seed)
  pixels = np.zeros((HEIGHT + banner, WIDTH, 3), np.uint8)
  pixels[:HEIGHT] = rng.integers(0, 90, size=3)
  pixels[:HEIGHT, :, 1:] += rng.integers(0, 60, size=(HEIGHT, WIDTH, 2), dtype=np.uint8)
  pixels[HEIGHT:] = BANNER_RGB
  img = PIL.Image.fromarray(pixels).convert(mode)
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def corrupt() -> bytes:
  return b'\xff\xd8\xff\xe0 this is not a JPEG at all'


def truncated(data: bytes) -> bytes:
  return data[:len(data) // 2]


def _mode(i: int) -> str:
  return {1: 'L', 2: 'CMYK'}.get(i, 'RGB')


def write(manual_dir, files: dict, archives: dict | None = None) -> dict:
  """Writes {path: bytes}; files whose top folder is a key of `archives` go into that tar.gz.

  Returns {path: where it was written} (an archive path + ':' + member for archived files).
  """
  archives = archives or {}
  where = {}
  members = {}
  for path, data in files.items():
    top = path.split('/')[0]
    if top in archives:
      members.setdefault(top, {})[path] = data
      where[path] = f'{os.path.join(manual_dir, archives[top])}:{path}'
      continue
    full = os.path.join(manual_dir, *path.split('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'wb') as f:
      f.write(data)
    where[path] = full
  for top, content in members.items():
    with tarfile.open(os.path.join(manual_dir, archives[top]), 'w:gz') as tar:
      for path, data in content.items():
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return where


def _text(lines) -> bytes:
  return ('\n'.join(lines) + '\n').encode()


def _bbox(x0, y0, x1, y1, width, height):
  clip = lambda v: min(1.0, max(0.0, v))
  return (clip(y0 / height), clip(x0 / width), clip(y1 / height), clip(x1 / width))


CUB_CLASSES = ['001.Black_footed_Albatross', '002.Laysan_Albatross', '003.Sooty_Albatross']


def write_cub(manual_dir, archive=False, num_images=9, bad=None) -> Expected:
  """CUB_200_2011/ (or CUB_200_2011.tgz): odd ids train, even ids test.

  Args:
    manual_dir: where to write.
    archive: write the official archive instead of the folder.
    num_images: images in all.
    bad: {image_id: bytes} replacing some images (corrupt or truncated).
  """
  bad = bad or {}
  files, lines = {}, {k: [] for k in ('images', 'labels', 'split', 'boxes')}
  expected = Expected(list(CUB_CLASSES), {'train': {}, 'test': {}})
  for i in range(1, num_images + 1):
    label = (i - 1) % len(CUB_CLASSES)
    path = f'{CUB_CLASSES[label]}/{CUB_CLASSES[label][4:]}_{i:04d}_{100 + i}.jpg'
    data = bad.get(i, jpeg(i, _mode(i)))
    files[f'CUB_200_2011/images/{path}'] = data
    x, y, w, h = float(i), 2.0, 10.0, 14.0 + 2 * i  # Tall boxes run past the bottom edge.
    lines['images'].append(f'{i} {path}')
    lines['labels'].append(f'{i} {label + 1}')
    lines['split'].append(f'{i} {i % 2}')
    lines['boxes'].append(f'{i} {x} {y} {w} {h}')
    expected.splits['train' if i % 2 else 'test'][f'images/{path}'] = dict(
        image=data, label=label, image_id=i, bbox=_bbox(x, y, x + w, y + h, WIDTH, HEIGHT))
  files['CUB_200_2011/images.txt'] = _text(lines['images'])
  files['CUB_200_2011/image_class_labels.txt'] = _text(lines['labels'])
  files['CUB_200_2011/train_test_split.txt'] = _text(lines['split'])
  files['CUB_200_2011/bounding_boxes.txt'] = _text(lines['boxes'])
  files['CUB_200_2011/classes.txt'] = _text(f'{i + 1} {c}' for i, c in enumerate(CUB_CLASSES))
  # Beside the folder, as in the real archive: to be ignored.
  files['attributes.txt'] = b'1 has_bill_shape::curved\n'
  where = write(manual_dir, files, {'CUB_200_2011': 'CUB_200_2011.tgz'} if archive else None)
  expected.paths = {k[len('CUB_200_2011/'):]: v for k, v in where.items()}
  return expected


# (variant, family, manufacturer): names with spaces, as in the real lists.
AIRCRAFT = [('707-320', 'Boeing 707', 'Boeing'), ('717', 'Boeing 717', 'Boeing'),
            ('A300B4', 'A300', 'Airbus'), ('DHC-8-100', 'DHC-8', 'de Havilland Canada')]
AIRCRAFT_SPLITS = {'train': [0, 1, 2], 'val': [3, 4, 5], 'test': [6, 7]}


def write_aircraft(manual_dir, archive=False, level='variant', bad=None) -> Expected:
  """fgvc-aircraft-2013b/ (or its .tar.gz): 8 images of 32 x (24 + 20 banner)."""
  bad = bad or {}
  level_index = {'variant': 0, 'family': 1, 'manufacturer': 2}
  root = 'fgvc-aircraft-2013b/data'
  ids = ['0034309', '0034958', '1025794', '0056978', '1159113', '0065321', '2234871', '0048002']
  files, boxes = {}, []
  per_image = {}
  for k, image_id in enumerate(ids):
    data = bad.get(k, jpeg(100 + k, _mode(k), banner=BANNER))
    files[f'{root}/images/{image_id}.jpg'] = data
    xmin, ymin, xmax, ymax = 3 + k, 2, 20 + k, 30  # 1-based; ymax runs into the banner.
    boxes.append(f'{image_id} {xmin} {ymin} {xmax} {ymax}')
    per_image[image_id] = dict(
        image=data, image_id=int(image_id), aircraft=AIRCRAFT[k % len(AIRCRAFT)],
        bbox=_bbox(xmin - 1, ymin - 1, xmax, ymax, WIDTH, HEIGHT))
  files[f'{root}/images_box.txt'] = _text(boxes)
  for name, j in level_index.items():
    names = list(dict.fromkeys(a[j] for a in AIRCRAFT))
    plural = {'variant': 'variants', 'family': 'families', 'manufacturer': 'manufacturers'}
    files[f'{root}/{plural[name]}.txt'] = _text(names)
    split_ids = dict(AIRCRAFT_SPLITS, trainval=AIRCRAFT_SPLITS['train'] + AIRCRAFT_SPLITS['val'])
    for split, members in split_ids.items():
      files[f'{root}/images_{name}_{split}.txt'] = _text(
          f'{ids[k]} {per_image[ids[k]]["aircraft"][j]}' for k in members)
  j = level_index[level]
  names = list(dict.fromkeys(a[j] for a in AIRCRAFT))
  expected = Expected(names, {})
  for split, members in dict(AIRCRAFT_SPLITS, trainval=[0, 1, 2, 3, 4, 5]).items():
    expected.splits[split] = {}
    for k in members:
      ex = per_image[ids[k]]
      expected.splits[split][f'data/images/{ids[k]}.jpg'] = dict(
          image=ex['image'], image_id=ex['image_id'], bbox=ex['bbox'],
          label=names.index(ex['aircraft'][j]))
  where = write(manual_dir, files,
                {'fgvc-aircraft-2013b': 'fgvc-aircraft-2013b.tar.gz'} if archive else None)
  expected.paths = {k[len('fgvc-aircraft-2013b/'):]: v for k, v in where.items()}
  return expected


CARS_CLASSES = ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012', 'Acura TL Sedan 2012']


def struct_array(records: list, fields) -> np.ndarray:
  """A MATLAB struct array shaped (1, N) as in the official .mat files."""
  array = np.zeros((1, len(records)), dtype=[(f, 'O') for f in fields])
  for i, record in enumerate(records):
    for f in fields:
      v = record[f]
      array[f][0, i] = np.array([v]) if isinstance(v, str) else np.array([[v]], np.uint16)
  return array


def cell_strings(names) -> np.ndarray:
  cells = np.empty((1, len(names)), dtype=object)
  for i, n in enumerate(names):
    cells[0, i] = np.array([n])
  return cells


def save_mat(**variables) -> bytes:
  buf = io.BytesIO()
  scipy.io.savemat(buf, variables)
  return buf.getvalue()


def _cars_box(i):
  return dict(bbox_x1=1 + i, bbox_y1=3, bbox_x2=20 + i, bbox_y2=24)  # 1-based, inclusive.


def write_cars_devkit(manual_dir, archive=False, bad=None) -> Expected:
  """Layout (a): devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat."""
  bad = bad or {}
  expected = Expected(list(CARS_CLASSES), {'train': {}, 'test': {}})
  files = {}
  for split, count, seed in (('train', 4, 200), ('test', 3, 300)):
    records = []
    for i in range(count):
      fname = f'{i + 1:05d}.jpg'
      data = bad.get((split, i), jpeg(seed + i, _mode(i)))
      files[f'cars_{split}/{fname}'] = data
      record = dict(_cars_box(i), fname=fname)
      record['class'] = i % len(CARS_CLASSES) + 1
      records.append(record)
      expected.splits[split][f'cars_{split}/{fname}'] = dict(
          image=data, label=i % len(CARS_CLASSES), image_id=i + 1,
          bbox=_bbox(i, 2, 20 + i, 24, WIDTH, HEIGHT))
    fields = ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname')
    mat = save_mat(annotations=struct_array(records, fields))
    files['devkit/cars_train_annos.mat' if split == 'train'
          else 'cars_test_annos_withlabels.mat'] = mat
  files['devkit/cars_meta.mat'] = save_mat(class_names=cell_strings(CARS_CLASSES))
  archives = {'devkit': 'car_devkit.tgz', 'cars_train': 'cars_train.tgz',
              'cars_test': 'cars_test.tgz'} if archive else None
  expected.paths = write(manual_dir, files, archives)
  return expected


def write_cars_car_ims(manual_dir, archive=False, bad=None) -> Expected:
  """Layout (b): car_ims/ (or car_ims.tgz) and cars_annos.mat; every third image is test."""
  bad = bad or {}
  expected = Expected(list(CARS_CLASSES), {'train': {}, 'test': {}})
  files, records = {}, []
  for i in range(7):
    path = f'car_ims/{i + 1:06d}.jpg'
    data = bad.get(i, jpeg(400 + i, _mode(i)))
    files[path] = data
    test = int(i % 3 == 2)
    record = dict(_cars_box(i), relative_im_path=path, test=test)
    record['class'] = (i * 2) % len(CARS_CLASSES) + 1
    records.append(record)
    expected.splits['test' if test else 'train'][path] = dict(
        image=data, label=record['class'] - 1, image_id=i + 1,
        bbox=_bbox(i, 2, 20 + i, 24, WIDTH, HEIGHT))
  fields = ('relative_im_path', 'bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'test')
  files['cars_annos.mat'] = save_mat(annotations=struct_array(records, fields),
                                     class_names=cell_strings(CARS_CLASSES))
  expected.paths = write(manual_dir, files, {'car_ims': 'car_ims.tgz'} if archive else None)
  return expected
