"""A source folder of class folders: its layout, classes and images, and the split of one tree.

Two layouts (LAYOUT_HELP):
  * 'train_test': DIR/train/<class>/ and DIR/test/<class>/, the same classes in both;
  * 'one_tree': DIR/<class>/, split per class (stratified) into train and test by
    `split_one_tree`: of a class's n images, round(test_fraction * n) go to test (halves
    up, the fraction as written in decimal), namely those whose key
    sha256('<split_seed>/<path>') is smallest, path being the '/'-separated path below DIR
    ('cat/1.jpg'). A file's split depends only on its path, its class's size and the
    seed: adding a class moves no image of another class, and adding an image to a class
    moves at most one other image of it.

Class names are the folder names, sorted as Python sorts strings (so 'Zebra' < 'ant').
Images are the files with an IMAGE_EXTENSIONS ending (any case) anywhere below a class
folder; other files and hidden entries (names starting with '.') are ignored and listed,
while an image file outside a class folder is an error. Every error is a FolderDataError
naming the folder or file and saying what was expected. fgjax/data/folder.py builds the
data set from a `Listing`.
"""

import dataclasses
import fractions
import hashlib
import math
import os

from absl import logging

IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
SPLITS = ('train', 'test')
LAYOUT_HELP = f"""\
  DIR/<class>/*.jpg         one tree, split per class into train and test by --test_fraction
                            (default {DEFAULT_TEST_FRACTION}) and --split_seed (default {DEFAULT_SPLIT_SEED}); or
  DIR/train/<class>/*.jpg   already split: the same class folders in both.
  DIR/test/<class>/*.jpg
Class names are the folder names, sorted. Images: files ending in
{', '.join(IMAGE_EXTENSIONS)} (any case).
"""


class FolderDataError(ValueError):
  """The source folder does not hold a layout fgjax can build (the message says why)."""


def some(items, n: int = 8) -> str:
  """The first `n` of `items`, comma-separated, and how many there are if more."""
  items = list(items)
  return ', '.join(items[:n]) + (f', ... ({len(items)} in all)' if len(items) > n else '')


def _is_image(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclasses.dataclass
class Listing:
  """What a source folder holds, after the structural checks (`list_source`)."""
  root: str  # The source folder, absolute.
  layout: str  # 'train_test' or 'one_tree'.
  class_names: list  # Sorted folder names.
  # 'train'/'test' (or '' for one tree) -> class name -> sorted '/'-separated paths below root.
  images: dict
  ignored: list  # Paths below root of files that are not images, and of hidden entries.


class _Lister:
  """Lists a source folder; paths are '/'-separated and relative to its root."""

  def __init__(self, root: str):
    self.root, self.ignored = root, []

  def rel(self, path: str) -> str:
    rel = os.path.relpath(path, self.root).replace(os.sep, '/')
    try:
      rel.encode('utf-8')  # TFDS stores file names as UTF-8 text.
    except UnicodeEncodeError:
      raise FolderDataError(f'{path!r}: the name is not valid UTF-8; rename it.') from None
    return rel

  def class_folders(self, folder: str) -> dict:
    """Class name -> folder of the class folders in `folder`; images there are an error."""
    try:
      entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
      raise FolderDataError(f'Cannot list {folder} ({type(e).__name__}: {e}).') from e
    classes, loose = {}, []
    for entry in entries:
      if entry.name.startswith('.'):
        self.ignored.append(self.rel(entry.path) + ('/' if entry.is_dir() else ''))
      elif entry.is_dir():
        # TFDS stores the class names one a line and strips them when it reads them back.
        if entry.name != entry.name.strip() or '\n' in entry.name or '\r' in entry.name:
          raise FolderDataError(
              f'{entry.path!r}: a class folder name must be one line, with no white space at '
              'its start or end (the stored class names could not keep it); rename it.')
        self.rel(entry.path)
        classes[entry.name] = entry.path
      elif _is_image(entry.name):
        loose.append(entry.path)
      else:
        self.ignored.append(self.rel(entry.path))
    if loose:
      raise FolderDataError(
          f'{some(loose)}: image file(s) outside a class folder; expected '
          f'{os.path.join(folder, "<class>", os.path.basename(loose[0]))}.')
    return classes

  def images(self, class_dir: str) -> list:
    """Sorted paths of the images anywhere below `class_dir`."""
    found, others, seen = [], [], set()
    def fail(e):
      raise FolderDataError(f'Cannot list {e.filename} ({type(e).__name__}: {e}).') from e
    for folder, dirs, files in os.walk(class_dir, onerror=fail, followlinks=True):
      real = os.path.realpath(folder)
      if real in seen:  # A symbolic link back up the tree.
        dirs[:] = []
        continue
      seen.add(real)
      for name in [d for d in dirs if d.startswith('.')]:
        self.ignored.append(self.rel(os.path.join(folder, name)) + '/')
      dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
      for name in files:
        path = os.path.join(folder, name)
        is_image = _is_image(name) and not name.startswith('.')
        (found if is_image else others).append(self.rel(path))
    self.ignored += others
    if not found:
      held = f'it holds only {some(sorted(others))}' if others else 'it is empty'
      raise FolderDataError(
          f'Class folder {class_dir} holds no image ({held}); expected files ending in '
          f'{", ".join(IMAGE_EXTENSIONS)} (any case). Add images or remove the folder.')
    return sorted(found)


def _check_same_classes(root: str, per_split: dict):
  """Every class folder of train/ also in test/ and the reverse."""
  only = {s: sorted(set(per_split[s]) - set(per_split[o]))
          for s, o in (('train', 'test'), ('test', 'train'))}
  if not only['train'] and not only['test']:
    return
  lines = []
  for split, other in (('train', 'test'), ('test', 'train')):
    for name in only[split]:
      twin = [n for n in per_split[other] if n.lower() == name.lower()]
      hint = f' (differs in case from {other}/{twin[0]})' if twin else ''
      lines.append(f'  {os.path.join(root, split, name)} has no {other}/{name}{hint}')
  raise FolderDataError(
      f'{root}: every class needs a folder in both train/ and test/; class(es) in one '
      'split only:\n' + '\n'.join(lines))


def _no_classes(folder: str) -> FolderDataError:
  return FolderDataError(f'{folder} holds no class folder; expected:\n{LAYOUT_HELP}')


def list_source(source_dir: str) -> Listing:
  """Finds the layout of `source_dir` and lists its classes and images.

  Raises FolderDataError naming the folder or file for: a missing folder, no class
  folder, a folder mixing the two layouts (or with train/ but no test/), an image
  outside a class folder, a class folder without images, a class in one split only.
  """
  root = os.path.abspath(os.path.expanduser(source_dir))
  if os.path.isfile(root):
    raise FolderDataError(f'The source {root} is a file (--manual_dir); expected a folder of '
                          f'class folders (extract an archive first):\n{LAYOUT_HELP}')
  if not os.path.isdir(root):
    raise FolderDataError(f'The source folder {root} does not exist (--manual_dir); '
                          f'expected a folder holding:\n{LAYOUT_HELP}')
  lister = _Lister(root)
  top = lister.class_folders(root)
  split_dirs = sorted(set(SPLITS) & set(top))
  if split_dirs:
    if len(split_dirs) == 1:
      missing = 'test' if split_dirs == ['train'] else 'train'
      raise FolderDataError(
          f'{root} has {split_dirs[0]}/ but no {missing}/: an already split layout needs '
          f'both {root}/train/<class>/ and {root}/test/<class>/ (for one tree of class '
          f'folders, to be split by --test_fraction, rename the class {split_dirs[0]!r}).')
    others = sorted(set(top) - set(SPLITS))
    if others:
      raise FolderDataError(
          f'{root} mixes the two layouts: train/ and test/ (already split) beside class '
          f'folders {some(n + "/" for n in others)} (one tree to split). Keep one: move '
          'these into train/ and test/, or train/ and test/ out of it.')
    per_split = {s: lister.class_folders(top[s]) for s in SPLITS}
    for split in SPLITS:
      if not per_split[split]:
        raise _no_classes(top[split])
    _check_same_classes(root, per_split)
    images = {s: {c: lister.images(d) for c, d in per_split[s].items()} for s in SPLITS}
    layout = 'train_test'
  else:
    if not top:
      raise _no_classes(root)
    images = {'': {c: lister.images(d) for c, d in top.items()}}
    layout = 'one_tree'
  if lister.ignored:
    logging.warning('%s: ignoring %d file(s) that are not images or are hidden: %s', root,
                    len(lister.ignored), some(lister.ignored))
  names = sorted(next(iter(images.values())))
  return Listing(root, layout, names, images, sorted(lister.ignored))


def check_split_options(layout: str, root: str, test_fraction, split_seed) -> None:
  """The split options apply to one tree only: FolderDataError if given for train/test."""
  if layout == 'train_test' and (test_fraction is not None or split_seed is not None):
    given = ', '.join(f'--{k}={v}' for k, v in (('test_fraction', test_fraction),
                                                 ('split_seed', split_seed)) if v is not None)
    raise FolderDataError(
        f'{root} is already split into train/ and test/, so {given} has nothing to split: '
        'leave it out, or give one tree of class folders (DIR/<class>/) to split.')


def num_test_images(n: int, test_fraction: float) -> int:
  """round(test_fraction * n), halves rounded up, with the fraction as written in decimal.

  The decimal reading makes 0.29 * 50 exactly 14.5 (-> 15), where the float product
  14.499999999999998 would round down.
  """
  exact = fractions.Fraction(repr(float(test_fraction))) * n
  return math.floor(exact + fractions.Fraction(1, 2))


def split_key(path: str, split_seed: int) -> bytes:
  """The order in which a class's images go to test: smallest key first."""
  return hashlib.sha256(f'{split_seed}/{path}'.encode('utf-8')).digest()


def split_one_tree(images: dict, test_fraction: float, split_seed: int, root: str = '') -> dict:
  """Stratified split: {'train': {class: paths}, 'test': {class: paths}}, paths sorted.

  Args:
    images: class name -> paths of its images.
    test_fraction: in (0, 1); each class gets num_test_images(n, test_fraction) test images.
    split_seed: any integer; chooses which images (split_key).
    root: the source folder, for messages.
  Raises FolderDataError, listing (the first 10 of) the classes the fraction leaves
  without a train or a test image, and the fractions that would do for all.
  """
  if not 0 < test_fraction < 1:
    raise FolderDataError(f'--test_fraction={test_fraction} must be in (0, 1): the share '
                          "of each class's images that go to the test split.")
  counts = {c: (len(p), num_test_images(len(p), test_fraction)) for c, p in images.items()}
  short = [(c, n, k) for c, (n, k) in sorted(counts.items()) if k in (0, n)]
  if short:
    lines = [f'  {os.path.join(root, c)}: {n} image(s), {k} to test, {n - k} to train'
             for c, n, k in short[:10]]
    sizes = [len(p) for p in images.values()]
    # A class of n gets a test and a train image for fractions in [0.5 / n, 1 - 0.5 / n).
    # Shown to 3 decimals, rounded inwards so that both ends work.
    low = math.ceil(max(0.5 / n for n in sizes) * 1000) / 1000
    high = (math.ceil(min((n - 0.5) / n for n in sizes) * 1000) - 1) / 1000
    fix = (f'use a --test_fraction from {low} to {high}' if low <= high else
           'every class needs at least 2 images; add images')
    raise FolderDataError(
        f'--test_fraction={test_fraction} leaves {len(short)} class(es) without a train or '
        f'a test image (each class needs both):\n' + '\n'.join(lines) + f'\nTo fix: {fix}.')
  out = {s: {} for s in SPLITS}
  for name, paths in images.items():
    order = sorted(paths, key=lambda p: split_key(p, split_seed))
    k = counts[name][1]
    out['test'][name], out['train'][name] = sorted(order[:k]), sorted(order[k:])
  return out
