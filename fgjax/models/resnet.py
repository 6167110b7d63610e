"""ResNet v1.5 backbones (He et al. 2016; stride on the 3x3 convolution).

The backbone returns a dict of stage features so that method heads can use the
pyramid:

  {'stage1': [B, H/4,  W/4,  C1],   # stride 4
   'stage2': [B, H/8,  W/8,  C2],   # stride 8
   'stage3': [B, H/16, W/16, C3],   # stride 16
   'stage4': [B, H/32, W/32, C4],   # stride 32
   'pooled': [B, C4]}               # global average pool of stage4, float32

Parameters are always float32; `dtype` sets the computation dtype (float32 or
bfloat16). BatchNorm's cross-device axis is the `bn_axis_name` argument: None
for per-device statistics, 'batch' to average them over the pmapped axis.

Statistics domains: the region models feed the same backbone whole images and
zoomed parts, whose activation statistics differ. With `bn_domains=2` every
BatchNorm keeps one set of running averages per domain (`mean`/`var` are
[2, C]) while the convolutions and the BatchNorm scale and bias stay shared;
`backbone(x, train, domain=1)` normalises and updates with domain 1. With the
default `bn_domains=1` the layers are plain BatchNorm ([C] statistics).

1x1 convolutions: `pointwise_conv='conv'` runs them as XLA convolutions, 'dot' as
matrix products over the channels of the (strided) input. The two compute the same
function with the same parameters (kernel [1, 1, C_in, C_out]); 'dot' is for speed on
XLA:CPU, where the kernel gradient of a 1x1 convolution runs several times slower as a
convolution than as the product x^T dy (launch/benchmark.py --mode=compare times the
whole train step both ways).

Parameter names follow a fixed scheme (`stem_conv`, `stem_bn`,
`stage{s}_block{b}/conv{i}` ...) that `fgjax.models.pretrained` maps torchvision
weights onto.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

BN_EPSILON = 1e-5  # torchvision's value, so that converted weights behave alike.
BN_MOMENTUM = 0.9  # flax convention: running = momentum * running + (1 - momentum) * batch.
# 3x3 convolutions pad one pixel on every side, as torchvision does ('SAME' pads
# (0, 1) for a stride-2 convolution on an even size and would shift features).
PAD3 = ((1, 1), (1, 1))
POINTWISE_CONVS = ('conv', 'dot')  # How 1x1 convolutions are computed (module docstring).


class PointwiseConv(nn.Module):
  """A 1x1 convolution (no bias) as a matrix product: y[n, i, j] = x[n, s i, s j] @ W.

  Its parameter is nn.Conv's: 'kernel' [1, 1, C_in, C_out]; so are its output and, up
  to float rounding, its gradients.
  """
  features: int
  kernel_size: Sequence[int] = (1, 1)
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    if tuple(self.kernel_size) != (1, 1):
      raise ValueError(f'PointwiseConv is 1x1 only, got kernel_size {self.kernel_size}.')
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    sy, sx = self.strides
    x = x[:, ::sy, ::sx, :].astype(self.dtype)
    return lax.dot_general(x, kernel[0, 0].astype(self.dtype), (((3,), (0,)), ((), ())))


def _conv_factory(pointwise_conv: str, **common):
  """`conv(features, kernel_size, strides=(1, 1), padding=..., name=...)`: nn.Conv, or
  PointwiseConv for a 1x1 kernel when `pointwise_conv` is 'dot'."""
  if pointwise_conv not in POINTWISE_CONVS:
    raise ValueError(f'Unknown pointwise_conv {pointwise_conv!r}; valid: {list(POINTWISE_CONVS)}.')

  def conv(features, kernel_size, strides=(1, 1), padding='SAME', name=None):
    if pointwise_conv == 'dot' and tuple(kernel_size) == (1, 1):
      return PointwiseConv(features, kernel_size, strides, dtype=common['dtype'],
                           kernel_init=common['kernel_init'], name=name)
    return nn.Conv(features, kernel_size, strides, padding=padding, use_bias=False, name=name,
                   **common)
  return conv


class BatchNorm(nn.Module):
  """BatchNorm over [..., C] with running statistics per domain (module docstring).

  Training: normalise with the batch's mean and biased variance (E[x^2] - E[x]^2,
  averaged over `axis_name` when given) and move the domain's running averages
  towards them with `momentum`; evaluation: normalise with the domain's running
  averages. Statistics, scale, bias and the affine map are float32 whatever the
  computation dtype; only the output is cast to `dtype`.
  """
  use_running_average: bool
  axis_name: Any = None
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = jnp.float32
  domains: int = 1
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x, domain: int = 0):
    if not 0 <= domain < self.domains:
      raise ValueError(f'BatchNorm domain {domain} out of range for {self.domains} domains.')
    c = x.shape[-1]
    shape = (c,) if self.domains == 1 else (self.domains, c)
    pick = (lambda v: v) if self.domains == 1 else (lambda v: v[domain])
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, shape, jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, shape, jnp.float32)
    scale = self.param('scale', self.scale_init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      mean, var = pick(running_mean.value), pick(running_var.value)
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean, mean_sq = jnp.mean(xf, axes), jnp.mean(xf * xf, axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean_sq = lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - mean * mean, 0.0)
      if not self.is_initializing():
        def update(old, new):
          moved = self.momentum * pick(old) + (1.0 - self.momentum) * new
          return moved if self.domains == 1 else old.at[domain].set(moved)
        running_mean.value = update(running_mean.value, mean)
        running_var.value = update(running_var.value, var)
    mul = scale * lax.rsqrt(var + self.epsilon)
    # The affine map runs in float32 and rounds once: the gradients of scale and bias are
    # then sums over the batch accumulated in float32, not in the computation dtype.
    return (x.astype(jnp.float32) * mul + (bias - mean * mul)).astype(self.dtype)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  filters: int
  strides: int
  conv: Any
  norm: Any
  expansion = 1

  @nn.compact
  def __call__(self, x, domain: int = 0):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=PAD3, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, domain))
    y = self.conv(self.filters, (3, 3), padding=PAD3, name='conv2')(y)
    y = self.norm(name='bn2', scale_init=nn.initializers.zeros)(y, domain)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual, domain)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50/101)."""
  filters: int
  strides: int
  conv: Any
  norm: Any
  expansion = 4

  @nn.compact
  def __call__(self, x, domain: int = 0):
    residual = x
    y = self.conv(self.filters, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, domain))
    y = self.conv(self.filters, (3, 3), self.strides, padding=PAD3, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y, domain))
    y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(y, domain)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual, domain)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet feature extractor.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: `BasicBlock` or `BottleneckBlock`.
    width: multiplier on the base width of 64 channels.
    dtype: computation dtype; parameters stay float32.
    bn_axis_name: pmap/shard_map axis over which BatchNorm averages its batch
      statistics, or None.
    bn_domains: sets of BatchNorm running statistics (module docstring).
    pointwise_conv: 'conv' or 'dot', how 1x1 convolutions run (module docstring).
  """
  stage_sizes: Sequence[int]
  block: Any = BottleneckBlock
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_axis_name: Any = None
  bn_domains: int = 1
  pointwise_conv: str = 'conv'

  @nn.compact
  def __call__(self, x, train: bool = False, domain: int = 0):
    conv = _conv_factory(self.pointwise_conv, dtype=self.dtype,
                         kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype,
                             axis_name=self.bn_axis_name if train else None,
                             domains=self.bn_domains)
    base = max(1, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    x = conv(base, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x, domain))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    features = {}
    for s, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = (2, 2) if s > 0 and b == 0 else (1, 1)
        x = self.block(filters=base * 2 ** s, strides=strides, conv=conv, norm=norm,
                       name=f'stage{s + 1}_block{b + 1}')(x, domain)
      features[f'stage{s + 1}'] = x
    features['pooled'] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return features

  @property
  def out_channels(self) -> int:
    """Channels of 'stage4' and 'pooled'."""
    base = max(1, int(round(64 * self.width)))
    return base * 2 ** (len(self.stage_sizes) - 1) * self.block.expansion


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=BottleneckBlock)
# One basic block per stage, 8 base channels: for tests and the demo.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block=BasicBlock, width=0.125)

BACKBONES = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet101': ResNet101,
    'resnet_tiny': ResNetTiny,
}


def get_backbone(backbone: str, **kwargs) -> ResNet:
  """Returns the backbone called `backbone` (a key of BACKBONES); kwargs go to ResNet."""
  if backbone not in BACKBONES:
    raise ValueError(f'Unknown backbone {backbone!r}; valid backbones: {sorted(BACKBONES)}.')
  return BACKBONES[backbone](**kwargs)
