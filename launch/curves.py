r"""Draws a run's training curves (loss, accuracy of every head, learning rate) as a PNG.

  python launch/curves.py --workdir=runs/cub_fdl [--out=curves_cub_fdl.png]

Reads <workdir>/metrics.jsonl (a run in progress too); writes <workdir>/curves.png
unless --out says otherwise. Training writes the same picture at each evaluation.
All logic lives in fgjax.metrics_log.
"""

import sys

from absl import app
from absl import flags

flags.DEFINE_string('workdir', None, 'The run (or its metrics.jsonl).')
flags.DEFINE_string('out', None, 'The PNG to write (default: <workdir>/curves.png).')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from fgjax import metrics_log  # pylint: disable=g-import-not-at-top
  try:
    out = metrics_log.write_curves(FLAGS.workdir, FLAGS.out)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  print(f'curves written to {out}')


if __name__ == '__main__':
  app.run(main)
