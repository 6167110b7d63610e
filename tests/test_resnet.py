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


def _batchnorm_reference(x, scale, bias, running_mean, running_var, train, momentum=0.9,
                         eps=1e-5):
  """float64 BatchNorm: (output, new running mean, new running var)."""
  x = np.asarray(x, np.float64)
  if train:
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))  # Biased, as the running average uses.
    new_mean = momentum * running_mean + (1 - momentum) * mean
    new_var = momentum * running_var + (1 - momentum) * var
  else:
    mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
  return (x - mean) / np.sqrt(var + eps) * scale + bias, new_mean, new_var


@pytest.mark.parametrize('train', [True, False])
def test_batchnorm_matches_float64_formula(train):
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(4, 5, 6, 7)).astype(np.float32)
  scale, bias = rng.normal(size=7), rng.normal(size=7)
  stats = {'mean': rng.normal(size=7), 'var': rng.uniform(0.5, 2, size=7)}
  layer = resnet.BatchNorm(use_running_average=not train)
  variables = {'params': {'scale': jnp.asarray(scale, jnp.float32),
                          'bias': jnp.asarray(bias, jnp.float32)},
               'batch_stats': jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), stats)}
  out, mutated = layer.apply(variables, x, mutable=['batch_stats'])
  want, want_mean, want_var = _batchnorm_reference(x, scale, bias, stats['mean'],
                                                   stats['var'], train)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mutated['batch_stats']['mean'], want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mutated['batch_stats']['var'], want_var, rtol=1e-5, atol=1e-6)


def test_batchnorm_domains_keep_separate_running_averages():
  rng = np.random.default_rng(1)
  layer = resnet.BatchNorm(use_running_average=False, domains=2)
  x = rng.normal(5.0, 2.0, size=(8, 3, 3, 4)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x)
  assert variables['batch_stats']['mean'].shape == (2, 4)
  assert variables['params']['scale'].shape == (4,)  # Affine parameters are shared.
  _, mutated = layer.apply(variables, x, domain=1, mutable=['batch_stats'])
  _, want_mean, want_var = _batchnorm_reference(x, 1.0, 0.0, np.zeros(4), np.ones(4), True)
  np.testing.assert_array_equal(mutated['batch_stats']['mean'][0], np.zeros(4))
  np.testing.assert_allclose(mutated['batch_stats']['mean'][1], want_mean, rtol=1e-5)
  np.testing.assert_allclose(mutated['batch_stats']['var'][1], want_var, rtol=1e-5)
  # Evaluation in domain 0 ignores domain 1's statistics.
  evaluator = resnet.BatchNorm(use_running_average=True, domains=2)
  out = evaluator.apply({**variables, 'batch_stats': mutated['batch_stats']}, x, domain=0)
  np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5), rtol=1e-5)


def test_region_models_keep_image_and_part_statistics_apart():
  from fgjax.models import nts  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  for separate, shape in [(True, (2, 8)), (False, (8,))]:
    model = nts.NTSNet(num_classes=3, backbone='resnet_tiny', separate_part_stats=separate)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert variables['batch_stats']['backbone']['stem_bn']['mean'].shape == shape


@pytest.mark.parametrize('strides, size', [((1, 1), 6), ((2, 2), 6), ((2, 2), 7)])
def test_pointwise_conv_is_the_1x1_convolution(strides, size):
  """PointwiseConv against a float64 loop (y[n, i, j, o] = sum_c x[n, s i, s j, c] W[c, o]),
  and its output and gradients against nn.Conv's with the same kernel."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
  dot = resnet.PointwiseConv(3, (1, 1), strides)
  conv = nn.Conv(3, (1, 1), strides, padding='SAME', use_bias=False)
  variables = dot.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(variables, conv.init(jax.random.key(0), x))
  w = np.asarray(variables['params']['kernel'], np.float64)[0, 0]
  out = (size + 1) // 2 if strides[0] == 2 else size
  want = np.zeros((2, out, out, 3))
  for n in range(2):
    for i in range(out):
      for j in range(out):
        want[n, i, j] = x[n, i * strides[0], j * strides[1]].astype(np.float64) @ w
  np.testing.assert_allclose(dot.apply(variables, x), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-6)
  probe = rng.normal(size=want.shape).astype(np.float32)
  grads = [jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * probe), argnums=(0, 1))(variables, x)
           for m in (dot, conv)]
  chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet_tiny', 'resnet50'])
def test_pointwise_dot_backbone_equals_the_conv_backbone(name):
  """Same parameters, same features and gradients, whichever way 1x1 convolutions run."""
  x = np.random.default_rng(1).normal(size=(2, 40, 40, 3)).astype(np.float32)
  nets = [resnet.get_backbone(name, pointwise_conv=p) for p in resnet.POINTWISE_CONVS]
  variables = nets[0].init(jax.random.key(0), x, train=False)
  chex.assert_trees_all_equal_shapes(variables, nets[1].init(jax.random.key(0), x, train=False))
  outs = []
  for net in nets:
    def loss(params, net=net):
      features, _ = net.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(features['stage4'] ** 2), features
    grads, features = jax.grad(loss, has_aux=True)(variables['params'])
    outs.append((features, grads))
  chex.assert_trees_all_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_close(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-3)


def test_unknown_pointwise_conv_is_refused():
  with pytest.raises(ValueError, match="Unknown pointwise_conv 'matmul'; valid: \\['conv', 'dot'\\]"):
    resnet.get_backbone('resnet_tiny', pointwise_conv='matmul').init(
        jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
