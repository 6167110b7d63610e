"""Input-pipeline benchmarks (`launch/benchmark.py --mode=data|decode`).

`benchmark_data` measures the whole grain train pipeline (images/s and CPU use per
worker count); `benchmark_decode` the single-thread cost of each stage of the train
transform. Both read a prepared TFDS data set or, by default, `SyntheticJpegSource`:
JPEG photos shaped like CUB's, generated in memory. Mode wiring and tables:
fgjax.benchmark_lib.
"""

import io
import os
import time
from typing import Sequence

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
