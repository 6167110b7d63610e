"""Speed and memory benchmarks behind `launch/benchmark.py`.

Each benchmark is a `Mode` in `MODES`: a function `run(**options) -> records`
(one dict per measured configuration) and its default options. `run_mode`
fills in the defaults; `format_table` prints the records and `write_jsonl`
keeps them. Tests call the mode functions on tiny inputs and check the
records; no test times anything.

  data:   input pipeline images/s (train augmentation) per grain worker count.
  decode: single-thread CPU cost of each stage of the train transform.
          (Both measured in fgjax.benchmark_input.)
  train:  compile time, step time, XLA FLOPs and memory of each model's step.
  eval:   the same for the exact-evaluation step (forward in eval mode, masked sums).
  all:    data and train with small defaults.
  compare: fgjax's ResNet train step against PyTorch's, alternately in one process
          (fgjax.benchmark_compare; needs torch).
  memory: XLA's memory estimate of each model's train step, and the largest batch that fits
          (fgjax.benchmark_memory).
  fft:    SSANet's Fourier ridge solver against the explicit circulant solve
          (fgjax.benchmark_fft).
  profile: where one model's train step spends its time, per module and operation
          (a jax.profiler trace; fgjax.benchmark_profile).
"""

import dataclasses
import functools
import inspect
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import PIL
import psutil

from fgjax import benchmark_compare
from fgjax import benchmark_fft
from fgjax import benchmark_input
from fgjax import benchmark_memory
from fgjax import benchmark_profile


def _random_batch(num_devices: int, per_device: int, image_size: int, num_classes: int):
  rng = np.random.default_rng(0)
  shape = (num_devices, per_device)
  return {'image': rng.integers(0, 256, shape + (image_size, image_size, 3), dtype=np.uint8),
          'label': rng.integers(0, num_classes, shape).astype(np.int32),
          'mask': np.ones(shape, np.float32)}


def _peak_memory_bytes(devices) -> int | None:
  """Largest 'peak_bytes_in_use' over `devices` (since process start); None if not reported."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def prepare_train_step(name: str, *, backbone: str, image_size: int, batch_size: int,
                       dtype: str, num_classes: int, parallel, pointwise_conv: str = 'conv',
                       kind: str = 'train', donate: bool = True):
  """Compiles one model's pmapped train step (or with kind='eval' its exact-evaluation
  step, train_step.eval_step) on a fixed random batch; `donate`: the train step takes
  over the state's buffers (as training does).

  Returns (step, record): `step()` runs one step on the state the previous one left and
  waits for it; `record` holds the compile time, XLA's FLOPs and memory estimate.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from fgjax import config_lib  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name, config.model.backbone, config.model.dtype = name, backbone, dtype
  config.model.pointwise_conv = pointwise_conv
  config.data.image_size = image_size
  model, schedule, tx = train.build_model_and_optimizer(config, num_classes, steps_per_epoch=100)
  state = ts.create_train_state(model, tx, jax.random.key(0), image_size)
  state = parallel.replicate(state)
  if kind == 'eval':  # The state stays as it is: nothing to donate.
    p_train = parallel.map(functools.partial(ts.eval_step, model=model))
  else:
    p_train = parallel.map(functools.partial(ts.train_step, model=model, tx=tx,
                                             schedule=schedule, rng=jax.random.key(1)),
                           donate_state=donate)
  batch = parallel.shard_batch(_random_batch(parallel.num_local_devices, batch_size,
                                             image_size, num_classes))
  # Placed as the replicated state is (one slice per device): steps time no host transfer.
  batch = jax.device_put(batch, state.step.sharding)
  t0 = time.perf_counter()
  compiled = p_train.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  latest = {'state': state, 'metrics': None}

  def step():
    if kind == 'eval':
      latest['metrics'] = compiled(latest['state'], batch)
    else:
      latest['state'], latest['metrics'] = compiled(latest['state'], batch)
    jax.block_until_ready(latest)

  def loss_finite() -> bool:
    return bool(np.isfinite(parallel.to_host(latest['metrics'])['loss']))

  record = {
      'mode': kind, 'model': name, 'backbone': backbone, 'image_size': image_size,
      'dtype': dtype, 'pointwise_conv': pointwise_conv, 'devices': parallel.num_local_devices,
      'device_kind': parallel.local_devices[0].device_kind, 'batch_per_device': batch_size,
      'compile_s': compile_s, 'flops_per_device_step': float(cost.get('flops', 0.0)),
      'xla_memory_bytes': (memory.argument_size_in_bytes + memory.output_size_in_bytes
                           + memory.temp_size_in_bytes - memory.alias_size_in_bytes
                           if memory is not None else None)}
  step.loss_finite, step.compiled = loss_finite, compiled
  return step, record


def _time_train_step(name: str, *, backbone: str, image_size: int, batch_size: int, dtype: str,
                     steps: int, warmup: int, num_classes: int, parallel, kind: str) -> dict:
  """Compiles one model's pmapped train (or eval) step and times it on a fixed batch."""
  step, record = prepare_train_step(name, backbone=backbone, image_size=image_size,
                                    batch_size=batch_size, dtype=dtype, num_classes=num_classes,
                                    parallel=parallel, kind=kind)
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  return {**record, 'steps': steps, 'warmup': warmup, 'step_s_median': step_s,
          'step_s_min': min(times),
          'images_per_s': batch_size * parallel.num_local_devices / step_s,
          'peak_memory_bytes': _peak_memory_bytes(parallel.local_devices),
          'loss_finite': step.loss_finite()}


def benchmark_train(model_names: Sequence[str], *, backbone: str, image_size: int,
                    batch_size: int, dtype: str, steps: int, warmup: int, num_classes: int = 200,
                    devices=None, kind: str = 'train') -> list[dict]:
  """Train-step time of each model on all local devices (pmap), against resnet's; with
  kind='eval', the time of its exact-evaluation step (eval mode: forward and masked sums).

  Compilation is timed apart from the steps; `warmup` executions follow it
  untimed; the step time is the median of `steps` executions, each waited
  for. 'flops_per_device_step' is XLA's estimate for the compiled step of one
  device. With resnet among the models, each record gets
    time_ratio = step_s / resnet step_s,  flop_ratio = flops / resnet flops,
    overhead_vs_flop_prediction = time_ratio / flop_ratio - 1,
  the time above what the FLOPs alone predict (the issue's target: +10 % at
  most for the region models). 'peak_memory_bytes' is the device's peak since
  the process started (None where the backend does not report it, as on CPU);
  'xla_memory_bytes' is XLA's static estimate (arguments + outputs + temporaries).
  """
  from fgjax import models  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  parallel = ts.Parallel('pmap', devices)
  records = []
  for name in model_names:
    if name not in models.MODELS:
      records.append({'mode': kind, 'model': name,
                      'skipped': f'not in fgjax.models.MODELS {sorted(models.MODELS)}'})
      continue
    records.append(_time_train_step(
        name, backbone=backbone, image_size=image_size, batch_size=batch_size, dtype=dtype,
        steps=steps, warmup=warmup, num_classes=num_classes, parallel=parallel, kind=kind))
  return add_resnet_ratios(records)


def add_resnet_ratios(records: list[dict]) -> list[dict]:
  """Sets each measured record's time_ratio, flop_ratio and overhead_vs_flop_prediction
  (benchmark_train) against the 'resnet' record, or None without one."""
  base = next((r for r in records if r['model'] == 'resnet' and 'skipped' not in r), None)
  for r in records:
    if 'skipped' in r:
      continue
    r['time_ratio'] = r['flop_ratio'] = r['overhead_vs_flop_prediction'] = None
    if base is not None:
      r['time_ratio'] = r['step_s_median'] / base['step_s_median']
      if base['flops_per_device_step'] > 0 and r['flops_per_device_step'] > 0:
        r['flop_ratio'] = r['flops_per_device_step'] / base['flops_per_device_step']
        r['overhead_vs_flop_prediction'] = r['time_ratio'] / r['flop_ratio'] - 1
  return records


# ---------------------------------------------------------------- modes.

def int_list(value) -> list[int]:
  return [int(v) for v in (value.split(',') if isinstance(value, str) else value)]


def str_list(value) -> list[str]:
  return [v.strip() for v in value.split(',')] if isinstance(value, str) else list(value)


def data_mode(*, dataset, data_dir, split, builder_config, workers, batch_size, num_batches,
              warmup_batches, image_size, resize_size) -> list[dict]:
  source = benchmark_input.open_source(dataset, data_dir, split, builder_config)
  return benchmark_input.benchmark_data(
      source, workers=int_list(workers), batch_size=batch_size, num_batches=num_batches,
      warmup_batches=warmup_batches, image_size=image_size, resize_size=resize_size)


def decode_mode(*, dataset, data_dir, split, builder_config, image_size,
                resize_size) -> list[dict]:
  return benchmark_input.benchmark_decode(
      benchmark_input.open_source(dataset, data_dir, split, builder_config),
      image_size=image_size, resize_size=resize_size)


def train_mode(*, models, backbone, image_size, batch_size, dtype, steps, warmup) -> list[dict]:
  return benchmark_train(str_list(models), backbone=backbone, image_size=image_size,
                         batch_size=batch_size, dtype=dtype, steps=steps, warmup=warmup)


def eval_mode(*, models, backbone, image_size, batch_size, dtype, steps, warmup) -> list[dict]:
  return benchmark_train(str_list(models), backbone=backbone, image_size=image_size,
                         batch_size=batch_size, dtype=dtype, steps=steps, warmup=warmup,
                         kind='eval')


def _only(fn: Callable, options: dict) -> dict:
  return {k: v for k, v in options.items() if k in inspect.signature(fn).parameters}


def all_mode(**options) -> list[dict]:
  return data_mode(**_only(data_mode, options)) + train_mode(**_only(train_mode, options))


@dataclasses.dataclass(frozen=True)
class Mode:
  """A benchmark: `run(**options) -> records`, its default options, its table columns."""
  run: Callable[..., list[dict]]
  defaults: dict
  # (header, record key, format spec[, scale]); keys ending in '_bytes' print in MiB.
  columns: tuple[tuple, ...]


_SOURCE = {'dataset': None, 'data_dir': '~/tensorflow_datasets', 'split': 'train',
           'builder_config': None}
_DATA_COLUMNS = (('workers', 'workers', 'd'), ('images', 'images', 'd'),
                 ('seconds', 'seconds', '.2f'), ('img/s', 'images_per_s', '.1f'),
                 ('img/s/process', 'images_per_s_per_process', '.1f'),
                 ('CPU s main', 'cpu_s_main', '.2f'), ('CPU s workers', 'cpu_s_workers', '.2f'),
                 ('cores used', 'cores_used', '.2f'), ('img/cpu-s', 'images_per_cpu_s', '.1f'))
_DECODE_COLUMNS = (('stage', 'stage', 's'), ('images', 'images', 'd'),
                   ('CPU ms/img', 'cpu_ms_per_image', '.2f'),
                   ('img/cpu-s', 'images_per_cpu_s', '.1f'), ('max |diff|', 'max_abs_diff', 'd'),
                   ('differing', 'fraction_differing', '.1%'), ('JPEG', 'encoded_size', 's'),
                   ('decoded at', 'draft_decoded_size', 's'))
_TRAIN_COLUMNS = (('model', 'model', 's'), ('devices', 'devices', 'd'),
                  ('batch/dev', 'batch_per_device', 'd'), ('compile s', 'compile_s', '.1f'),
                  ('step s', 'step_s_median', '.3f'), ('img/s', 'images_per_s', '.2f'),
                  ('GFLOP/dev', 'flops_per_device_step', '.4g', 1e-9),
                  ('time/resnet', 'time_ratio', '.3f'), ('flops/resnet', 'flop_ratio', '.3f'),
                  ('over FLOP pred.', 'overhead_vs_flop_prediction', '+.1%'),
                  ('XLA mem MiB', 'xla_memory_bytes', '.0f'),
                  ('peak mem MiB', 'peak_memory_bytes', '.0f'))

MODES = {
    'data': Mode(data_mode, {**_SOURCE, 'workers': '0,1,2', 'batch_size': 32, 'num_batches': 20,
                             'warmup_batches': 2, 'image_size': 448, 'resize_size': 600},
                 _DATA_COLUMNS),
    'decode': Mode(decode_mode, {**_SOURCE, 'image_size': 448, 'resize_size': 600},
                   _DECODE_COLUMNS),
    'train': Mode(train_mode, {'models': 'resnet,nts,fdl,ssanet', 'backbone': 'resnet50',
                               'image_size': 448, 'batch_size': 2, 'dtype': 'float32',
                               'steps': 10, 'warmup': 2}, _TRAIN_COLUMNS),
    'eval': Mode(eval_mode, {'models': 'resnet,nts,fdl,ssanet,scrim', 'backbone': 'resnet50',
                             'image_size': 448, 'batch_size': 8, 'dtype': 'float32',
                             'steps': 5, 'warmup': 1}, _TRAIN_COLUMNS),
    'memory': Mode(benchmark_memory.memory_mode, {'models': 'resnet,nts,fdl,ssanet,scrim', 'backbone': 'resnet50',
                                 'image_size': 448, 'dtype': 'bfloat16', 'memory_gib': 80.0},
                   (('model', 'model', 's'), ('MiB at 1', 'xla_batch1_bytes', '.1f'),
                    ('MiB at 2', 'xla_batch2_bytes', '.1f'),
                    ('MiB/image', 'per_image_bytes', '.1f'),
                    ('largest batch', 'largest_batch_per_device', 'd'))),
    'fft': Mode(benchmark_fft.fft_mode, {'scales': '4,8,16,32,64,128,256', 'channels': 256,
                                         'batch_size': 16, 'repeats': 20}, benchmark_fft.COLUMNS),
    'compare': Mode(benchmark_compare.compare_mode,
                    {'backbone': 'resnet50', 'image_size': 224, 'batch_size': 8,
                     'dtypes': 'float32,bfloat16', 'layouts': 'nchw,channels_last',
                     'variants': 'dot', 'steps': 5, 'warmup': 2}, benchmark_compare.COLUMNS),
    'profile': Mode(benchmark_profile.profile_mode,
                    {'models': 'fdl', 'backbone': 'resnet_tiny', 'image_size': 224,
                     'batch_size': 16, 'dtype': 'float32', 'steps': 3, 'warmup': 2, 'top': 15,
                     'trace_dir': ''}, benchmark_profile.COLUMNS),
    # Small: a quick look at both on a new machine.
    'all': Mode(all_mode, {**_SOURCE, 'workers': '0,1', 'batch_size': 4, 'num_batches': 24,
                           'warmup_batches': 2, 'image_size': 448, 'resize_size': 600,
                           'models': 'resnet,nts,fdl,ssanet', 'backbone': 'resnet50',
                           'dtype': 'float32', 'steps': 2, 'warmup': 1}, ()),
}


def machine_info() -> dict:
  """What the figures were measured on, and how busy it was (load from other users)."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
  except OSError:
    pass
  return {'mode': 'machine', 'cpu': cpu, 'cpu_count': os.cpu_count(),
          'cores_available': len(os.sched_getaffinity(0)), 'load_avg_1_5_15m': os.getloadavg(),
          'memory_gib': psutil.virtual_memory().total / 2**30, 'python': platform.python_version(),
          'pillow': PIL.__version__, 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


class OptionsError(ValueError):
  """An unknown mode, or an option that the mode does not take."""


def run_mode(name: str, options: dict | None = None) -> list[dict]:
  """Runs mode `name` with `options` (None values: the mode's default).

  Returns the machine record followed by the mode's records. Raises
  OptionsError for an unknown mode or an option the mode does not take.
  """
  if name not in MODES:
    raise OptionsError(f'Unknown benchmark mode {name!r}; valid modes: {sorted(MODES)}.')
  mode = MODES[name]
  given = {k: v for k, v in (options or {}).items() if v is not None}
  unused = sorted(set(given) - set(mode.defaults))
  if unused:
    raise OptionsError(f'Mode {name!r} does not take {unused}; it takes {sorted(mode.defaults)}.')
  machine = machine_info()  # Before the run: the load average is other users' load.
  return [machine] + mode.run(**{**mode.defaults, **given})


def _cell(record: dict, key: str, spec: str, scale: float | None = None) -> str:
  value = record.get(key)
  if value is None:
    return 'n/a'
  if isinstance(value, (tuple, list)):
    return 'x'.join(str(v) for v in value)
  if spec == 's':
    return str(value)
  if key.endswith('_bytes'):
    scale = 2.0**-20
  return format(value if scale is None else value * scale, spec)


# Shown once above a table rather than in every row.
_CONTEXT_KEYS = ('source', 'batch_size', 'backbone', 'image_size', 'dtype', 'device_kind')


def format_table(records: list[dict]) -> str:
  """Plain-text tables, one per mode, in the order the records came."""
  lines = []
  groups: dict[str, list[dict]] = {}
  for r in records:
    groups.setdefault(r['mode'], []).append(r)
  for mode, rows in groups.items():
    if mode == 'machine':
      for r in rows:
        load = '/'.join(f'{v:.1f}' for v in r['load_avg_1_5_15m'])
        lines.append(f"machine: {r['cpu']}, {r['cores_available']}/{r['cpu_count']} cores, "
                     f"{r['memory_gib']:.0f} GiB, load avg (1/5/15 min) {load} at {r['time']}")
      continue
    columns = MODES[mode].columns
    table = [[c[0] for c in columns]]
    table += [[_cell(r, *c[1:]) for c in columns] for r in rows if 'skipped' not in r]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    context = [f'{k}: {", ".join(sorted({str(r[k]) for r in rows if k in r}))}'
               for k in _CONTEXT_KEYS if any(k in r for r in rows)]
    lines.append(f'\n[{mode}] ' + '; '.join(context))
    lines += ['  '.join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    lines += [f"  skipped {r['model']}: {r['skipped']}" for r in rows if 'skipped' in r]
  return '\n'.join(lines)


def write_jsonl(records: list[dict], path: str) -> None:
  """Appends one JSON object per record to `path`."""
  with open(path, 'a') as f:
    for r in records:
      f.write(json.dumps(r, default=str) + '\n')
