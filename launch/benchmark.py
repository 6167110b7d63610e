r"""Measures input-pipeline and train-step speed and memory.

  python launch/benchmark.py --mode=data --workers=0,1,2 [--dataset=cub --data_dir=DIR]
  python launch/benchmark.py --mode=decode
  python launch/benchmark.py --mode=train --models=resnet,nts,fdl,ssanet \
      --backbone=resnet50 --image_size=448 --batch_size=2 --dtype=bfloat16 --steps=10
  python launch/benchmark.py --mode=eval --models=resnet,nts,fdl,ssanet,scrim --image_size=448
  python launch/benchmark.py --mode=memory --image_size=448 --dtype=bfloat16 --memory_gib=80
  python launch/benchmark.py --mode=fft --scales=4,8,16,32,64,128,256
  python launch/benchmark.py --mode=compare --backbone=resnet50 --image_size=224 \
      --batch_size=8 --dtypes=float32,bfloat16 --layouts=nchw,channels_last \
      --variants=dot,shard_map,no_donation --steps=5
  python launch/benchmark.py --mode=profile --models=fdl --backbone=resnet_tiny --image_size=224
  python launch/benchmark.py --mode=all --output=bench.jsonl

Prints a table per mode; --output appends the records as JSON lines. A flag
left unset takes the mode's default (fgjax.benchmark_lib.MODES); a flag the
mode does not use is an error. Figures depend on the machine and on whatever
else runs on it: the first line says which machine and how loaded it was.
All logic lives in fgjax.benchmark_lib.
"""

from absl import app
from absl import flags

from fgjax import benchmark_lib

flags.DEFINE_enum('mode', None, sorted(benchmark_lib.MODES), 'What to measure.')
flags.DEFINE_string('output', None, 'Append the records to this JSON-lines file.')
# data / decode.
flags.DEFINE_string('dataset', None, 'Prepared TFDS data set (cub, aircraft, cars); '
                    'unset: synthetic in-memory 500x375 JPEGs.')
flags.DEFINE_string('data_dir', None, 'TFDS data dir of --dataset.')
flags.DEFINE_string('split', None, 'Split of --dataset to read.')
flags.DEFINE_string('builder_config', None, 'TFDS builder config of --dataset (aircraft: variant).')
flags.DEFINE_list('workers', None, 'grain worker process counts to measure, e.g. 0,1,2.')
flags.DEFINE_integer('num_batches', None, 'Timed batches per worker count.')
flags.DEFINE_integer('warmup_batches', None, 'Untimed batches first.')
flags.DEFINE_integer('resize_size', None, 'Resize side before the random crop.')
# Shared.
flags.DEFINE_integer('image_size', None, 'Side of the square model input.')
flags.DEFINE_integer('batch_size', None, 'data: images per batch; train: images per device.')
# train.
flags.DEFINE_list('models', None, 'Models (keys of fgjax.models.MODELS) to time.')
flags.DEFINE_string('backbone', None, 'Backbone of every model, e.g. resnet50, resnet_tiny.')
flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Computation dtype.')
flags.DEFINE_integer('steps', None, 'Timed train steps per model.')
flags.DEFINE_integer('warmup', None, 'Untimed train steps after compilation.')
flags.DEFINE_float('memory_gib', None, 'memory: device memory to fit a batch in, GiB.')
# compare (needs torch: pip install -e '.[compare]').
flags.DEFINE_list('dtypes', None, 'compare: dtypes to compare in, e.g. float32,bfloat16.')
flags.DEFINE_list('layouts', None, 'compare: torch memory layouts, nchw and/or channels_last.')
flags.DEFINE_list('variants', None, 'compare: fgjax variants timed beside the default step '
                  '(fgjax.benchmark_compare.VARIANTS: dot, shard_map, no_donation).')
# profile.
flags.DEFINE_integer('top', None, 'profile: groups listed per model (the largest).')
flags.DEFINE_string('trace_dir', None, 'profile: keep the traces here (default: a temporary '
                    'folder, named in the records).')
# fft.
flags.DEFINE_list('scales', None, 'fft: numbers of scales S to solve for, e.g. 4,8,...,256.')
flags.DEFINE_integer('channels', None, 'fft: channels per scale.')
flags.DEFINE_integer('repeats', None, 'fft: timed calls per S (the median is reported).')
flags.mark_flag_as_required('mode')
FLAGS = flags.FLAGS

_OPTIONS = ('dataset', 'data_dir', 'split', 'builder_config', 'workers', 'num_batches',
            'warmup_batches', 'resize_size', 'image_size', 'batch_size', 'models', 'backbone',
            'dtype', 'steps', 'warmup', 'scales', 'channels', 'repeats', 'dtypes', 'layouts',
            'variants', 'memory_gib', 'top', 'trace_dir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    records = benchmark_lib.run_mode(FLAGS.mode, {k: FLAGS[k].value for k in _OPTIONS})
  except benchmark_lib.OptionsError as e:
    raise app.UsageError(str(e)) from e
  print(benchmark_lib.format_table(records))
  if FLAGS.output:
    benchmark_lib.write_jsonl(records, FLAGS.output)
    print(f'\nAppended {len(records)} records to {FLAGS.output}.')


if __name__ == '__main__':
  app.run(main)
