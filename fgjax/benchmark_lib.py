"""Speed and memory benchmarks behind `launch/benchmark.py`.

Each benchmark is a `Mode` in `MODES`: a function `run(**options) -> records`
(one dict per measured configuration) and its default options. `run_mode`
fills in the defaults; `format_table` prints the records and `write_jsonl`
keeps them. Tests call the mode functions on tiny inputs and check the
records; no test times anything.

  data:   input pipeline images/s (train augmentation) per grain worker count.
  decode: single-thread CPU cost of each stage of the train transform.
  train:  compile time, step time, XLA FLOPs and memory of each model's step.
  all:    data and train with small defaults.
"""

import dataclasses
import functools
import inspect
import io
import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import psutil

from fgjax.data import pipeline

# Shaped like a CUB-200 photo (most are 500 px wide, 4:3).
PHOTO_SIZE = (500, 375)
PHOTO_QUALITY = 90
NUM_PHOTOS = 32  # Distinct images; the source cycles through them.


# ---------------------------------------------------------------- synthetic data.

def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A photo-like uint8 [height, width, 3] image: JPEG decode cost depends on content.

  Multi-octave noise with a 1/f-like spectrum (clouds, foliage), colour
  channels correlated through a shared luminance, a few sharp-edged blobs
  (objects) and sensor grain. At quality 90 and 500x375 this compresses to
  about 3 bits per pixel, close to real fine-grained photos.
  """
  lum = np.zeros((height, width), np.float32)
  chroma = np.zeros((height, width, 2), np.float32)
  for cells in (3, 6, 12, 24, 48, 96, 192, 384):
    grid = (max(2, round(cells * height / width)), cells)
    for channel in range(3):
      noise = PIL.Image.fromarray(rng.standard_normal(grid).astype(np.float32), 'F')
      up = np.asarray(noise.resize((width, height), PIL.Image.BICUBIC))
      if channel == 0:
        lum += up / cells ** 0.4
      else:
        chroma[..., channel - 1] += up / cells ** 1.2
  img = np.stack([lum + chroma[..., 0], lum - 0.5 * chroma[..., 0] + 0.5 * chroma[..., 1],
                  lum - chroma[..., 1]], -1)
  img = (img - img.mean()) / (img.std() + 1e-6) * 45 + rng.uniform(90, 160, 3)
  pil = PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = PIL.ImageDraw.Draw(pil)
  for _ in range(rng.integers(2, 6)):
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    rx, ry = rng.uniform(0.02, 0.25) * width, rng.uniform(0.02, 0.25) * height
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=colour)
  out = np.asarray(pil, np.float32) + rng.normal(0, 8, (height, width, 3))
  return np.clip(out, 0, 255).astype(np.uint8)


class SyntheticJpegSource:
  """In-memory random-access source of photo-like JPEGs, as `TfdsSource` yields them.

  Generated once, deterministically from `seed`; `len` is `num_images`
  (the train pipeline repeats epochs). Picklable for grain worker processes.
  """

  def __init__(self, num_images: int = NUM_PHOTOS, size: tuple[int, int] = PHOTO_SIZE,
               quality: int = PHOTO_QUALITY, num_classes: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.size, self.quality, self.num_classes = tuple(size), quality, num_classes
    self.images = []
    for _ in range(num_images):
      buf = io.BytesIO()
      PIL.Image.fromarray(synthetic_photo(rng, *self.size)).save(buf, 'JPEG', quality=quality)
      self.images.append(buf.getvalue())

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return {'image': self.images[index], 'label': np.int32(index % self.num_classes),
            'crop_bottom': 0}

  def __repr__(self):
    mean_kib = np.mean([len(b) for b in self.images]) / 1024
    return (f'SyntheticJpegSource({len(self)} x {self.size[0]}x{self.size[1]} JPEG '
            f'q{self.quality}, mean {mean_kib:.0f} KiB)')


def open_source(dataset: str | None, data_dir: str | None, split: str, builder_config=None):
  """A prepared TFDS data set, or the synthetic JPEG source when `dataset` is None."""
  if not dataset or dataset == 'synthetic':
    return SyntheticJpegSource()
  return pipeline.TfdsSource(dataset, os.path.expanduser(data_dir), split, builder_config)


# ---------------------------------------------------------------- data mode.

def _cpu_seconds(proc: psutil.Process) -> np.ndarray:
  """User + system CPU time of [this process, its live children (grain workers)]."""
  times = []
  for p in [proc] + proc.children(recursive=True):
    try:
      t = p.cpu_times()
      times.append(t.user + t.system)
    except psutil.NoSuchProcess:
      times.append(0.0)
  return np.array([times[0], sum(times[1:])])


def _ratio(count: float, seconds: float) -> float | None:
  # CPU clocks tick at 10 ms: a short run may read 0.
  return count / seconds if seconds > 0 else None


def benchmark_data(source, *, workers: Sequence[int], batch_size: int, num_batches: int,
                   warmup_batches: int, image_size: int, resize_size: int) -> list[dict]:
  """Train-pipeline throughput (`make_train_iterator`) for each grain worker count.

  Warm-up batches (worker start-up, first decode) are excluded. 'cpu_s' is the
  CPU time of this process and its worker processes in the timed window, so
  'images_per_cpu_s' is images per second of one fully used core. Each
  process decodes with 2 threads (the pipeline's grain ReadOptions), so one
  process may use more than one core. Batches prefetched during warm-up make
  short runs optimistic: time many more batches than the prefetch depth (4,
  plus 1 per worker). Worker counts above 0 need absl flags parsed (grain
  reads its own), as `app.run` does.
  """
  spec = pipeline.ImageSpec(image_size, resize_size)
  proc = psutil.Process()
  records = []
  for num_workers in workers:
    it = pipeline.make_train_iterator(source, spec, global_batch_size=batch_size, seed=0,
                                      num_devices=1, num_workers=num_workers)
    try:
      for _ in range(warmup_batches):
        next(it)
      cpu0, t0, images = _cpu_seconds(proc), time.perf_counter(), 0
      for _ in range(num_batches):
        batch = next(it)
        images += batch['image'].shape[0] * batch['image'].shape[1]
      seconds, (cpu_main, cpu_workers) = time.perf_counter() - t0, _cpu_seconds(proc) - cpu0
      shape = tuple(batch['image'].shape[2:])
    finally:
      it.close()
    processes, cpu = max(num_workers, 1), cpu_main + cpu_workers
    records.append({
        'mode': 'data', 'source': repr(source), 'workers': num_workers,
        'batch_size': batch_size, 'batches': num_batches, 'warmup_batches': warmup_batches,
        'images': images, 'image_shape': shape, 'seconds': seconds,
        'images_per_s': images / seconds, 'images_per_s_per_process': images / seconds / processes,
        'cpu_s': cpu, 'cpu_s_main': cpu_main, 'cpu_s_workers': cpu_workers,
        'cores_used': cpu / seconds, 'images_per_cpu_s': _ratio(images, cpu)})
  return records


def _full_resize_then_crop(spec: pipeline.ImageSpec):
  """The train transform as resize-to-`resize_size`, then crop: the reference."""
  def transform(example, rng: np.random.Generator):
    top, left = rng.integers(0, spec.resize_size - spec.image_size + 1, size=2)
    img = pipeline.decode_and_resize(example['image'], example['crop_bottom'], spec.resize_size)
    img = img[top:top + spec.image_size, left:left + spec.image_size]
    if rng.random() < 0.5:
      img = img[:, ::-1]
    return {'image': img, 'label': example['label'], 'mask': np.float32(1.0)}
  return transform


def benchmark_decode(source, *, image_size: int, resize_size: int, min_seconds: float = 2.0,
                     max_images: int | None = None) -> list[dict]:
  """Single-thread CPU time per image of each stage of the train transform.

  Runs each stage in this thread until `min_seconds` of its CPU time (or
  `max_images`) and reports `time.thread_time` per image, which other load on
  the machine disturbs less than wall time. The pipeline's transform resamples
  only the crop window; its distance to a full resize followed by the crop (on
  the same random draws) is reported too.
  """
  spec = pipeline.ImageSpec(image_size, resize_size)
  stages = {
      'decode + RGB': lambda ex, rng: PIL.Image.open(io.BytesIO(ex['image'])).convert('RGB'),
      'decode_and_resize': lambda ex, rng: pipeline.decode_and_resize(
          ex['image'], ex['crop_bottom'], resize_size),
      'full resize, then crop': _full_resize_then_crop(spec),
      'train_transform (pipeline)': pipeline.train_transform(spec),
  }
  reference = _full_resize_then_crop(spec)
  first = source[0]
  with PIL.Image.open(io.BytesIO(first['image'])) as img:
    encoded_size = img.size
    img.draft('RGB', (resize_size, resize_size + first['crop_bottom']))
    draft_size = img.size  # The size the JPEG decodes at: smaller only if draft triggered.
  records = []
  for name, stage in stages.items():
    count, t0 = 0, time.thread_time()
    while count == 0 or (time.thread_time() - t0 < min_seconds and count != max_images):
      stage(source[count % len(source)], np.random.default_rng(count))
      count += 1
    cpu = time.thread_time() - t0
    record = {'mode': 'decode', 'stage': name, 'source': repr(source), 'images': count,
              'cpu_ms_per_image': 1e3 * cpu / count, 'images_per_cpu_s': _ratio(count, cpu),
              'encoded_size': encoded_size, 'draft_decoded_size': draft_size,
              'max_abs_diff': None, 'fraction_differing': None}
    if name.endswith('(pipeline)'):
      diffs = [np.abs(stage(source[i % len(source)], np.random.default_rng(i))['image'].astype(int)
                      - reference(source[i % len(source)], np.random.default_rng(i))['image'])
               for i in range(min(count, 16))]
      record['max_abs_diff'] = int(max(d.max() for d in diffs))
      record['fraction_differing'] = float(np.mean([np.mean(d > 0) for d in diffs]))
    records.append(record)
  return records


# ---------------------------------------------------------------- train mode.

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


def _time_train_step(name: str, *, backbone: str, image_size: int, batch_size: int, dtype: str,
                     steps: int, warmup: int, num_classes: int, parallel) -> dict:
  """Compiles one model's pmapped train step and times it on a fixed random batch."""
  import jax  # pylint: disable=g-import-not-at-top
  from fgjax import config_lib  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name, config.model.backbone, config.model.dtype = name, backbone, dtype
  config.data.image_size = image_size
  model, schedule, tx = train.build_model_and_optimizer(config, num_classes, steps_per_epoch=100)
  state = ts.create_train_state(model, tx, jax.random.key(0), image_size)
  state = parallel.replicate(state)
  p_train = parallel.map(functools.partial(ts.train_step, model=model, tx=tx, schedule=schedule,
                                           rng=jax.random.key(1)), donate_state=True)
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
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  global_batch = batch_size * parallel.num_local_devices
  return {
      'mode': 'train', 'model': name, 'backbone': backbone, 'image_size': image_size,
      'dtype': dtype, 'devices': parallel.num_local_devices,
      'device_kind': parallel.local_devices[0].device_kind, 'batch_per_device': batch_size,
      'steps': steps, 'warmup': warmup, 'compile_s': compile_s, 'step_s_median': step_s,
      'step_s_min': min(times), 'images_per_s': global_batch / step_s,
      'flops_per_device_step': float(cost.get('flops', 0.0)),
      'xla_memory_bytes': (memory.argument_size_in_bytes + memory.output_size_in_bytes
                           + memory.temp_size_in_bytes - memory.alias_size_in_bytes
                           if memory is not None else None),
      'peak_memory_bytes': _peak_memory_bytes(parallel.local_devices),
      'loss_finite': bool(np.isfinite(parallel.to_host(metrics)['loss']))}


def benchmark_train(model_names: Sequence[str], *, backbone: str, image_size: int,
                    batch_size: int, dtype: str, steps: int, warmup: int, num_classes: int = 200,
                    devices=None) -> list[dict]:
  """Train-step time of each model on all local devices (pmap), against resnet's.

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
      records.append({'mode': 'train', 'model': name,
                      'skipped': f'not in fgjax.models.MODELS {sorted(models.MODELS)}'})
      continue
    records.append(_time_train_step(
        name, backbone=backbone, image_size=image_size, batch_size=batch_size, dtype=dtype,
        steps=steps, warmup=warmup, num_classes=num_classes, parallel=parallel))
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

def _int_list(value) -> list[int]:
  return [int(v) for v in (value.split(',') if isinstance(value, str) else value)]


def _str_list(value) -> list[str]:
  return [v.strip() for v in value.split(',')] if isinstance(value, str) else list(value)


def data_mode(*, dataset, data_dir, split, builder_config, workers, batch_size, num_batches,
              warmup_batches, image_size, resize_size) -> list[dict]:
  source = open_source(dataset, data_dir, split, builder_config)
  return benchmark_data(source, workers=_int_list(workers), batch_size=batch_size,
                        num_batches=num_batches, warmup_batches=warmup_batches,
                        image_size=image_size, resize_size=resize_size)


def decode_mode(*, dataset, data_dir, split, builder_config, image_size,
                resize_size) -> list[dict]:
  return benchmark_decode(open_source(dataset, data_dir, split, builder_config),
                          image_size=image_size, resize_size=resize_size)


def train_mode(*, models, backbone, image_size, batch_size, dtype, steps, warmup) -> list[dict]:
  return benchmark_train(_str_list(models), backbone=backbone, image_size=image_size,
                         batch_size=batch_size, dtype=dtype, steps=steps, warmup=warmup)


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


def benchmark_fft(scales: Sequence[int], *, channels: int, batch_size: int,
                  repeats: int) -> list[dict]:
  """Circulant ridge regression: the Fourier solver against the explicit dense solve.

  Both are jitted (fgjax.ops.scale_mining.ridge_filter_fft / ridge_filter_dense)
  on `batch_size` problems of S scales x `channels`; each record has the median of
  `repeats` timed calls per S. The last record summarises: the first S where the
  FFT is faster (crossover) and the log-log growth exponent of each solver's time
  over the largest half of the S range.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fgjax.ops import scale_mining  # pylint: disable=g-import-not-at-top
  solvers = {'fft': jax.jit(scale_mining.ridge_filter_fft, static_argnums=2),
             'dense': jax.jit(scale_mining.ridge_filter_dense, static_argnums=2)}
  rng = np.random.default_rng(0)
  records = []
  for s in scales:
    x = jnp.asarray(rng.normal(size=(batch_size, s, channels)), jnp.float32)
    y = jnp.asarray(scale_mining.gaussian_shift_target(s, 0.5), jnp.float32)
    record = {'mode': 'fft', 'scales': s, 'channels': channels, 'batch_size': batch_size}
    for name, fn in solvers.items():
      fn(x, y, 1e-2).block_until_ready()  # Compile.
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x, y, 1e-2).block_until_ready()
        times.append(time.perf_counter() - t0)
      record[f'{name}_ms'] = 1e3 * statistics.median(times)
    record['speedup'] = record['dense_ms'] / record['fft_ms']
    records.append(record)
  faster = [r['scales'] for r in records if r['speedup'] > 1]
  summary = {'mode': 'fft', 'scales': 'summary', 'crossover_scales': faster[0] if faster else None}
  big = records[len(records) // 2:]
  if len(big) >= 2:
    log_s = np.log([r['scales'] for r in big])
    for name in solvers:
      summary[f'{name}_growth_exponent'] = float(np.polyfit(log_s, np.log([r[f'{name}_ms']
                                                                           for r in big]), 1)[0])
  return records + [summary]


def fft_mode(*, scales, channels, batch_size, repeats) -> list[dict]:
  return benchmark_fft(_int_list(scales), channels=channels, batch_size=batch_size,
                       repeats=repeats)


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
_FFT_COLUMNS = (('S', 'scales', 's'), ('FFT ms', 'fft_ms', '.3f'), ('dense ms', 'dense_ms', '.3f'),
                ('dense/FFT', 'speedup', '.2f'), ('crossover S', 'crossover_scales', 'd'),
                ('FFT growth', 'fft_growth_exponent', '.2f'),
                ('dense growth', 'dense_growth_exponent', '.2f'))
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
    'fft': Mode(fft_mode, {'scales': '4,8,16,32,64,128,256', 'channels': 256, 'batch_size': 16,
                           'repeats': 20}, _FFT_COLUMNS),
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
          'pillow': PIL.__version__, 'time': time.strftime('%Y-%m-%d %H:%M:%S')}


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
