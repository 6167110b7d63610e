r"""Prepares a data set: official files -> TFDS ArrayRecord, once.

  python launch/prepare_data.py --dataset=cub --manual_dir=~/downloads/cub
  python launch/prepare_data.py --dataset=aircraft --manual_dir=DIR --builder_config=family
  python launch/prepare_data.py --dataset=cars --manual_dir=DIR --on_bad_image=skip
  python launch/prepare_data.py --dataset=demo
  python launch/prepare_data.py --dataset=folder --manual_dir=DIR --name=my_birds \
      [--test_fraction=0.2 --split_seed=0]

DIR holds the official archive or the folder it extracts to (see the
builder's MANUAL_DOWNLOAD_INSTRUCTIONS); for --dataset=folder, your own images:
DIR/train/<class>/ and DIR/test/<class>/, or one tree DIR/<class>/ that is split
per class by --test_fraction and --split_seed (fgjax/data/class_folders.py); train
on it with --config=configs/folder.py --config.data.name=my_birds. Running it
again once the data set is prepared does nothing; after an interruption it builds
the data set anew. All logic lives in fgjax.data.registry.prepare and
fgjax.data.folder.prepare.
"""

import sys

from absl import app
from absl import flags

from fgjax.data import class_folders
from fgjax.data import common
from fgjax.data import registry

flags.DEFINE_enum('dataset', None, sorted(registry.BUILDERS) + [registry.FOLDER],
                  f'Data set to prepare; {registry.FOLDER}: your own images in class '
                  'folders (with --name).')
flags.DEFINE_string('manual_dir', None,
                    'Folder with the official archive or extracted folder (not needed '
                    'for demo). Default: <data_dir>/downloads/manual. With '
                    f'--dataset={registry.FOLDER}: the folder of your images (required).')
flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'TFDS data dir to write to.')
flags.DEFINE_string('builder_config', None, 'Builder config, e.g. family for aircraft.')
flags.DEFINE_enum('on_bad_image', 'error', common.BAD_IMAGE_POLICIES,
                  'error: stop at an undecodable image; skip: leave it out and list it.')
flags.DEFINE_string('name', None, f'With --dataset={registry.FOLDER}: the data set\'s name '
                    f'(config.data.name), {registry.FOLDER_NAME_RULE}.')
flags.DEFINE_float('test_fraction', None,
                   f'With --dataset={registry.FOLDER} and one tree DIR/<class>/: the share of '
                   'each class that goes to test, round(fraction * n), halves up (default '
                   f'{class_folders.DEFAULT_TEST_FRACTION}).')
flags.DEFINE_integer('split_seed', None,
                     f'With --dataset={registry.FOLDER} and one tree DIR/<class>/: chooses '
                     f'which images go to test (default {class_folders.DEFAULT_SPLIT_SEED}).')
flags.mark_flag_as_required('dataset')
_FOLDER_FLAGS = ('name', 'test_fraction', 'split_seed')
FLAGS = flags.FLAGS


def _prepare_folder():
  """fgjax.data.folder.prepare with the flags, after checking that they fit together."""
  from fgjax.data import folder  # pylint: disable=g-import-not-at-top
  if not FLAGS.manual_dir:
    sys.exit(f'ERROR: --dataset={registry.FOLDER} needs --manual_dir=DIR, the folder of your '
             f'images, laid out as:\n{class_folders.LAYOUT_HELP}')
  if FLAGS.name is None:
    sys.exit(f'ERROR: --dataset={registry.FOLDER} needs --name=NAME, the data set\'s name '
             f'({registry.FOLDER_NAME_RULE}); train on it with --config=configs/folder.py '
             '--config.data.name=NAME.')
  if FLAGS.builder_config:
    sys.exit(f'ERROR: --builder_config={FLAGS.builder_config}: a folder data set has none; '
             'leave it out.')
  return folder.prepare(FLAGS.name, FLAGS.manual_dir, FLAGS.data_dir, FLAGS.test_fraction,
                        FLAGS.split_seed, FLAGS.on_bad_image)


def _print_folder_summary(builder):
  """Where a folder data set came from, its classes and the files it ignored."""
  from fgjax.data import folder  # pylint: disable=g-import-not-at-top
  names = builder.info.features['label'].names
  print(f'Source: {folder.describe_source(builder.source)}.')
  print(f'{len(names)} classes (folder names, sorted): {class_folders.some(names, 10)}.')
  print(f'Train on it with --config=configs/folder.py --config.data.name={FLAGS.name}.')
  ignored = builder.ignored_files
  if ignored:
    print(f'{len(ignored)} file(s) below the source folder were ignored (not images, or '
          'hidden):')
    for path in ignored[:20]:
      print(f'  {path}')
    if len(ignored) > 20:
      print(f'  ... all listed under ignored_files in {builder.data_path}/metadata.json')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from fgjax.data import manual_files  # pylint: disable=g-import-not-at-top
  folder_data = FLAGS.dataset == registry.FOLDER
  misplaced = [f'--{f}' for f in _FOLDER_FLAGS if FLAGS[f].value is not None]
  if misplaced and not folder_data:
    sys.exit(f'ERROR: {", ".join(misplaced)}: only for --dataset={registry.FOLDER} (your own '
             'images in class folders).')
  try:
    if folder_data:
      result = _prepare_folder()
    else:
      result = registry.prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir,
                                FLAGS.builder_config, FLAGS.on_bad_image)
  except (manual_files.OfficialFilesError, common.BadImageError, FileExistsError,
          registry.DataNameError, class_folders.FolderDataError) as e:
    sys.exit(f'ERROR: {e}')
  what = FLAGS.name if folder_data else FLAGS.dataset
  if result.already_prepared:
    print(f'{what} is already prepared in {result.data_path}: nothing to do.')
  else:
    print(f'Prepared {what} in {result.data_path}.')
  sizes = ', '.join(f'{s} {n}' for s, n in sorted(result.split_sizes().items()))
  print(f'Examples per split: {sizes}.')
  if folder_data:
    _print_folder_summary(result.builder)
  if result.skipped_files:
    print(f'{len(result.skipped_files)} bad image(s) were skipped:')
    for path in result.skipped_files:
      print(f'  {path}')


if __name__ == '__main__':
  app.run(main)
