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
Parameter names follow a fixed scheme (`stem_conv`, `stem_bn`,
`stage{s}_block{b}/conv{i}` ...) that `fgjax.models.pretrained` maps torchvision
weights onto.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

BN_EPSILON = 1e-5  # torchvision's value, so that converted weights behave alike.
BN_MOMENTUM = 0.9  # flax convention: running = momentum * running + (1 - momentum) * batch.
# 3x3 convolutions pad one pixel on every side, as torchvision does ('SAME' pads
# (0, 1) for a stride-2 convolution on an even size and would shift features).
PAD3 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  filters: int
  strides: int
  conv: Any
  norm: Any
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides, padding=PAD3, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=PAD3, name='conv2')(y)
    y = self.norm(name='bn2', scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50/101)."""
  filters: int
  strides: int
  conv: Any
  norm: Any
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), self.strides, padding=PAD3, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
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
  """
  stage_sizes: Sequence[int]
  block: Any = BottleneckBlock
  width: float = 1.0
  dtype: Any = jnp.float32
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, padding='SAME',
                             kernel_init=nn.initializers.variance_scaling(
                                 2.0, 'fan_out', 'normal'))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype,
                             axis_name=self.bn_axis_name if train else None)
    base = max(1, int(round(64 * self.width)))
    x = x.astype(self.dtype)
    x = conv(base, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    features = {}
    for s, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = (2, 2) if s > 0 and b == 0 else (1, 1)
        x = self.block(filters=base * 2 ** s, strides=strides, conv=conv, norm=norm,
                       name=f'stage{s + 1}_block{b + 1}')(x)
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
