"""Your own images as a data set: class folders -> TFDS ArrayRecord (`FgjaxFolder`).

  python launch/prepare_data.py --dataset=folder --manual_dir=DIR --name=NAME

DIR holds one of two layouts (LAYOUT_HELP):
  * 'train_test': DIR/train/<class>/ and DIR/test/<class>/, the same classes in both;
  * 'one_tree': DIR/<class>/, split per class (stratified) into train and test: of a
    class's n images, round(test_fraction * n) go to test (halves up, the fraction as
    written), namely those whose key sha256('<split_seed>/<path>') is smallest. A file's
    split depends only on its path and the seed: adding a class moves no image of another
    class, and adding an image to a class moves at most one other image of it.

Class names are the folder names, sorted as Python sorts strings (so 'Zebra' < 'ant').
Images are the files with an IMAGE_EXTENSIONS ending (any case) anywhere below a class
folder; other files and hidden entries (names starting with '.') are ignored, logged and
listed in the data set's metadata, while an image file outside a class folder is an error.
Undecodable or unreadable images follow the bad-image policy of the official builders
(on_bad_image: 'error' stops naming the file; 'skip' leaves it out and lists it).

Each data set is a config of FgjaxFolder named NAME, stored in
<data_dir>/fgjax_folder/NAME/<version>/ with the features of every fgjax data set
(common.features_dict): `file_name` is the path below DIR ('train/cat/1.jpg'), the
example key too; `image_id` numbers all images 1..N in path order; the folder layout has
no boxes, so `bbox` is the whole image. The info records the source: its description
says where the images came from and how they were split, and its metadata holds
source_dir, layout, test_fraction, split_seed, skipped_files and ignored_files.
"""

import dataclasses
import fractions
import hashlib
import math
import os

from absl import logging
import tensorflow_datasets as tfds

from fgjax.data import common
from fgjax.data import manual_files
from fgjax.data import registry

IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
SPLITS = ('train', 'test')
LAYOUT_HELP = f"""\
  DIR/<class>/*.jpg         one tree, split per class into train and test by
                            --test_fraction (default {DEFAULT_TEST_FRACTION}) and --split_seed (default {DEFAULT_SPLIT_SEED}); or
  DIR/train/<class>/*.jpg   already split: the same class folders in both.
  DIR/test/<class>/*.jpg
Class names are the folder names, sorted. Images: {', '.join(IMAGE_EXTENSIONS)} (any case).
"""


class FolderDataError(ValueError):
  """The source folder does not hold a layout fgjax can build (the message says why)."""


def _some(items, n: int = 8) -> str:
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
      rel.encode('utf-8')
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
        if '\n' in entry.name or '\r' in entry.name:
          raise FolderDataError(f'{entry.path!r}: a class folder name must be one line.')
        classes[entry.name] = entry.path
      elif _is_image(entry.name):
        loose.append(entry.path)
      else:
        self.ignored.append(self.rel(entry.path))
    if loose:
      raise FolderDataError(
          f'{_some(loose)}: image file(s) outside a class folder; expected '
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
      held = f'it holds only {_some(sorted(others))}' if others else 'it is empty'
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


def list_source(source_dir: str) -> Listing:
  """Finds the layout of `source_dir` and lists its classes and images.

  Raises FolderDataError naming the folder or file for: a missing folder, no class
  folder, a folder mixing the two layouts (or with train/ but no test/), an image
  outside a class folder, a class folder without images, a class in one split only.
  """
  root = os.path.abspath(os.path.expanduser(source_dir))
  if not os.path.isdir(root):
    raise FolderDataError(f'The source folder {root} does not exist (--manual_dir).')
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
          f'folders {_some(n + "/" for n in others)} (one tree to split). Keep one: move '
          'these into train/ and test/, or train/ and test/ out of it.')
    per_split = {s: lister.class_folders(top[s]) for s in SPLITS}
    _check_same_classes(root, per_split)
    images = {s: {c: lister.images(d) for c, d in per_split[s].items()} for s in SPLITS}
    layout = 'train_test'
  else:
    images = {'': {c: lister.images(d) for c, d in top.items()}}
    layout = 'one_tree'
  names = sorted(next(iter(images.values())))
  if not names:
    raise FolderDataError(f'{root} holds no class folder; expected:\n{LAYOUT_HELP}')
  if lister.ignored:
    logging.warning('%s: ignoring %d file(s) that are not images or are hidden: %s', root,
                    len(lister.ignored), _some(lister.ignored))
  return Listing(root, layout, names, images, sorted(lister.ignored))


def test_count(n: int, test_fraction: float) -> int:
  """round(test_fraction * n), halves rounded up, with the fraction as written."""
  exact = fractions.Fraction(repr(float(test_fraction))) * n
  return math.floor(exact + fractions.Fraction(1, 2))


def split_key(path: str, split_seed: int) -> bytes:
  """The order in which a class's images go to test: smallest key first."""
  return hashlib.sha256(f'{split_seed}/{path}'.encode('utf-8')).digest()


def split_one_tree(images: dict, test_fraction: float, split_seed: int, root: str = '') -> dict:
  """Stratified split: {'train': {class: paths}, 'test': {class: paths}}, paths sorted.

  Args:
    images: class name -> paths of its images.
    test_fraction: in (0, 1); each class gets test_count(n, test_fraction) test images.
    split_seed: any integer; chooses which images (split_key).
    root: the source folder, for messages.
  Raises FolderDataError, listing every class the fraction leaves without a train or
  test image, and the fractions that would do for all.
  """
  if not 0 < test_fraction < 1:
    raise FolderDataError(f'--test_fraction={test_fraction} must be in (0, 1).')
  short = [(c, len(p), test_count(len(p), test_fraction)) for c, p in sorted(images.items())
           if test_count(len(p), test_fraction) in (0, len(p))]
  if short:
    lines = [f'  {os.path.join(root, c)}: {n} image(s), {k} to test, {n - k} to train'
             for c, n, k in short[:10]]
    sizes = [len(p) for p in images.values()]
    low, high = max(0.5 / n for n in sizes), min((n - 0.5) / n for n in sizes)
    fix = (f'use a --test_fraction in [{low:.3g}, {high:.3g})' if low < high else
           'every class needs at least 2 images; add images')
    raise FolderDataError(
        f'--test_fraction={test_fraction} leaves {len(short)} class(es) without a train or '
        f'a test image (each class needs both):\n' + '\n'.join(lines) + f'\nTo fix: {fix}.')
  out = {s: {} for s in SPLITS}
  for name, paths in images.items():
    order = sorted(paths, key=lambda p: split_key(p, split_seed))
    k = test_count(len(paths), test_fraction)
    out['test'][name], out['train'][name] = sorted(order[:k]), sorted(order[k:])
  return out


class _FileChecker(manual_files.ImageChecker):
  """The official builders' bad-image policy, also for files that cannot be read."""

  def read(self, path: str) -> bytes | None:
    """The file's bytes if it reads and decodes; None if skipped (raises under 'error')."""
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      message = f'{path}: cannot read the file ({type(e).__name__}: {e}).'
      if self.policy == 'error':
        raise common.BadImageError(
            f'{message} Rerun with on_bad_image=skip (prepare_data --on_bad_image=skip) '
            'to leave it out and list it.') from e
      logging.warning('Skipping bad image: %s', message)
      self.skipped[path] = message
      return None
    return data if self.size(data, path) is not None else None


class FgjaxFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images in class folders (fgjax/data/folder.py); one builder config per data set."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original image bytes.'}
  LAYOUT_HELP = LAYOUT_HELP

  def __init__(self, *, source_dir: str | None = None, test_fraction: float | None = None,
               split_seed: int | None = None, on_bad_image: str = 'error', **kwargs):
    """`source_dir` and the split options are needed to prepare only (see prepare)."""
    self._images = _FileChecker(on_bad_image)
    self._options = (source_dir, test_fraction, split_seed)
    super().__init__(**kwargs)
    self._original_state.update(source_dir=source_dir, test_fraction=test_fraction,
                                split_seed=split_seed, on_bad_image=on_bad_image)

  @classmethod
  def get_builder_config(cls, name, version=None):
    # Every name is a config: its data live in <data_dir>/fgjax_folder/<name>/.
    del version
    return tfds.core.BuilderConfig(name=name)

  def _info(self) -> tfds.core.DatasetInfo:
    # Description, class names and metadata are set when preparing, restored after.
    return tfds.core.DatasetInfo(builder=self, features=common.features_dict(None),
                                 supervised_keys=('image', 'label'),
                                 metadata=tfds.core.MetadataDict())

  def _metadata(self, key: str, default=None):
    meta = self.info.metadata  # Keys first: a restored one loads lazily.
    return meta[key] if key in meta.keys() else default

  @property
  def skipped_files(self) -> list:
    """Bad images left out: by this builder's prepare, else by the stored one."""
    return list(self._images.skipped) or list(self._metadata('skipped_files', {}))

  @property
  def ignored_files(self) -> list:
    """Files below the source folder that were not taken as images (paths below it)."""
    return list(self._metadata('ignored_files', []))

  @property
  def source(self) -> dict:
    """What the data set was built from: source_dir, layout, test_fraction, split_seed."""
    return {k: self._metadata(k) for k in ('source_dir', 'layout', 'test_fraction',
                                           'split_seed')}

  def _split_generators(self, dl_manager):
    del dl_manager  # The source folder is a constructor argument.
    source_dir, fraction, seed = self._options
    if source_dir is None:
      raise FolderDataError(f'Preparing the folder data set {self.builder_config.name!r} '
                            'needs its source folder: use fgjax.data.folder.prepare.')
    listing = list_source(source_dir)
    if listing.layout == 'train_test':
      if fraction is not None or seed is not None:
        raise FolderDataError(
            f'{listing.root} is already split into train/ and test/: --test_fraction and '
            '--split_seed apply only to one tree of class folders (DIR/<class>/).')
      images = listing.images
      how = 'already split into train/ and test/'
    else:
      fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
      seed = DEFAULT_SPLIT_SEED if seed is None else seed
      images = split_one_tree(listing.images[''], fraction, seed, listing.root)
      how = f'one tree of class folders split per class with test_fraction={fraction}, ' \
            f'split_seed={seed}'
    self.info.features['label'].names = listing.class_names
    self.info.as_proto.description = (
        f'Folder data set {self.builder_config.name!r}: images from {listing.root}, {how}; '
        f'{len(listing.class_names)} classes (the folder names, sorted).')
    self.info.metadata.update(source_dir=listing.root, layout=listing.layout,
                              test_fraction=fraction, split_seed=seed,
                              ignored_files=listing.ignored, skipped_files={})
    label = {name: i for i, name in enumerate(listing.class_names)}
    listed = {s: sorted((p, label[c]) for c, paths in images[s].items() for p in paths)
              for s in SPLITS}
    ids = {p: i + 1 for i, p in enumerate(sorted(p for s in SPLITS for p, _ in listed[s]))}
    return {s: self._generate_examples(listing.root, s, [(p, c, ids[p]) for p, c in listed[s]])
            for s in SPLITS}

  def _generate_examples(self, root: str, split: str, listed):
    names = self.info.features['label'].names
    kept = set()
    for path, label, image_id in listed:
      where = os.path.join(root, *path.split('/'))
      data = self._images.read(where)
      if data is None:
        continue
      kept.add(label)
      yield path, {
          'image': data,  # The original bytes, never re-encoded.
          'label': label,
          'label_name': names[label],
          'bbox': tfds.features.BBox(ymin=0.0, xmin=0.0, ymax=1.0, xmax=1.0),  # No boxes.
          'file_name': path,
          'image_id': image_id,
          'crop_bottom': 0,
      }
    self.info.metadata['skipped_files'] = dict(self._images.skipped)
    emptied = sorted(names[c] for c in set(label for _, label, _ in listed) - kept)
    if emptied:
      raise FolderDataError(
          f'{root}: after skipping bad images, class(es) {_some(emptied)} have no image left '
          f'in the {split} split; skipped: {_some(self._images.skipped)}. Replace the bad '
          'images or add others.')


def prepare(name: str, source_dir: str, data_dir: str, test_fraction: float | None = None,
            split_seed: int | None = None,
            on_bad_image: str = 'error') -> registry.PrepareResult:
  """Builds the folder data set `name` from `source_dir`, unless already done.

  Args:
    name: the data set's name (config.data.name): lowercase letters, digits and _,
      not a built-in data set's name.
    source_dir: the folder of images (module docstring, LAYOUT_HELP).
    data_dir: the TFDS data dir.
    test_fraction, split_seed: for one tree of class folders only; None means
      DEFAULT_TEST_FRACTION and DEFAULT_SPLIT_SEED there.
    on_bad_image: 'error' or 'skip' (common.BAD_IMAGE_POLICIES).

  Raises FolderDataError when `name` is prepared already from another source or split.
  """
  registry.check_folder_name(name)
  options = {'source_dir': os.path.abspath(os.path.expanduser(source_dir)),
             'test_fraction': test_fraction, 'split_seed': split_seed}
  builder = registry.get_builder(name, data_dir, on_bad_image=on_bad_image,
                                 folder_options=options)
  if registry.is_prepared(builder):
    _check_same_source(builder, options)
  return registry.prepare(name, data_dir, on_bad_image=on_bad_image, folder_options=options)


def _check_same_source(builder, options: dict):
  recorded = builder.source
  wanted = dict(options)
  if recorded['layout'] == 'one_tree':
    for key, default in (('test_fraction', DEFAULT_TEST_FRACTION),
                         ('split_seed', DEFAULT_SPLIT_SEED)):
      wanted[key] = default if wanted[key] is None else wanted[key]
  if any(recorded[k] != wanted[k] for k in wanted):
    raise FolderDataError(
        f'Data set {builder.builder_config.name!r} is already prepared in '
        f'{os.fspath(builder.data_path)} from {describe_source(recorded)}; asked now for '
        f'{describe_source(wanted)}. Choose another --name, or delete that folder to '
        'prepare it anew.')


def describe_source(source: dict) -> str:
  """'DIR (layout train_test)' or 'DIR (one tree, test_fraction 0.2, split_seed 0)'."""
  if source.get('test_fraction') is None and source.get('split_seed') is None:
    return f'{source["source_dir"]} (train/ and test/ as given)'
  return (f'{source["source_dir"]} (one tree, test_fraction {source["test_fraction"]}, '
          f'split_seed {source["split_seed"]})')
