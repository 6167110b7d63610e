r"""Draws, for each image, what the model predicts and what it ranks its regions by.

  python launch/visualize.py --workdir=runs/cub_fdl --out_dir=viz [--images='photos/*.jpg']

One PNG per image, <index>_<name>.png (fgjax.drawing.draw_ranking_figure): a caption
strip with the predicted class and its probability (and the true class for eval-split
images), over a row of panels, each the model input itself at its own resolution scaled
up by an integer factor (nearest neighbour, every input pixel a visible block; 7x for a
64-px input, 2x for 224, 1x from 225 px), not a thumbnail of the original:

  1. the input with the model's regions outlined, top-1 first in red, green, blue,
     yellow, magenta, cyan (FDL's figure 2); resnet has none;
  2. the map the method ranks candidate regions by, as a heat map over the input
     (dark: low, bright yellow: high; fgjax.heatmaps):
       fdl     its smoothed class-activation attention M, read on the input as its box
               scores read it;
       nts,    the scores NMS ordered the anchors by (the navigator's, plus the navigator
       ssanet  guide's prior when it is on), spread over the anchors' boxes: each pixel
               the mean score of the anchors covering it (uncovered pixels dimmed);
       scrim   the same, one panel per FPL (navigator + CPL prior), the last stage's first;
       resnet  none;
  3. ssanet only: its choices for this image as bars: the oriented-pooling gate over its
     angles and the scale-shift probabilities of its scale mining.

Without --images, the first --num_examples images of the eval split are drawn. A file
that cannot be read is skipped with a warning naming it.
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
