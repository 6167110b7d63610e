r"""Evaluates a trained run on its eval split (exact: every image counts once).

  python launch/evaluate.py --workdir=runs/cub_fdl [--checkpoint=best|latest] \
      [--split=test] [--batch_size=64] [--tta=flip|flip,multicrop] [--localization] \
      [--navigator_guide=always]

Reads the run's config.json; prints top-1 and top-5 accuracy, the mean per-class accuracy,
the loss and the checkpoint used; for the region models also each classifier head's own
accuracy and each loss term, and with --localization (parts benchmark and demo) where their
boxes go (fgjax.localization). --tta averages the softmax over flipped and/or five-crop
views and reports the accuracy with and without it, from the same pass (fgjax.evaluation).
--navigator_guide evaluates an nts / ssanet run trained with a navigator guide with
('always') or without ('train', the navigator alone) the class activation prior.

Writes <workdir>/eval/<folder>-<step>_<split>[_guide-<g>]/ (summary.json, per_class.csv,
confusion.csv, confusion.png), and with --tta the same for the TTA predictions in a
folder of that name plus _tta-flip[-multicrop].
"""

from absl import app
from absl import flags
from absl import logging

flags.DEFINE_string('workdir', None, 'The run to evaluate.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to restore.')
flags.DEFINE_string('split', None, 'Split to evaluate (default: the config\'s eval split).')
flags.DEFINE_integer('batch_size', None, 'Global eval batch size (default: the config\'s).')
flags.DEFINE_string('tta', '', "Test-time augmentation: 'flip', 'multicrop' or 'flip,multicrop' "
                    '(mean softmax over the views; the plain accuracy is reported too).')
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
  from fgjax import evaluation  # pylint: disable=g-import-not-at-top
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  tta = evaluation.parse_tta(FLAGS.tta)  # A misspelt --tta fails before the run loads.
  run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  if FLAGS.navigator_guide:
    run = inference.with_navigator_guide(run, FLAGS.navigator_guide)
  result = evaluation.evaluate_loaded(run, split=FLAGS.split, batch_size=FLAGS.batch_size,
                                      tta=tta)
  tag = f'guide-{FLAGS.navigator_guide}' if FLAGS.navigator_guide else ''
  dirs = evaluation.write_reports(result, FLAGS.workdir, tag)
  print(evaluation.format_summary(result, dirs))
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
