"""Your own images as a data set: class folders -> TFDS ArrayRecord (`FgjaxFolder`).

  python launch/prepare_data.py --dataset=folder --manual_dir=DIR --name=NAME

DIR holds DIR/train/<class>/ and DIR/test/<class>/, or one tree DIR/<class>/ split per
class into train and test by --test_fraction and --split_seed: fgjax/data/class_folders.py
lists it, checks it and splits it (the layouts, the split rule and the errors are
described there). Class names are the folder names, sorted. Undecodable or unreadable
images follow the bad-image policy of the official builders (on_bad_image: 'error'
stops naming the file; 'skip' leaves it out and lists it).

Each data set is a config of FgjaxFolder named NAME, stored in
<data_dir>/fgjax_folder/NAME/<version>/ with the features of every fgjax data set
(common.features_dict): `file_name` is the path below DIR ('train/cat/1.jpg'), the
example key too; `image_id` numbers all images 1..N in path order; the folder layout has
no boxes, so `bbox` is the whole image. The info records the source: its description
says where the images came from and how they were split, and its metadata holds
source_dir, layout, test_fraction, split_seed, skipped_files (absolute path -> reason)
and ignored_files (paths below DIR). Preparing a NAME that is prepared already does
nothing if the source and split options are the same, and is an error otherwise.
"""

import os

from absl import logging
import tensorflow_datasets as tfds

from fgjax.data import common
from fgjax.data import manual_files
from fgjax.data import registry
# Re-exported: the tests and notebooks reach the listing through this module.
from fgjax.data.class_folders import DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION
from fgjax.data.class_folders import FolderDataError, LAYOUT_HELP, SPLITS
from fgjax.data.class_folders import check_split_options, list_source, some, split_one_tree


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
    check_split_options(listing.layout, listing.root, fraction, seed)
    if listing.layout == 'train_test':
      images = listing.images
      how = 'already split into train/ and test/'
    else:
      fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
      seed = DEFAULT_SPLIT_SEED if seed is None else seed
      images = split_one_tree(listing.images[''], fraction, seed, listing.root)
      how = (f'one tree of class folders split per class with test_fraction={fraction}, '
             f'split_seed={seed}')
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
          f'{root}: after skipping bad images, class(es) {some(emptied)} have no image left '
          f'in the {split} split; skipped: {some(self._images.skipped)}. Replace the bad '
          'images or add others.')


def prepare(name: str, source_dir: str, data_dir: str, test_fraction: float | None = None,
            split_seed: int | None = None,
            on_bad_image: str = 'error') -> registry.PrepareResult:
  """Builds the folder data set `name` from `source_dir`, unless already done.

  Args:
    name: the data set's name (config.data.name): registry.check_folder_name's rule.
    source_dir: the folder of images (class_folders.LAYOUT_HELP).
    data_dir: the TFDS data dir.
    test_fraction, split_seed: for one tree of class folders only; None means
      DEFAULT_TEST_FRACTION and DEFAULT_SPLIT_SEED there.
    on_bad_image: 'error' or 'skip' (common.BAD_IMAGE_POLICIES).

  Raises:
    registry.DataNameError: an invalid `name`.
    FolderDataError: a source folder fgjax cannot build (class_folders), or `name`
      prepared already from another source or split.
    common.BadImageError: a bad image under on_bad_image='error'.
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
  """FolderDataError unless `options` ask for the source the prepared `builder` holds."""
  recorded = builder.source
  source_dir, fraction, seed = (options[k] for k in ('source_dir', 'test_fraction',
                                                     'split_seed'))
  if recorded['source_dir'] == source_dir:
    check_split_options(recorded['layout'], source_dir, fraction, seed)
  if recorded['layout'] == 'one_tree':  # Options left out mean the defaults.
    fraction = DEFAULT_TEST_FRACTION if fraction is None else fraction
    seed = DEFAULT_SPLIT_SEED if seed is None else seed
  if (recorded['source_dir'], recorded['test_fraction'], recorded['split_seed']) != (
      source_dir, fraction, seed):
    asked = ', '.join([source_dir] + [f'--{k}={v}' for k, v in options.items()
                                      if k != 'source_dir' and v is not None])
    raise FolderDataError(
        f'Data set {builder.builder_config.name!r} is already prepared in '
        f'{os.fspath(builder.data_path)} from {describe_source(recorded)}; asked now for '
        f'{asked}. Choose another --name, or delete that folder to prepare it anew.')


def describe_source(source: dict) -> str:
  """'DIR (train/ and test/ as given)' or 'DIR (one tree, test_fraction 0.2, split_seed 0)'."""
  if source['layout'] == 'train_test':
    return f'{source["source_dir"]} (train/ and test/ as given)'
  return (f'{source["source_dir"]} (one tree, test_fraction {source["test_fraction"]}, '
          f'split_seed {source["split_seed"]})')
