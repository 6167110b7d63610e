"""torchvision's ResNet (v1.5) in plain torch.nn, for fixtures and comparisons.

Module names, and so state-dict keys, are torchvision's: conv1, bn1, layer1..4
of BasicBlock/Bottleneck (conv{i}, bn{i}, downsample.0/.1), fc. `width`
scales the base 64 channels as in `fgjax.models.resnet.ResNet`.

  model = ResNet(Bottleneck, (3, 4, 6, 3))  # ResNet-50, torchvision's keys and shapes.

Needs torch (`pip install -e '.[compare]'`): the PyTorch side of
`launch/benchmark.py --mode=compare` (fgjax.benchmark_compare) and of the fixture
writer tests/data/make_pth_fixture.py. Nothing else in fgjax imports it.
"""

from typing import Sequence

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
    super().__init__()
    self.conv1 = _conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(out + residual)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided: v1.5) -> 1x1 x4 (ResNet-50/101)."""
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
    super().__init__()
    self.conv1 = _conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(out + residual)


class ResNet(nn.Module):
  """torchvision.models.ResNet's layout; `features` also returns every stage.

  Args:
    block: `BasicBlock` or `Bottleneck`.
    layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    width: multiplier on the base width of 64 channels.
    num_classes: outputs of `fc`.
  """

  def __init__(self, block, layers: Sequence[int], width: float = 1.0, num_classes: int = 1000):
    super().__init__()
    base = max(1, int(round(64 * width)))
    self.conv1 = nn.Conv2d(3, base, 7, 2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(base)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, padding=1)
    inplanes = base
    for i, num_blocks in enumerate(layers):
      planes, out = base * 2 ** i, base * 2 ** i * block.expansion
      blocks = []
      for b in range(num_blocks):
        stride = 2 if i > 0 and b == 0 else 1
        downsample = None
        if stride != 1 or inplanes != out:
          downsample = nn.Sequential(_conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
        blocks.append(block(inplanes, planes, stride, downsample))
        inplanes = out
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_stages = len(layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(inplanes, num_classes)
    for m in self.modules():  # torchvision's initialisation.
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{'stage1'.. [N, C, H, W], 'pooled' [N, C]}, as fgjax's backbone (in NCHW)."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    features = {}
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
      features[f'stage{i + 1}'] = x
    features['pooled'] = torch.flatten(self.avgpool(x), 1)
    return features

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc(self.features(x)['pooled'])


def resnet50(**kwargs) -> ResNet:
  return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


# fgjax.models.resnet.BACKBONES -> (block, blocks per stage, width), the same networks.
BACKBONES = {
    'resnet18': (BasicBlock, (2, 2, 2, 2), 1.0),
    'resnet34': (BasicBlock, (3, 4, 6, 3), 1.0),
    'resnet50': (Bottleneck, (3, 4, 6, 3), 1.0),
    'resnet101': (Bottleneck, (3, 4, 23, 3), 1.0),
    'resnet_tiny': (BasicBlock, (1, 1, 1, 1), 0.125),
}


def build(backbone: str, num_classes: int) -> ResNet:
  """The torch twin of fgjax's `resnet` model with backbone `backbone`."""
  if backbone not in BACKBONES:
    raise ValueError(f'No torch twin of backbone {backbone!r}; valid: {sorted(BACKBONES)}.')
  block, layers, width = BACKBONES[backbone]
  return ResNet(block, layers, width=width, num_classes=num_classes)
