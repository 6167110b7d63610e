"""Writes the real `torch.save` fixtures that tests/test_pth_fixture.py reads without torch.

Run once with torch installed, from the repository root:

  python tests/data/make_pth_fixture.py

Writes, next to this script:
  narrow_resnet.pth            torch.save(state_dict) (zip format, torch >= 1.6)
  narrow_resnet_legacy.pth     the same with _use_new_zipfile_serialization=False
  narrow_resnet_reference.npz  layout, torch version, a fixed NCHW input, torch's
                               eval-mode features of it, and every state-dict tensor
                               (via Tensor.numpy(), not via fgjax's reader)
  views.pth, views_legacy.pth  tensors as torch stores views: a transpose (strides), slices
                               (storage offsets), two views of one storage, and the
                               float16 / bfloat16 / int64 / bool storages
  views_reference.npz          their values (bfloat16 as float32, exactly)

The model is a bottleneck ResNet of torchvision's layout, 2 base channels wide
(fgjax width 1/32) with stages of (1, 3, 1, 1) blocks: every stage opens with a
downsample block, and stage 2's blocks 2 and 3 have the same shapes, so that a
reader mixing them up is caught by the numbers, not by a shape check.
BatchNorm affine parameters and running statistics are random, not identity.
"""

import os

import numpy as np
import torch

from fgjax import torch_resnet

HERE = os.path.dirname(os.path.abspath(__file__))

LAYERS = (1, 3, 1, 1)
WIDTH = 1 / 32  # 2 base channels: the three files stay ~250 KB together.
NUM_CLASSES = 5
INPUT_SHAPE = (2, 3, 40, 36)  # Not square; stride-2 layers see sizes 10, 9, 5 and 3.


def _randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator):
  """Non-identity BatchNorm: random scale, shift and running statistics."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=generator)
        m.bias.normal_(0.0, 0.2, generator=generator)
        m.running_mean.normal_(0.0, 0.5, generator=generator)
        m.running_var.uniform_(0.5, 2.0, generator=generator)
        m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))


def _views(generator: torch.Generator) -> dict:
  base = torch.randn(6, 5, generator=generator)
  return {
      'transposed': base.t(),                     # Strides (1, 5).
      'rows': base[2:4],                          # Offset 10, shares base's storage.
      'column': base[:, 3],                       # Offset 3, stride 5.
      'half': torch.randn(3, 2, generator=generator).half(),
      'bfloat16': torch.randn(4, generator=generator).bfloat16(),
      'int64': torch.randint(-5, 5, (2, 3), generator=generator),
      'bool': torch.rand(5, generator=generator) > 0.5,
  }


def _write_views(generator: torch.Generator):
  views = _views(generator)
  torch.save(views, os.path.join(HERE, 'views.pth'))
  torch.save(views, os.path.join(HERE, 'views_legacy.pth'),
             _use_new_zipfile_serialization=False)
  np.savez_compressed(os.path.join(HERE, 'views_reference.npz'),
                      **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
                         for k, v in views.items()})


def main():
  torch.manual_seed(0)
  generator = torch.Generator().manual_seed(1)
  model = torch_resnet.ResNet(torch_resnet.Bottleneck, LAYERS, width=WIDTH,
                              num_classes=NUM_CLASSES)
  _randomise_batchnorm(model, generator)
  model.eval()
  # Multiples of 1/16: exact in float32, and they compress well in the npz.
  images = torch.round(torch.randn(INPUT_SHAPE, generator=generator) * 16) / 16
  with torch.no_grad():
    features = model.features(images)
  state_dict = model.state_dict()

  torch.save(state_dict, os.path.join(HERE, 'narrow_resnet.pth'))
  torch.save(state_dict, os.path.join(HERE, 'narrow_resnet_legacy.pth'),
             _use_new_zipfile_serialization=False)
  reference = {
      'torch_version': np.array(torch.__version__),
      'layers': np.array(LAYERS),
      'width': np.array(WIDTH),
      'input': images.numpy(),
      **{f'features/{k}': v.numpy() for k, v in features.items()},
      **{f'state_dict/{k}': v.numpy() for k, v in state_dict.items()},
  }
  np.savez_compressed(os.path.join(HERE, 'narrow_resnet_reference.npz'), **reference)
  _write_views(torch.Generator().manual_seed(2))
  for name, value in features.items():
    print(f'{name}: {tuple(value.shape)}, std {value.std():.3f}, '
          f'zeros {(value == 0).float().mean():.2f}')
  print(f'torch {torch.__version__}: {len(state_dict)} tensors, '
        f'{sum(v.numel() for v in state_dict.values())} elements.')


if __name__ == '__main__':
  main()
