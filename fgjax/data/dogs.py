"""Stanford Dogs (120 breeds): TFDS builder from the official files.

The manual dir holds the three official archives or what they extract to:

  images.tar      -> Images/<wnid>-<Breed>/<wnid>_<n>.jpg
  annotation.tar  -> Annotation/<wnid>-<Breed>/<wnid>_<n>: PASCAL VOC-like XML
                     (no extension) with one <object><bndbox> (xmin, ymin,
                     xmax, ymax) per dog in the picture
  lists.tar       -> file_list.mat, train_list.mat, test_list.mat, each with
                     the variables file_list ('<wnid>-<Breed>/<wnid>_<n>.jpg'),
                     annotation_list (the same path without '.jpg') and labels
                     (1..120); lists.tar has no folder, so its files are looked
                     for in the manual dir itself or in a lists/ folder there.

Splits: train (12,000, 100 per breed) and test (8,580). The images come from
ImageNet-1k's training set, which an ImageNet-pretrained backbone has seen.

Our readings where the files leave room:
  * the class names come from the folder names of file_list.mat: label k is
    the folder its images sit in, minus the WordNet id, e.g. 'Chihuahua',
    'Shih-Tzu'; every label must keep to one folder.
  * an image with several dogs keeps the largest box (by area, the first one
    on a tie): the dog the breed label is most likely about. The union would
    take in the background between the dogs.
  * box coordinates are pixels from the image's top-left edge, as written
    (the box spans [xmin, xmax] x [ymin, ymax], as TFDS's stanford_dogs reads
    them), normalised by the decoded image's size, not by the XML's <size>.
  * `image_id` is the 1-based position in file_list.mat; `file_name` is
    'Images/<wnid>-<Breed>/<wnid>_<n>.jpg'. Errors name a .mat entry 0-based,
    e.g. 'train_list.mat: file_list[3]'.
"""

import dataclasses
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import tensorflow_datasets as tfds

from fgjax.data import cars
from fgjax.data import manual_files

ALL_LIST = 'file_list.mat'
SPLIT_LISTS = {'train': 'train_list.mat', 'test': 'test_list.mat'}
LIST_VARIABLES = ('file_list', 'annotation_list', 'labels')
BOX_TAGS = ('xmin', 'ymin', 'xmax', 'ymax')
_IMAGE_PATH = re.compile(r'([^/]+)/([^/]+)\.jpg')
Error = manual_files.OfficialFilesError


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of a list .mat file."""
  image: str  # Path below Images/, e.g. 'n02085620-Chihuahua/n02085620_10074.jpg'.
  annotation: str  # Path below Annotation/.
  label: int  # 1-based, as in the file.
  source: str  # The .mat file and index, for messages.


class _FlatArchiveTree(manual_files.ArchiveTree):
  """lists.tar, whose files sit at the top of the archive, below no folder."""

  def __init__(self, path: str, keep=()):
    super().__init__(path, '', keep)
    self.prefix = ''


def find_lists(manual_dir: str) -> manual_files.FileTree:
  """The list .mat files: extracted (in manual_dir/lists/ or manual_dir) or in lists.tar."""
  names = (ALL_LIST, *SPLIT_LISTS.values())
  for folder in (os.path.join(manual_dir, 'lists'), manual_dir):
    if any(os.path.isfile(os.path.join(folder, n)) for n in names):
      return manual_files.FolderTree(folder)
  archive = os.path.join(manual_dir, 'lists.tar')
  if os.path.isfile(archive):
    return _FlatArchiveTree(archive, keep=names)
  raise Error(f'Stanford Dogs: found neither {", ".join(names)} nor lists.tar in the manual '
              f'dir {manual_dir} (it holds {sorted(os.listdir(manual_dir))[:15]}).')


def _as_str(value, where: str) -> str:
  array = np.asarray(value)
  if array.dtype.kind != 'U' or array.size != 1:
    raise Error(f'{where}: expected a string, got {value!r}.')
  return str(array.reshape(()))


def _as_label(value, where: str) -> int:
  array = np.asarray(value)
  if array.dtype.kind not in 'uif' or array.size != 1:
    raise Error(f'{where}: expected one number, got {value!r}.')
  label = float(array.reshape(()))
  if not (np.isfinite(label) and label == int(label) and label >= 1):
    raise Error(f'{where} is {label:g}, expected an integer label >= 1.')
  return int(label)


def read_list(tree: manual_files.FileTree, rel: str) -> list[Entry]:
  """The entries of one list .mat file, each checked for its form."""
  where = tree.where(rel)
  mat = cars.load_mat(tree, rel)
  missing = [v for v in LIST_VARIABLES if v not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith('__'))
    raise Error(f'{where}: expected the variables {", ".join(LIST_VARIABLES)}; '
                f'{", ".join(missing)} missing (found {found}).')
  columns = {v: np.atleast_1d(mat[v]) for v in LIST_VARIABLES}
  lengths = {v: len(c) for v, c in columns.items()}
  if len(set(lengths.values())) != 1:
    raise Error(f'{where}: the variables differ in length: {lengths}.')
  entries = []
  for i in range(lengths['file_list']):
    image = _as_str(columns['file_list'][i], f'{where}: file_list[{i}]')
    if not _IMAGE_PATH.fullmatch(image):
      raise Error(f'{where}: file_list[{i}] is {image!r}, expected '
                  "'<wnid>-<Breed>/<name>.jpg'.")
    annotation = _as_str(columns['annotation_list'][i], f'{where}: annotation_list[{i}]')
    if annotation != image[:-len('.jpg')]:
      raise Error(f'{where}: annotation_list[{i}] is {annotation!r}, expected '
                  f'{image[:-len(".jpg")]!r} (file_list[{i}] without .jpg).')
    label = _as_label(columns['labels'][i], f'{where}: labels[{i}]')
    entries.append(Entry(image, annotation, label, f'{where}: file_list[{i}]'))
  return entries


def class_names(entries: list[Entry], where: str) -> list[str]:
  """Breed names by label, from the folders the labels' images sit in."""
  folder_of, label_of = {}, {}  # label -> Entry, folder -> Entry: the first seen.
  for e in entries:
    folder = e.image.split('/')[0]
    first = folder_of.setdefault(e.label, e)
    if first.image.split('/')[0] != folder:
      raise Error(f'{e.source}: label {e.label} is on an image in {folder}/, but '
                  f'{first.source} puts label {e.label} in {first.image.split("/")[0]}/.')
    first = label_of.setdefault(folder, e)
    if first.label != e.label:
      raise Error(f'{e.source}: an image of {folder}/ with label {e.label}, but '
                  f'{first.source} gives {folder}/ label {first.label}.')
  if not folder_of:
    raise Error(f'{where}: file_list is empty.')
  absent = [k for k in range(1, max(folder_of) + 1) if k not in folder_of]
  if absent:
    raise Error(f'{where}: labels must run 1..N; no image has label(s) {absent[:10]}.')
  names = []
  for k in range(1, len(folder_of) + 1):
    folder = folder_of[k].image.split('/')[0]
    if '-' not in folder:
      raise Error(f"{folder_of[k].source}: folder {folder!r} is not '<wnid>-<Breed>'.")
    names.append(folder.split('-', 1)[1])
  return names


def _image_ids(everything: list[Entry], splits: dict) -> dict[str, int]:
  """{image path: 1-based position in file_list.mat}; each split entry must agree with it."""
  ids, by_image = {}, {}
  for i, e in enumerate(everything):
    if e.image in by_image:
      raise Error(f'{e.source}: {e.image} is listed again (first {by_image[e.image].source}).')
    ids[e.image], by_image[e.image] = i + 1, e
  for entries in splits.values():
    for e in entries:
      full = by_image.get(e.image)
      if full is None:
        raise Error(f'{e.source}: {e.image} is not in {ALL_LIST}.')
      if full.label != e.label:
        raise Error(f'{e.source}: label {e.label}, but {full.source} gives {e.image} '
                    f'label {full.label}.')
  return ids


def largest_box(data: bytes, where: str) -> tuple[float, float, float, float]:
  """The largest <object><bndbox> of an annotation XML, as (xmin, ymin, xmax, ymax)."""
  try:
    root = ET.fromstring(data)
  except ET.ParseError as e:
    raise Error(f'{where}: not a readable XML annotation ({e}).') from e
  boxes = []
  for k, obj in enumerate(root.findall('object')):
    at = f'{where}: <object> {k + 1}'
    bndbox = obj.find('bndbox')
    if bndbox is None:
      raise Error(f'{at} has no <bndbox>.')
    box = []
    for tag in BOX_TAGS:
      text = (bndbox.findtext(tag) or '').strip()
      try:
        box.append(float(text))
      except ValueError:
        raise Error(f'{at} <bndbox><{tag}> is {text!r}, expected a number.') from None
    x0, y0, x1, y1 = box
    if not (x0 <= x1 and y0 <= y1):
      raise Error(f'{at} <bndbox> is upside down: xmin={x0:g}, ymin={y0:g}, xmax={x1:g}, '
                  f'ymax={y1:g} (expected xmin <= xmax and ymin <= ymax).')
    boxes.append((x0, y0, x1, y1))
  if not boxes:
    raise Error(f'{where}: no <object> with a <bndbox> (expected one per dog).')
  return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # max keeps the first.


def read_boxes(tree: manual_files.FileTree, entries: list[Entry]) -> dict[str, tuple]:
  """{annotation path: largest box} for every entry, each file read once."""
  for e in entries:
    if not tree.exists(e.annotation):
      raise Error(f'{e.source}: its annotation {tree.where(e.annotation)} does not exist.')
  wanted = {e.annotation for e in entries}
  return {rel: largest_box(data, tree.where(rel)) for rel, data in tree.iter_read(wanted)}


class StanfordDogs(manual_files.OfficialBuilder):
  """Stanford Dogs: 120 dog breeds, 20,580 images with a box per dog."""

  name = 'fgjax_stanford_dogs'  # TFDS's own builder holds 'stanford_dogs'.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original JPEG bytes.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download images.tar (about 750 MB), annotation.tar and lists.tar from
  http://vision.stanford.edu/aditya86/ImageNetDogs/ and place them in the
  manual dir, as they are or extracted (Images/, Annotation/, and the
  file_list.mat, train_list.mat, test_list.mat of lists.tar, in the manual
  dir itself or in a lists/ folder there).
  """
  HOMEPAGE = 'http://vision.stanford.edu/aditya86/ImageNetDogs/'
  CITATION = """\
  @inproceedings{KhoslaYaoJayadevaprakashFeiFei_FGVC2011,
    author = {Aditya Khosla and Nityananda Jayadevaprakash and Bangpeng Yao and Li Fei-Fei},
    title = {Novel Dataset for Fine-Grained Image Categorization},
    booktitle = {First Workshop on Fine-Grained Visual Categorization,
                 IEEE Conference on Computer Vision and Pattern Recognition},
    year = {2011},
    month = {June},
    address = {Colorado Springs, CO}}
  """
  OFFICIAL_TOTAL = 20_580
  OFFICIAL_SPLIT_SIZES = {'train': 12_000, 'test': 8_580}

  def _official_num_classes(self) -> int:
    return 120

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    lists = find_lists(manual_dir)
    everything = read_list(lists, ALL_LIST)
    self._set_class_names(class_names(everything, lists.where(ALL_LIST)),
                          lists.where(ALL_LIST))
    splits = {s: read_list(lists, rel) for s, rel in SPLIT_LISTS.items()}
    ids = _image_ids(everything, splits)
    entries = [e for split in splits.values() for e in split]
    annotations = manual_files.find_tree(manual_dir, 'Annotation', ('annotation.tar',),
                                         keep={e.annotation for e in entries},
                                         what='Stanford Dogs')
    boxes = read_boxes(annotations, entries)
    images = manual_files.find_tree(manual_dir, 'Images', ('images.tar',),
                                    what='Stanford Dogs')
    listed = {split: [manual_files.Listed(
        rel=e.image, file_name=f'Images/{e.image}', image_id=ids[e.image], label=e.label - 1,
        box=boxes[e.annotation], source=e.source) for e in split_entries]
              for split, split_entries in splits.items()}
    for examples in listed.values():
      self._check_listed(images, examples)
    self._check_split_sizes({s: len(v) for s, v in listed.items()}, len(entries),
                            lists.where(SPLIT_LISTS['train']))
    return {split: self._generate_examples(images, examples)
            for split, examples in listed.items()}
