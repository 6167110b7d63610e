r"""Evaluates a trained run on its eval split (exact: every image counts once).

  python launch/evaluate.py --workdir=runs/cub_fdl [--checkpoint=best|latest] \
      [--split=test] [--batch_size=64] [--localization] [--navigator_guide=always]

Reads the run's config.json; prints accuracy and loss, and the checkpoint used; for the
region models also each classifier head's own accuracy and each loss term, and with
--localization (parts benchmark and demo) where their boxes go (fgjax.localization).
--navigator_guide evaluates an nts / ssanet run trained with a navigator guide with
('always') or without ('train', the navigator alone) the class activation prior.
"""

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('workdir', None, 'The run to evaluate.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to restore.')
flags.DEFINE_string('split', None, 'Split to evaluate (default: the config\'s eval split).')
flags.DEFINE_integer('batch_size', None, 'Global eval batch size (default: the config\'s).')
flags.DEFINE_bool('localization', False, 'Region models on the parts benchmark or the demo: '
                  'also report how often their boxes hold the class detail.')
flags.DEFINE_enum('navigator_guide', None, ['train', 'always'],
                  'nts / ssanet runs trained with a navigator guide: evaluate with the navigator '
                  "alone ('train') or with the class activation prior ('always'); default: as "
                  'trained.')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines only; --verbosity=0 for all logs.
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  if FLAGS.navigator_guide:
    run = inference.with_navigator_guide(run, FLAGS.navigator_guide)
  result = inference.evaluate_loaded(run, split=FLAGS.split, batch_size=FLAGS.batch_size)
  print(f'{result["checkpoint"]}: accuracy {result["accuracy"]:.4f}, loss {result["loss"]:.4f} '
        f'on {result["count"]} images of split {result["split"]!r}')
  extra = {k: v for k, v in result.items()
           if k.startswith(('accuracy_', 'loss_')) and isinstance(v, float)}
  for key in sorted(extra):  # Region models: each head's own accuracy, each loss term.
    print(f'  {key}: {extra[key]:.4f}')
  if FLAGS.localization:
    from fgjax import localization  # pylint: disable=g-import-not-at-top
    found = localization.localization(run, split=result['split'])
    print(f'detail inside a box (>= 90 % of its area), fraction of {found.pop("count")} images:')
    same, distinct = found.pop('same_top'), found.pop('distinct_top')
    for key, value in found.items():
      print(f'  {key}: {value:.3f}')
    print(f'images whose top box is the most common one: {same:.3f} ({distinct} distinct top '
          'boxes)')

if __name__ == '__main__':
  app.run(main)
