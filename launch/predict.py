r"""Top-k predictions, and the regions of region models, for many image files.

  python launch/predict.py --workdir=runs/cub_fdl --images='photos/*.jpg,extra.png' \
      [--top_k=5] [--output=predictions.jsonl] [--checkpoint=best|latest]

--images takes comma-separated paths and glob patterns; a glob that matches nothing is an
error, a plain path that does not exist is reported as a file that cannot be read. Each
image is preprocessed exactly as in evaluation (resize, centre crop). One JSON line per
file, in the order given, to --output or standard output (fgjax.inference.predict_files):

  file                   the path
  top_k                  [{class, name, prob}, ...], most probable first
  original_size_hw       [H, W] of the image in its own pixels
  input_size             S, the side of the square model input
  and for nts, fdl, ssanet and scrim, m regions, top-1 first:
  regions_input_yxyx     [[y0, x0, y1, x1], ...] in model-input pixels, as the model chose
                         them (they may reach into the zero padding around the input)
  regions_original_xyxy  [[x0, y0, x1, y1], ...] in the image's own pixels (EXIF rotation
                         not applied), clipped to the image: to crop or draw on it
  regions_valid          [true, ...]: false where NMS ran out of distinct boxes

A file that cannot be read (missing, truncated, not an image) is the line {file, error}
with the reason, and a line on standard error names it; every other file is still
predicted. A summary (predicted / skipped) ends standard error.

Exit status: 0 when at least one file was predicted, also when some were skipped; 1 when
no file could be read.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('images', None, 'Comma-separated image paths or glob patterns.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to restore.')
flags.DEFINE_integer('top_k', 5, 'Classes to report per image.')
flags.DEFINE_string('output', None, 'Write JSON lines here instead of standard output.')
flags.mark_flags_as_required(['workdir', 'images'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines only; --verbosity=0 for all logs.
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  paths = inference.expand_paths(FLAGS.images)
  run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  out = open(FLAGS.output, 'w') if FLAGS.output else sys.stdout
  predicted = skipped = 0
  try:
    for row in inference.iter_predictions(run, paths, top_k=FLAGS.top_k):
      if 'error' in row:
        skipped += 1
        print(f'skipped {row["file"]}: {row["error"]}', file=sys.stderr, flush=True)
      else:
        predicted += 1
      out.write(json.dumps(row) + '\n')
      out.flush()  # Rows appear as files are done, and survive a later crash.
  finally:
    if out is not sys.stdout:
      out.close()
  where = f' to {FLAGS.output}' if FLAGS.output else ''
  print(f'{predicted} of {len(paths)} files predicted{where}, {skipped} skipped.',
        file=sys.stderr)
  if not predicted:
    print('No file could be read.', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
