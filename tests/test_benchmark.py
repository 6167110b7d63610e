"""benchmark_lib and benchmark_input on tiny inputs: record fields and counts, never timings."""

import json

import jax
import numpy as np
import pytest

from fgjax import benchmark_input
from fgjax import benchmark_lib
from fgjax import benchmark_memory


@pytest.fixture(scope='module')
def tiny_source():
  return benchmark_input.SyntheticJpegSource(num_images=4, size=(40, 30), num_classes=3)


def test_synthetic_source_is_deterministic_photo_like_jpeg(tiny_source):
  again = benchmark_input.SyntheticJpegSource(num_images=4, size=(40, 30), num_classes=3)
  assert tiny_source.images == again.images
  example = tiny_source[3]
  assert example['image'][:2] == b'\xff\xd8' and example['crop_bottom'] == 0
  assert example['label'] == 0  # 3 % 3.
  photo = benchmark_input.synthetic_photo(np.random.default_rng(0), 64, 48)
  assert photo.shape == (48, 64, 3) and photo.dtype == np.uint8
  assert photo.std() > 20  # Textured content, not a solid colour.


def test_data_mode_counts(tiny_source):
  records = benchmark_input.benchmark_data(tiny_source, workers=[0], batch_size=2, num_batches=2,
                                         warmup_batches=1, image_size=32, resize_size=36)
  (r,) = records
  assert r['mode'] == 'data' and r['workers'] == 0
  assert r['images'] == 2 * 2  # batches x batch size.
  assert r['image_shape'] == (32, 32, 3)
  assert r['images_per_s'] > 0 and r['seconds'] > 0
  assert r['images_per_s_per_process'] == r['images_per_s']  # 0 workers: one process.
  assert r['cpu_s'] >= 0


def test_decode_mode_pipeline_matches_full_resize(tiny_source):
  records = benchmark_input.benchmark_decode(tiny_source, image_size=32, resize_size=36,
                                           min_seconds=0.0, max_images=2)
  assert [r['stage'] for r in records][-1] == 'train_transform (pipeline)'
  assert all(r['images'] == 1 for r in records)
  assert records[-1]['max_abs_diff'] <= 1  # Fixed-point rounding only.
  assert records[0]['encoded_size'] == records[0]['draft_decoded_size'] == (40, 30)


def test_train_mode_records_and_resnet_ratios():
  records = benchmark_lib.benchmark_train(
      ['resnet', 'no_such_model'], backbone='resnet_tiny', image_size=32, batch_size=1,
      dtype='float32', steps=1, warmup=0)
  resnet, skipped = records
  assert 'not in fgjax.models.MODELS' in skipped['skipped']
  assert resnet['devices'] == jax.local_device_count()
  assert resnet['flops_per_device_step'] > 0
  assert resnet['time_ratio'] == resnet['flop_ratio'] == 1.0
  assert resnet['overhead_vs_flop_prediction'] == 0.0
  assert resnet['images_per_s'] == pytest.approx(
      resnet['devices'] * resnet['batch_per_device'] / resnet['step_s_median'])
  assert resnet['compile_s'] > 0 and resnet['loss_finite']
  assert resnet['xla_memory_bytes'] > 0
  table = benchmark_lib.format_table(records)
  assert 'skipped no_such_model' in table and 'resnet' in table
  json.dumps(records)  # JSON-lines ready.


def test_ratios_against_resnet_by_hand():
  records = [{'model': 'nts', 'step_s_median': 3.0, 'flops_per_device_step': 2e9},
             {'model': 'resnet', 'step_s_median': 2.0, 'flops_per_device_step': 1e9},
             {'model': 'nope', 'skipped': 'not measured'}]
  nts, resnet, skipped = benchmark_lib.add_resnet_ratios(records)
  # 1.5x the time for 2x the FLOPs: 25 % below the FLOP-proportional prediction.
  assert (nts['time_ratio'], nts['flop_ratio']) == (1.5, 2.0)
  assert nts['overhead_vs_flop_prediction'] == pytest.approx(-0.25)
  assert resnet['overhead_vs_flop_prediction'] == 0.0 and 'time_ratio' not in skipped
  alone = benchmark_lib.add_resnet_ratios([{'model': 'fdl', 'step_s_median': 1.0,
                                            'flops_per_device_step': 1.0}])
  assert alone[0]['time_ratio'] is alone[0]['overhead_vs_flop_prediction'] is None


def test_run_mode_rejects_unknown_modes_and_options():
  with pytest.raises(benchmark_lib.OptionsError, match='valid modes'):
    benchmark_lib.run_mode('nope')
  with pytest.raises(benchmark_lib.OptionsError, match='does not take'):
    benchmark_lib.run_mode('data', {'models': 'resnet'})
  assert set(benchmark_lib.MODES) >= {'data', 'train', 'all'}


def test_fft_mode_records_every_scale_and_a_summary():
  records = benchmark_lib.run_mode('fft', {'scales': '4,5,8', 'channels': 3, 'batch_size': 2,
                                           'repeats': 1})
  rows = [r for r in records if r['mode'] == 'fft']
  assert [r['scales'] for r in rows] == [4, 5, 8, 'summary']
  for r in rows[:-1]:
    assert r['fft_ms'] > 0 and r['dense_ms'] > 0
    assert r['speedup'] == r['dense_ms'] / r['fft_ms']
  assert 'fft_growth_exponent' in rows[-1] and 'crossover_scales' in rows[-1]
  assert 'crossover S' in benchmark_lib.format_table(records)


def test_eval_mode_times_the_exact_evaluation_step():
  (machine, record) = benchmark_lib.run_mode('eval', {
      'models': 'resnet', 'backbone': 'resnet_tiny', 'image_size': 32, 'batch_size': 2,
      'steps': 2, 'warmup': 0})
  assert machine['mode'] == 'machine' and record['mode'] == 'eval'
  assert record['images_per_s'] == pytest.approx(
      record['devices'] * 2 / record['step_s_median'])
  assert record['loss_finite'] and record['compile_s'] > 0
  # The forward alone: fewer FLOPs than the train step of the same model and batch.
  train = benchmark_lib.benchmark_train(['resnet'], backbone='resnet_tiny', image_size=32,
                                        batch_size=2, dtype='float32', steps=1, warmup=0)[0]
  assert 0 < record['flops_per_device_step'] < train['flops_per_device_step'] / 2
  assert 'eval' in benchmark_lib.format_table([record])


def test_memory_mode_extrapolates_the_line_through_batch_1_and_2(monkeypatch):
  sizes = {1: 300 * 2**20, 2: 500 * 2**20}  # 100 MiB fixed, 200 MiB per image.
  def fake_prepare(name, *, batch_size, **unused):
    del unused
    return None, {'xla_memory_bytes': sizes[batch_size]}
  monkeypatch.setattr(benchmark_lib, 'prepare_train_step', fake_prepare)
  (record,) = benchmark_memory.benchmark_memory(['fdl'], backbone='resnet50', image_size=448,
                                             dtype='bfloat16', memory_gib=1.0)
  assert record['per_image_bytes'] == 200 * 2**20 and record['fixed_bytes'] == 100 * 2**20
  assert record['largest_batch_per_device'] == 4  # (1024 - 100) // 200.
  monkeypatch.undo()
  (real,) = benchmark_memory.benchmark_memory(['resnet'], backbone='resnet_tiny', image_size=32,
                                           dtype='float32', memory_gib=1.0)
  assert real['xla_batch2_bytes'] > real['xla_batch1_bytes'] > 0
  assert real['largest_batch_per_device'] == (2**30 - real['fixed_bytes']) // real['per_image_bytes']
