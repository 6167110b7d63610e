r"""Prepares a data set: official files -> TFDS ArrayRecord, once.

  python launch/prepare_data.py --dataset=cub --manual_dir=~/downloads/cub
  python launch/prepare_data.py --dataset=aircraft --manual_dir=DIR --builder_config=family
  python launch/prepare_data.py --dataset=cars --manual_dir=DIR --on_bad_image=skip
  python launch/prepare_data.py --dataset=demo

DIR holds the official archive or the folder it extracts to (see the
builder's MANUAL_DOWNLOAD_INSTRUCTIONS). Running it again once the data set is
prepared does nothing; after an interruption it builds the data set anew.
All logic lives in fgjax.data.registry.prepare.
"""

import sys

from absl import app
from absl import flags

from fgjax.data import common
from fgjax.data import registry

flags.DEFINE_enum('dataset', None, sorted(registry.BUILDERS), 'Data set to prepare.')
flags.DEFINE_string('manual_dir', None,
                    'Folder with the official archive or extracted folder (not needed '
                    'for demo). Default: <data_dir>/downloads/manual.')
flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'TFDS data dir to write to.')
flags.DEFINE_string('builder_config', None, 'Builder config, e.g. family for aircraft.')
flags.DEFINE_enum('on_bad_image', 'error', common.BAD_IMAGE_POLICIES,
                  'error: stop at an undecodable image; skip: leave it out and list it.')
flags.mark_flag_as_required('dataset')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from fgjax.data import manual_files  # pylint: disable=g-import-not-at-top
  try:
    result = registry.prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir,
                              FLAGS.builder_config, FLAGS.on_bad_image)
  except (manual_files.OfficialFilesError, common.BadImageError, FileExistsError) as e:
    sys.exit(f'ERROR: {e}')
  if result.already_prepared:
    print(f'{FLAGS.dataset} is already prepared in {result.data_path}: nothing to do.')
  else:
    print(f'Prepared {FLAGS.dataset} in {result.data_path}.')
  sizes = ', '.join(f'{s} {n}' for s, n in sorted(result.split_sizes().items()))
  print(f'Examples per split: {sizes}.')
  if result.skipped_files:
    print(f'{len(result.skipped_files)} bad image(s) were skipped:')
    for path in result.skipped_files:
      print(f'  {path}')


if __name__ == '__main__':
  app.run(main)
