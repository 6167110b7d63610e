"""Backbone weights into fgjax models: from a torchvision state dict, and from the
best checkpoint of another fgjax run (of any method with the same backbone)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models import pretrained
from fgjax.models import resnet
from test_pretrained import _random_state_dict  # pylint: disable=g-bad-import-order
from test_pretrained import _torchvision_shapes
from test_pretrained import _write_state_dict


class _Classifier(nn.Module):
  """A backbone nested under 'backbone', as fgjax's models have it."""

  @nn.compact
  def __call__(self, x, train=False):
    features = resnet.ResNetTiny(name='backbone')(x, train)
    return nn.Dense(3, name='head')(features['pooled'])


def test_load_pretrained_backbone_replaces_only_the_backbone(tmp_path):
  model = _Classifier()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  state_dict = _random_state_dict(_torchvision_shapes((1, 1, 1, 1), bottleneck=False))
  path = tmp_path / 'tiny.pth'
  _write_state_dict(path, state_dict)
  loaded = pretrained.load_pretrained_backbone(path, variables)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
  assert loaded['params']['head'] is variables['params']['head']
  np.testing.assert_array_equal(loaded['params']['backbone']['stem_conv']['kernel'],
                                state_dict['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded['batch_stats']['backbone']['stage4_block1']['bn2']['mean'],
                                state_dict['layer4.0.bn2.running_mean'])
  # The input is left alone.
  assert not np.array_equal(variables['params']['backbone']['stem_conv']['kernel'],
                            loaded['params']['backbone']['stem_conv']['kernel'])
  with pytest.raises(KeyError, match=r"params/trunk.*\['backbone', 'head'\]"):
    pretrained.load_pretrained_backbone(path, variables, backbone_path='trunk')


def test_per_domain_statistics_all_start_from_the_pretrained_averages():
  from fgjax.models import nts  # pylint: disable=g-import-not-at-top
  model = nts.NTSNet(num_classes=3, backbone='resnet_tiny')  # Images and parts: 2 domains.
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  state_dict = _random_state_dict(_torchvision_shapes((1, 1, 1, 1), bottleneck=False))
  loaded = pretrained.load_pretrained_backbone(state_dict, variables)
  mean = loaded['batch_stats']['backbone']['stage2_block1']['bn1']['mean']
  assert mean.shape == (2, 16)
  for domain in range(2):
    np.testing.assert_array_equal(mean[domain], state_dict['layer2.0.bn1.running_mean'])


def _save_run(workdir, variables):
  """A fgjax workdir holding `variables` as its best checkpoint (what training writes)."""
  from fgjax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir.mkdir()
  (workdir / 'config.json').write_text('{}')
  ckpt = checkpoint.Checkpointer(str(workdir), keep=1)
  ckpt.save_best(7, {'params': variables['params'], 'batch_stats': variables['batch_stats'],
                     'step': np.int32(7)}, accuracy=0.5)
  ckpt.wait()
  ckpt.close()


def test_backbone_from_another_run_of_another_method(tmp_path):
  from fgjax.models import nts  # pylint: disable=g-import-not-at-top
  source = _Classifier().init(jax.random.key(1), jnp.zeros((1, 33, 33, 3)))
  # Distinct running averages, so that copying them is visible.
  source = {**source, 'batch_stats': jax.tree.map(
      lambda v: v + jnp.arange(v.shape[-1], dtype=v.dtype) + 0.5, source['batch_stats'])}
  _save_run(tmp_path / 'run', source)
  assert pretrained.is_fgjax_run(tmp_path / 'run')
  assert not pretrained.is_fgjax_run(tmp_path)
  target = nts.NTSNet(num_classes=3, backbone='resnet_tiny').init(
      jax.random.key(2), jnp.zeros((1, 64, 64, 3)))
  loaded = pretrained.load_backbone_from_run(tmp_path / 'run', target)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(target)
  for got, want in zip(jax.tree.leaves(loaded['params']['backbone']),
                       jax.tree.leaves(source['params']['backbone'])):
    np.testing.assert_array_equal(got, want)
  for name in ('navigator', 'fc', 'concat_fc', 'part_fc'):  # Not the backbone: untouched.
    for got, want in zip(jax.tree.leaves(loaded['params'][name]),
                         jax.tree.leaves(target['params'][name])):
      np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(loaded['batch_stats']['backbone']),
                       jax.tree.leaves(source['batch_stats']['backbone'])):
    assert got.shape == (2,) + want.shape  # Images and parts both start from the source.
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], want)


def test_backbone_from_a_run_with_another_backbone_is_refused(tmp_path):
  source = _Classifier().init(jax.random.key(1), jnp.zeros((1, 33, 33, 3)))
  _save_run(tmp_path / 'run', source)
  target = {'params': {'backbone': resnet.get_backbone('resnet18').init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False)['params']}}
  with pytest.raises(ValueError, match='run/best/7.*same model.backbone'):
    pretrained.load_backbone_from_run(tmp_path / 'run', target)
