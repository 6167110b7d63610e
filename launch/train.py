r"""Trains and evaluates an fgjax model.

  python launch/train.py --config=configs/cub.py --workdir=runs/cub \
      [--config.model.name=fdl] [--config.train.batch_size=32] [--multihost]

Rerunning the same command on the same workdir resumes where it stopped. SIGTERM (a
preemption notice) or Ctrl-C: the step in progress finishes, a checkpoint is saved and the
command exits with status 0; on several hosts all stop at the same step.
All logic lives in fgjax.train (importable from a notebook).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Output folder (checkpoints, metrics.jsonl, config.json).')
flags.DEFINE_bool('multihost', False,
                  'Call jax.distributed.initialize() first (Cloud TPU VM pods, SLURM, ...: '
                  'the cluster is detected from the environment unless the flags below say).')
flags.DEFINE_string('coordinator_address', None, 'With --multihost: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'With --multihost: number of processes.')
flags.DEFINE_integer('process_id', None, 'With --multihost: this process\'s index.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl parsing, after checking every --config.KEY override against the known keys."""
  from fgjax import config_lib  # pylint: disable=g-import-not-at-top
  overrides = [a[2:].split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
  unknown = [k[len('config.'):] for k in overrides
             if k[len('config.'):] not in config_lib.valid_keys()]
  if unknown:
    raise app.UsageError(config_lib.unknown_keys_message(unknown))
  return flags.FLAGS(argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines only; --verbosity=0 for all logs.
  import jax  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.multihost:
    jax.distributed.initialize(coordinator_address=flags.FLAGS.coordinator_address,
                               num_processes=flags.FLAGS.num_processes,
                               process_id=flags.FLAGS.process_id)
  from fgjax import preemption  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except preemption.TrainingStopped as stopped:  # SIGTERM / SIGINT: saved, exit 0.
    if jax.process_index() == 0:
      print(stopped, flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
