"""grain input pipelines: files -> decoded, augmented, per-core batches.

Train: decode -> RGB -> drop the banner rows -> resize to `resize_size` square
-> random crop `image_size` -> random horizontal flip. Eval: the same resize,
then a centre crop. Images leave the pipeline as uint8 (normalisation happens
on the device, so the host moves 4x fewer bytes).

Batches are dicts of NumPy arrays shaped (local_devices, per_core_batch, ...):
  image [D, b, H, W, 3] uint8, label [D, b] int32, mask [D, b] float32
(mask is 1 for a real example and 0 for padding; only eval batches pad).

Every transform is a `MapDataset` step (index-addressable, seeded per element),
so the order and the augmentation of every example depend only on the seed and
the example's position: the iterator's state in a checkpoint resumes exactly with
the same number of worker processes (the state holds one entry per worker, so a rerun
may not change data.num_workers: config_lib.RERUN_MAY_CHANGE leaves it out).
"""

import dataclasses
import io
import os
import sys

import grain
import numpy as np
import PIL.Image

from fgjax.data import registry


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How images are resized and cropped."""
  image_size: int  # Side of the square crop fed to the model.
  resize_size: int  # Side of the square the decoded image is first resized to.


class TfdsSource:
  """Random-access source over a prepared fgjax TFDS data set, raw image bytes.

  Picklable (grain worker processes open their own reader) and with a stable
  repr (grain compares it when a checkpointed iterator is restored).
  """

  def __init__(self, name: str, data_dir: str, split: str, builder_config: str | None = None):
    self.name, self.data_dir, self.split = name, data_dir, split
    self.builder_config = builder_config or None
    self._source, self._data_path = None, None

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      builder = registry.get_builder(self.name, self.data_dir, builder_config=self.builder_config)
      self._source = builder.as_data_source(
          split=self.split, decoders={'image': tfds.decode.SkipDecoding()})
      self._data_path = os.fspath(builder.data_path)
    return self._source

  def __len__(self):
    return len(self._open())

  def __getitem__(self, index):
    record = self._open()[index]
    return {'image': record['image'], 'label': np.int32(record['label']),
            'crop_bottom': int(record['crop_bottom'])}

  def labels(self) -> np.ndarray:
    """All labels in record order (read once, then cached in the data set's own folder, so
    that a data set deleted and prepared anew, from other files or with other images
    skipped, never meets an earlier one's labels; a read-only data dir is not cached)."""
    self._open()
    cache = os.path.join(self._data_path, f'fgjax_labels_{self.split}.npy')
    if os.path.exists(cache):
      return np.load(cache)
    labels = np.array([self[i]['label'] for i in range(len(self))], np.int32)
    try:
      np.save(cache + '.tmp.npy', labels)
      os.replace(cache + '.tmp.npy', cache)
    except OSError:
      pass  # Read only: read again next time.
    return labels

  def __getstate__(self):
    return {**self.__dict__, '_source': None, '_data_path': None}

  def __repr__(self):
    return (f'TfdsSource(name={self.name!r}, data_dir={self.data_dir!r}, '
            f'split={self.split!r}, builder_config={self.builder_config!r})')


def _open_rgb(data: bytes, crop_bottom: int, resize_size: int) -> PIL.Image.Image:
  """Decoded RGB image with the banner rows removed."""
  img = PIL.Image.open(io.BytesIO(data))
  full_height = img.size[1]
  # JPEG: decode at a reduced scale when that is still at least the target
  # (only images over twice the resize size, e.g. some FGVC-Aircraft photos).
  img.draft('RGB', (resize_size, resize_size + crop_bottom))
  if img.mode != 'RGB':
    img = img.convert('RGB')
  if crop_bottom:
    rows = int(round(crop_bottom * img.size[1] / full_height))
    img = img.crop((0, 0, img.size[0], img.size[1] - rows))
  return img


def decode_and_resize(data: bytes, crop_bottom: int, resize_size: int) -> np.ndarray:
  """Encoded image -> RGB uint8 [resize_size, resize_size, 3] (bilinear)."""
  img = _open_rgb(data, crop_bottom, resize_size)
  return np.asarray(img.resize((resize_size, resize_size), PIL.Image.BILINEAR), dtype=np.uint8)


def decode_resize_crop(data: bytes, crop_bottom: int, resize_size: int, top: int, left: int,
                       size: int, flip: bool = False) -> np.ndarray:
  """`decode_and_resize(...)[top:top + size, left:left + size]`, resampling only the crop.

  PIL's `resize(box=...)` samples the source at the same points as a full
  resize followed by the crop, so the result equals it up to fixed-point
  rounding (+-1 on a few per cent of values; tested), for (size / resize_size)^2
  of the work: at 600 -> 448 the resize was most of the per-image cost.
  """
  img = _open_rgb(data, crop_bottom, resize_size)
  sx, sy = img.size[0] / resize_size, img.size[1] / resize_size
  box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
  img = img.resize((size, size), PIL.Image.BILINEAR, box=box)
  if flip:  # Mirrored left-right, in PIL: one copy fewer than in NumPy.
    img = img.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(img, dtype=np.uint8)


def train_transform(spec: ImageSpec):
  """Per-example random transform for `MapDataset.random_map`."""
  def transform(example, rng: np.random.Generator):
    top, left = rng.integers(0, spec.resize_size - spec.image_size + 1, size=2)
    img = decode_resize_crop(example['image'], example['crop_bottom'], spec.resize_size,
                             top, left, spec.image_size, flip=rng.random() < 0.5)
    return {'image': img, 'label': example['label'], 'mask': np.float32(1.0)}
  return transform


def eval_transform(spec: ImageSpec):
  """Per-example deterministic transform: resize and centre crop."""
  def transform(example):
    off = (spec.resize_size - spec.image_size) // 2
    img = decode_resize_crop(example['image'], example['crop_bottom'], spec.resize_size,
                             off, off, spec.image_size)
    return {'image': img, 'label': example['label'], 'mask': np.float32(1.0)}
  return transform


class ClassBalancedIndices(grain.MapDataset):
  """Infinite index stream of batches with P classes x K images each.

  Batch t draws P distinct classes and K images of each (with replacement only
  when a class has fewer than K images) from a generator seeded by (seed, t),
  so element i is a pure function of (seed, i): resumable and worker-agnostic.
  """

  def __init__(self, labels: np.ndarray, classes_per_batch: int, images_per_class: int,
               seed: int):
    super().__init__()
    self._members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    self._classes = np.array([c for c, m in enumerate(self._members) if len(m)])
    if classes_per_batch > len(self._classes):
      raise ValueError(f'data.classes_per_batch={classes_per_batch} exceeds the '
                       f'{len(self._classes)} classes present.')
    self._p, self._k, self._seed = classes_per_batch, images_per_class, seed

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, within = divmod(index, self._p * self._k)
    rng = np.random.default_rng([self._seed, batch])
    classes = rng.choice(self._classes, self._p, replace=False)
    picks = [rng.choice(self._members[c], self._k, replace=len(self._members[c]) < self._k)
             for c in classes]
    return int(picks[within // self._k][within % self._k])

  def __str__(self):
    return f'ClassBalancedIndices(P={self._p}, K={self._k}, seed={self._seed})'


def _to_device_layout(batch, num_devices: int):
  return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def make_train_iterator(source, spec: ImageSpec, *, global_batch_size: int, seed: int,
                        num_devices: int, process_index: int = 0, process_count: int = 1,
                        num_workers: int = 0, sampler: str = 'random',
                        classes_per_batch: int = 0):
  """Infinite, checkpointable iterator of train batches for this process.

  Args:
    source: random-access source (e.g. `TfdsSource`) of {'image', 'label', 'crop_bottom'}.
    spec: resize and crop sizes.
    global_batch_size: examples per step over all processes.
    seed: the data seed; with `sampler` it fixes order and augmentation.
    num_devices: local devices; batches are shaped (num_devices, per_core, ...).
    process_index, process_count: this process's shard of the data.
    num_workers: grain worker processes (0: decode in this process).
    sampler: 'random' (shuffled epochs) or 'class_balanced' (P x K batches).
    classes_per_batch: P for the class-balanced sampler (K = batch / P).
  """
  if global_batch_size % process_count:
    raise ValueError(f'Global batch size {global_batch_size} is not divisible by the '
                     f'process count {process_count}.')
  batch = global_batch_size // process_count
  if batch % num_devices:
    raise ValueError(f'Per-process batch size {batch} (global {global_batch_size}) is not '
                     f'divisible by the {num_devices} local devices.')
  if sampler == 'random':
    ds = grain.MapDataset.source(source)[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat(None)
  elif sampler == 'class_balanced':
    if not classes_per_batch or batch % classes_per_batch:
      raise ValueError(f'data.classes_per_batch={classes_per_batch} must divide the '
                       f'per-process batch size {batch}.')
    indices = ClassBalancedIndices(source.labels(), classes_per_batch,
                                   batch // classes_per_batch, seed * 1000003 + process_index)
    ds = indices.map(lambda i: source[i])
  else:
    raise ValueError(f"Unknown data.sampler {sampler!r}; valid: ['random', 'class_balanced'].")
  ds = ds.random_map(train_transform(spec), seed=seed + 1)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.map(lambda b: _to_device_layout(b, num_devices))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if num_workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def first_eval_examples(source, spec: ImageSpec, num: int):
  """(uint8 images [N, S, S, 3] as evaluation sees them, labels int [N]) of the first
  min(num, len(source)) examples: the pictures of TensorBoard and visualize.py."""
  transform = eval_transform(spec)
  examples = [transform(source[i]) for i in range(min(num, len(source)))]
  return (np.stack([e['image'] for e in examples]),
          np.array([int(e['label']) for e in examples]))


def eval_batches(source, spec: ImageSpec, *, global_batch_size: int, num_devices: int,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                 transform=None, image_shape=None):
  """Yields every example of `source` exactly once, in padded, masked batches.

  Each process reads a contiguous shard. All processes yield the same number of
  batches (collectives need every process in every step): short shards and the
  last batch are padded with zero images whose mask is 0. `transform` (default
  `eval_transform(spec)`) maps an example to {'image' of `image_shape` (default
  [S, S, 3]), 'label', 'mask'}: fgjax.evaluation gives each image several views.
  """
  batch = global_batch_size // process_count
  if batch % num_devices:
    raise ValueError(f'Per-process eval batch size {batch} is not divisible by the '
                     f'{num_devices} local devices.')
  n = len(source)
  bounds = np.linspace(0, n, process_count + 1).astype(int)
  start, stop = bounds[process_index], bounds[process_index + 1]
  max_shard = int(np.max(np.diff(bounds)))
  num_batches = -(-max_shard // batch)
  ds = grain.MapDataset.source(source)[start:stop].map(transform or eval_transform(spec))
  ds = ds.batch(batch, drop_remainder=False)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if num_workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  shape = image_shape or (spec.image_size, spec.image_size, 3)
  produced = 0
  for b in it_ds:
    produced += 1
    yield _to_device_layout(_pad(b, batch, shape), num_devices)
  for _ in range(num_batches - produced):
    yield _to_device_layout(_pad(None, batch, shape), num_devices)


def _pad(b, size: int, image_shape):
  """Pads a (possibly empty) batch dict to `size` examples with mask 0."""
  if b is None:
    b = {'image': np.zeros((0,) + image_shape, np.uint8), 'label': np.zeros((0,), np.int32),
         'mask': np.zeros((0,), np.float32)}
  n = len(b['label'])
  return {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
          for k, v in b.items()}
