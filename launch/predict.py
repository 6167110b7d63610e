r"""Top-k predictions (and the mined regions) for image files.

  python launch/predict.py --workdir=runs/cub_fdl --images='photos/*.jpg' [--top_k=5] \
      [--output=predictions.jsonl]

Each image is preprocessed exactly as in evaluation (resize, centre crop). One
JSON line per image: file, top-k classes with probabilities, and the regions
(y0, x0, y1, x1 in model-input pixels) for the models that select some.
"""

import json

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
  rows = inference.predict_files(run, paths, top_k=FLAGS.top_k)
  lines = [json.dumps(r) for r in rows]
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    print(f'{len(lines)} predictions written to {FLAGS.output}')
  else:
    print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
