"""Backbone shapes, parameter counts and dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from fgjax.models import resnet


class _WithHead(nn.Module):
  backbone: str
  @nn.compact
  def __call__(self, x):
    f = resnet.get_backbone(self.backbone)(x)
    return nn.Dense(1000)(f['pooled'])


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name,expected', [
    # torchvision's published parameter counts with the 1000-class head.
    ('resnet50', 25_557_032), ('resnet18', 11_689_512), ('resnet34', 21_797_672),
    ('resnet101', 44_549_160)])
def test_parameter_count_matches_torchvision(name, expected):
  shapes = jax.eval_shape(_WithHead(name).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert _count(shapes['params']) == expected


def test_stage_strides_and_channels():
  model = resnet.ResNetTiny()
  x = jnp.zeros((2, 64, 96, 3))
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x)
  chex.assert_shape(out['stage1'], (2, 16, 24, 8))
  chex.assert_shape(out['stage2'], (2, 8, 12, 16))
  chex.assert_shape(out['stage3'], (2, 4, 6, 32))
  chex.assert_shape(out['stage4'], (2, 2, 3, model.out_channels))
  chex.assert_shape(out['pooled'], (2, model.out_channels))
  np.testing.assert_allclose(out['pooled'], out['stage4'].mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
  shapes = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert resnet.ResNet50().out_channels == 2048
  assert shapes['params']['stage4_block3']['conv3']['kernel'].shape == (1, 1, 512, 2048)


def test_bfloat16_computes_in_bf16_with_float32_params():
  model = resnet.ResNetTiny(dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out['stage4'].dtype == jnp.bfloat16
  assert out['pooled'].dtype == jnp.float32


def test_width_multiplier_scales_channels():
  model = resnet.ResNet18(width=0.5)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert shapes['params']['stem_conv']['kernel'].shape == (7, 7, 3, 32)
  assert model.out_channels == 256


def test_unknown_backbone_lists_valid_ones():
  with pytest.raises(ValueError, match='resnet50'):
    resnet.get_backbone('resnet49')
