"""grain pipelines: decoding, augmentation, sharding, resume and exact eval."""

import io
import itertools

import numpy as np
import PIL.Image
import pytest

from fgjax.data import pipeline


def _encode(img: PIL.Image.Image, fmt='PNG') -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


class ListSource:
  """In-memory source of solid-colour images whose red channel encodes the index."""

  def __init__(self, n, num_classes=4, size=(20, 16)):
    self.n, self.num_classes, self.size = n, num_classes, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    img = PIL.Image.new('RGB', self.size, (i % 256, 7, 9))
    return {'image': _encode(img), 'label': np.int32(i % self.num_classes), 'crop_bottom': 0}

  def labels(self):
    return np.arange(self.n, dtype=np.int32) % self.num_classes

  def __repr__(self):
    return f'ListSource({self.n})'


def _ids(batch):
  return batch['image'][..., 0, 0, 0].reshape(-1).astype(int)


@pytest.mark.parametrize('mode', ['L', 'CMYK', 'RGBA', 'P', 'I;16'])
def test_any_mode_decodes_to_rgb(mode):
  rgb = PIL.Image.new('RGB', (10, 8), (200, 100, 50))
  img = rgb.convert(mode) if mode != 'I;16' else PIL.Image.new('I;16', (10, 8), 300)
  fmt = 'JPEG' if mode in ('L', 'CMYK') else 'PNG'
  out = pipeline.decode_and_resize(_encode(img, fmt), 0, 12)
  assert out.shape == (12, 12, 3) and out.dtype == np.uint8
  expected = np.asarray(img.convert('RGB').resize((12, 12), PIL.Image.BILINEAR))
  np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=2)


def test_crop_bottom_removes_banner_rows():
  img = np.zeros((40, 30, 3), np.uint8)
  img[-10:] = 255  # A white banner of 10 rows.
  out = pipeline.decode_and_resize(_encode(PIL.Image.fromarray(img)), 10, 30)
  assert out.max() == 0


@pytest.mark.parametrize('mode,crop_bottom', [('RGB', 0), ('CMYK', 0), ('RGB', 20)])
def test_crop_window_resize_equals_full_resize_then_crop(mode, crop_bottom):
  rng = np.random.default_rng(0)
  # Smooth photo-like content (JPEG of pure noise would be a poor stand-in).
  base = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
  photo = PIL.Image.fromarray(base).resize((500, 375), PIL.Image.BICUBIC).convert(mode)
  data = _encode(photo, 'JPEG')
  full = pipeline.decode_and_resize(data, crop_bottom, 600)
  for top, left in [(0, 0), (152, 152), (37, 101)]:
    crop = pipeline.decode_resize_crop(data, crop_bottom, 600, top, left, 448)
    want = full[top:top + 448, left:left + 448].astype(int)
    diff = np.abs(crop.astype(int) - want)
    assert diff.max() <= 2 and np.mean(diff > 0) < 0.2  # Fixed-point rounding only.


def _noise_example(seed=0, size=(50, 37)):
  """An asymmetric image (random noise, PNG) as the pipeline reads it."""
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  return {'image': _encode(PIL.Image.fromarray(pixels)), 'label': 0, 'crop_bottom': 0}


def _full_resize(example, resize_size):
  """Reference: PIL's bilinear resize of the whole decoded image."""
  img = PIL.Image.open(io.BytesIO(example['image'])).convert('RGB')
  return np.asarray(img.resize((resize_size, resize_size), PIL.Image.BILINEAR), np.int32)


def test_eval_transform_is_full_resize_then_centre_crop():
  example, spec = _noise_example(), pipeline.ImageSpec(image_size=24, resize_size=32)
  full = _full_resize(example, 32)
  got = pipeline.eval_transform(spec)(example)['image'].astype(np.int32)
  assert np.abs(got - full[4:28, 4:28]).max() <= 1
  assert np.abs(got - full[:24, :24]).mean() > 20  # A corner crop would not pass.


def test_train_transform_crops_anywhere_and_flips_half_the_time():
  """Each augmented image is (up to PIL's +-1 rounding) one window of the full resize,
  mirrored or not; over 200 draws the windows spread and about half are mirrored."""
  example, spec = _noise_example(1), pipeline.ImageSpec(image_size=24, resize_size=32)
  full = _full_resize(example, 32)
  transform = pipeline.train_transform(spec)
  windows = {(t, l, f): (full[t:t + 24, l:l + 24, :][:, ::-1] if f else full[t:t + 24, l:l + 24])
             for t in range(9) for l in range(9) for f in (False, True)}
  found = []
  for i in range(200):
    got = transform(example, np.random.default_rng(i))['image'].astype(np.int32)
    key = min(windows, key=lambda k: np.abs(got - windows[k]).max())
    assert np.abs(got - windows[key]).max() <= 1, i
    found.append(key)
  flips = sum(f for _, _, f in found)
  assert 70 <= flips <= 130  # Binomial(200, 1/2): outside with probability < 1e-5.
  assert len({t for t, _, _ in found}) == 9 and len({l for _, l, _ in found}) == 9


def test_train_iterator_shapes_and_augmentation():
  spec = pipeline.ImageSpec(image_size=12, resize_size=16)
  it = pipeline.make_train_iterator(ListSource(40), spec, global_batch_size=8, seed=0,
                                    num_devices=4)
  batch = next(it)
  assert batch['image'].shape == (4, 2, 12, 12, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4, 2) and batch['mask'].shape == (4, 2)
  # One epoch (5 batches) visits every example once, in a shuffled order.
  ids = np.concatenate([_ids(batch)] + [_ids(next(it)) for _ in range(4)])
  assert sorted(ids) == list(range(40)) and list(ids) != list(range(40))


def test_the_seed_decides_the_order_and_each_epoch_reshuffles():
  spec = pipeline.ImageSpec(image_size=12, resize_size=16)
  def epochs(seed, n=2):
    it = pipeline.make_train_iterator(ListSource(40), spec, global_batch_size=8, seed=seed,
                                      num_devices=1)
    return [np.concatenate([_ids(next(it)) for _ in range(5)]) for _ in range(n)]
  first, again, other = epochs(0), epochs(0), epochs(1)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))   # Same seed, same order.
  assert sorted(other[0]) == list(range(40))
  assert list(first[0]) != list(other[0]) and list(first[1]) != list(other[1])
  assert list(first[0]) != list(first[1])   # The second epoch is another permutation.


def test_iterator_state_resumes_exactly():
  spec = pipeline.ImageSpec(image_size=8, resize_size=12)
  make = lambda: pipeline.make_train_iterator(ListSource(30), spec, global_batch_size=4,
                                              seed=3, num_devices=2)
  it = make()
  for _ in range(9):  # Past the first epoch (7 batches of 4 out of 30).
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = make()
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(5))):
    np.testing.assert_array_equal(want['image'], got['image'])
    np.testing.assert_array_equal(want['label'], got['label'])


def test_processes_get_disjoint_shards():
  spec = pipeline.ImageSpec(image_size=8, resize_size=8)
  seen = []
  for p in range(3):
    it = pipeline.make_train_iterator(ListSource(36), spec, global_batch_size=6, seed=0,
                                      num_devices=1, process_index=p, process_count=3)
    seen.append(set(np.concatenate([_ids(next(it)) for _ in range(6)])))  # One epoch.
  assert set.union(*seen) == set(range(36))
  assert sum(len(s) for s in seen) == 36


@pytest.mark.parametrize('process_count', [1, 3])
def test_eval_batches_cover_every_example_once(process_count):
  spec = pipeline.ImageSpec(image_size=8, resize_size=8)
  source = ListSource(37)
  counts = []
  all_ids = []
  for p in range(process_count):
    batches = list(pipeline.eval_batches(source, spec, global_batch_size=6 * process_count,
                                         num_devices=2, process_index=p,
                                         process_count=process_count))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (2, 3, 8, 8, 3)
      all_ids.extend(_ids(b)[b['mask'].reshape(-1) > 0])
      assert not _ids(b)[b['mask'].reshape(-1) == 0].any()  # Padding is zeros.
  assert len(set(counts)) == 1  # Same number of steps on every process.
  assert sorted(all_ids) == list(range(37))


def test_class_balanced_batches():
  spec = pipeline.ImageSpec(image_size=8, resize_size=8)
  source = ListSource(60, num_classes=10)
  it = pipeline.make_train_iterator(source, spec, global_batch_size=12, seed=0, num_devices=2,
                                    sampler='class_balanced', classes_per_batch=4)
  for _ in range(5):
    batch = next(it)
    labels = batch['label'].reshape(-1)
    ids = _ids(batch)
    np.testing.assert_array_equal(ids % 10, labels)  # Images belong to their labels.
    values, counts = np.unique(labels, return_counts=True)
    assert len(values) == 4 and (counts == 3).all()


def test_class_balanced_sampler_rejects_bad_p():
  spec = pipeline.ImageSpec(image_size=8, resize_size=8)
  with pytest.raises(ValueError, match='classes_per_batch=5'):
    pipeline.make_train_iterator(ListSource(20), spec, global_batch_size=12, seed=0,
                                 num_devices=1, sampler='class_balanced', classes_per_batch=5)


def test_batch_not_divisible_by_devices():
  spec = pipeline.ImageSpec(image_size=8, resize_size=8)
  with pytest.raises(ValueError, match=r'10.*4 local devices'):
    pipeline.make_train_iterator(ListSource(20), spec, global_batch_size=10, seed=0,
                                 num_devices=4)


def test_worker_processes_give_the_same_batches(demo_data_dir):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['pytest'])  # grain workers read absl flags.
  source = pipeline.TfdsSource('demo', demo_data_dir, 'train', 'tiny')
  spec = pipeline.ImageSpec(image_size=24, resize_size=28)
  kwargs = dict(global_batch_size=8, seed=5, num_devices=2)
  direct = pipeline.make_train_iterator(source, spec, num_workers=0, **kwargs)
  workers = pipeline.make_train_iterator(source, spec, num_workers=2, **kwargs)
  for a, b in itertools.islice(zip(direct, workers), 3):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
