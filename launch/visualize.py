r"""Draws each image's predicted class and mined regions into PNG files.

  python launch/visualize.py --workdir=runs/cub_fdl --images='photos/*.jpg' --out_dir=viz

Regions are drawn top-1 first in red, green, blue, yellow (FDL's figure 2);
the plain ResNet has no regions, so only its prediction is written.
Without --images, the first --num_examples images of the eval split are used.
"""

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('images', None, 'Comma-separated image paths or globs (default: eval split).')
flags.DEFINE_integer('num_examples', 8, 'Eval-split images to draw when --images is not given.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to restore.')
flags.DEFINE_string('out_dir', None, 'Folder for the PNG files.')
flags.mark_flags_as_required(['workdir', 'out_dir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines only; --verbosity=0 for all logs.
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  if FLAGS.images:
    written = inference.visualize_files(run, inference.expand_paths(FLAGS.images), FLAGS.out_dir)
  else:
    written = inference.visualize_eval_split(run, FLAGS.num_examples, FLAGS.out_dir)
  print(f'{len(written)} images written to {FLAGS.out_dir}')


if __name__ == '__main__':
  app.run(main)
