"""launch/benchmark.py --mode=compare: alternate timing, records, and the torch twin."""

import functools
import importlib.util

import numpy as np
import pytest

from fgjax import benchmark_compare
from fgjax import benchmark_lib

HAS_TORCH = importlib.util.find_spec('torch') is not None


class _Clock:
  """A clock that each contender's call moves on by that contender's own duration."""

  def __init__(self):
    self.now, self.calls = 0.0, []

  def __call__(self):
    return self.now

  def contender(self, name, durations):
    durations = iter(durations)

    def step():
      self.calls.append(name)
      self.now += next(durations)
    return step


def test_alternate_timing_warms_up_then_takes_turns():
  clock = _Clock()
  steps = {'fgjax': clock.contender('fgjax', [9, 9, 1.0, 2.0, 3.0]),
           'nchw': clock.contender('nchw', [9, 9, 0.5, 0.25, 4.0])}
  times = benchmark_compare.alternate_timing(steps, steps=3, warmup=2, clock=clock)
  assert clock.calls == ['fgjax'] * 2 + ['nchw'] * 2 + ['fgjax', 'nchw'] * 3
  assert times == {'fgjax': [1.0, 2.0, 3.0], 'nchw': [0.5, 0.25, 4.0]}  # Warm-up untimed.


def test_compare_mode_options_and_unknown_layout():
  with pytest.raises(benchmark_lib.OptionsError, match=r"does not take \['models'\]"):
    benchmark_lib.run_mode('compare', {'models': 'nts'})
  with pytest.raises(ValueError, match=r"Unknown fgjax variants \['nchw'\]; valid: \['dot'"):
    benchmark_compare.compare_train(backbone='resnet_tiny', image_size=32, batch_size=2,
                                    dtypes=['float32'], layouts=['nchw'], steps=1, warmup=0,
                                    variants=['dot', 'nchw'])
  with pytest.raises(ValueError, match="Unknown torch layout 'nhwc'"):
    benchmark_compare.torch_train_step(backbone='resnet_tiny', image_size=32, batch_size=2,
                                       dtype='float32', layout='nhwc', num_classes=3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[compare]')")
def test_torch_twin_has_the_fgjax_backbone_shapes():
  """Every backbone's torch twin maps onto fgjax's variables, key for key and shape for
  shape (fgjax.models.pretrained's torchvision mapping refuses any difference)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fgjax import torch_resnet  # pylint: disable=g-import-not-at-top
  from fgjax.models import pretrained  # pylint: disable=g-import-not-at-top
  from fgjax.models import resnet  # pylint: disable=g-import-not-at-top
  for name in ('resnet_tiny', 'resnet18', 'resnet50'):
    init = functools.partial(resnet.get_backbone(name).init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    state_dict = {k: v.numpy() for k, v in torch_resnet.build(name, 5).state_dict().items()}
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    pretrained.torchvision_to_flax(state_dict, variables, name)  # Raises on any mismatch.


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -e '.[compare]')")
def test_compare_records_one_row_per_dtype_and_layout():
  records = benchmark_compare.compare_train(
      backbone='resnet_tiny', image_size=32, batch_size=2, dtypes=['float32', 'bfloat16'],
      layouts=['nchw', 'channels_last'], steps=2, warmup=1, num_classes=3,
      variants=list(benchmark_compare.VARIANTS))
  assert [(r['dtype'], r['torch_layout']) for r in records] == [
      ('float32', 'nchw'), ('float32', 'channels_last'),
      ('bfloat16', 'nchw'), ('bfloat16', 'channels_last')]
  for r in records:
    assert r['fgjax_over_torch'] == pytest.approx(r['fgjax_step_s'] / r['torch_step_s'])
    for v in benchmark_compare.VARIANTS:
      assert r[f'fgjax_{v}_over_torch'] == pytest.approx(
          r[f'fgjax_{v}_step_s'] / r['torch_step_s'])
    assert r['fgjax_images_per_s'] == pytest.approx(2 / r['fgjax_step_s'])
    assert r['fgjax_loss_finite'] and r['torch_device'] in ('cpu', 'cuda')
  # fgjax's steps are timed once per dtype, against each layout.
  assert records[0]['fgjax_step_s'] == records[1]['fgjax_step_s']
  for v in benchmark_compare.VARIANTS:
    assert records[0][f'fgjax_{v}_step_s'] == records[1][f'fgjax_{v}_step_s']
