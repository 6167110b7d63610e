r"""Trains and evaluates several methods and seeds from the same start, and compares them.

  python launch/compare.py --config=configs/parts.py --methods=resnet,nts,fdl,ssanet \
      --seeds=0,1,2 --workdir=runs/compare [--config.train.epochs=2]

Each (method, seed) trains in <workdir>/<method>_s<seed> with the config file's
get_config(method), the seed and the --config.KEY=VALUE overrides (the same syntax as
train.py). Prints a table and writes <workdir>/comparison.json, comparison.md and
comparison.png. Rerunning resumes: finished runs are not trained again.
All logic lives in fgjax.compare.
"""

import sys

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('config', None, 'Config file whose get_config(method) gives each run.')
flags.DEFINE_list('methods', ['resnet', 'nts', 'fdl', 'ssanet'], 'Methods (model.name) to compare.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed) to run for each method.')
flags.DEFINE_string('workdir', None, 'Output folder: one sub-folder per run, and the summary.')
flags.mark_flags_as_required(['config', 'workdir'])

_OVERRIDES = []


def parse_flags(argv):
  """absl parsing; --config.KEY=VALUE arguments are kept aside as overrides."""
  _OVERRIDES.extend(a[len('--config.'):] for a in argv[1:] if a.startswith('--config.'))
  return flags.FLAGS([a for a in argv if not a.startswith('--config.')])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from fgjax import compare  # pylint: disable=g-import-not-at-top
  try:
    seeds = [int(s) for s in flags.FLAGS.seeds]
  except ValueError as e:
    raise app.UsageError(f'--seeds must be integers, got {flags.FLAGS.seeds}.') from e
  from fgjax import preemption  # pylint: disable=g-import-not-at-top
  try:
    out = compare.run_comparison(flags.FLAGS.config, flags.FLAGS.methods, seeds,
                                 flags.FLAGS.workdir, _OVERRIDES)
  except preemption.TrainingStopped as stopped:  # Saved; rerunning resumes.
    print(stopped, file=sys.stderr)
    return
  print(out['table'])
  print(f'Written: {flags.FLAGS.workdir}/comparison.json, comparison.md, comparison.png',
        file=sys.stderr)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
