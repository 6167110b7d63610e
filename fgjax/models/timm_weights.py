"""ResNet weights as timm, the Hugging Face hub and training scripts store them.

torchvision's `resnet50-0676ba61.pth` is a bare state dict. The same network's weights
also come as:

  * timm's files on the Hugging Face hub (e.g. `timm/resnet50.a1_in1k`):
    `model.safetensors` and `pytorch_model.bin`, both `model.state_dict()` of timm's
    `ResNet`, whose keys and shapes are torchvision's (conv1, bn1, layer{s}.{b}.conv{i},
    downsample.0/1, fc). Beside them a `config.json` names the architecture and the
    input mean/std the weights expect.
  * a checkpoint of a training script: timm's train.py writes {'epoch', 'arch',
    'optimizer', 'args', 'state_dict', 'state_dict_ema', 'metric', ...}, torchvision's
    reference train.py {'model', 'model_ema', 'optimizer', 'lr_scheduler', 'args', ...}.
    The state dict is taken from the first of `WRAPPER_KEYS` present, EMA weights
    first, as timm's own loader does.
  * keys prefixed 'module.' (DataParallel, DistributedDataParallel) or '_orig_mod.'
    (torch.compile), which timm strips too; torchvision's EMA adds a counter
    'n_averaged', dropped here.

Other timm ResNets are other networks: a deep 3x3 stem ('conv1.0/1/3/4/6': resnet50c,
d, s, t), average-pool shortcuts ('downsample.1/2': *d, *t), SE or ECA attention
('se.*'), grouped (ResNeXt) or wider bottlenecks, GroupNorm (resnet50_gn), or the
pre-activation ResNetV2 ('stem.conv', 'stages.N.blocks.M'). `describe_layout` names
them, so that such a file is refused as what it is. resnetblur50 and resnetaa50 have
resnet50's very keys and shapes (their filters hold no weights): only a checkpoint's
'arch' or the hub's config.json tells them apart, and both are checked where present.
"""

import json
import os
import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from fgjax.models.torch_pickle import PickledObject
from fgjax.models.torch_pickle import WeightFileError

# Where a training checkpoint keeps the weights, in the order timm's loader looks.
WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
_PREFIXES = ('module.', '_orig_mod.')
_DROPPED = ('n_averaged',)  # torch.optim.swa_utils.AveragedModel's update count.
# The input statistics fgjax normalises with (fgjax.train_step.MEAN_RGB / 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's names of the plain layout (and their deprecated aliases); 'resnet' is what
# timm's train.py records when it knows only the class.
_PLAIN_NAMES = re.compile(r'((tv_|ssl_|swsl_)?resnet\d+|gluon_resnet\d+_v1b|resnet)')
PLAIN_LAYOUT = ("the plain ResNet layout of fgjax's backbone (torchvision's resnet18/34/50/"
                "101, timm's resnet50.*: a 7x7 stem 'conv1', blocks 'layer{s}.{b}.conv{i}', "
                "1x1 convolution shortcuts 'downsample.0/1')")
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((2, 2, 2, 2), True): 26,
           ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152,
           ((3, 24, 36, 3), True): 200}


class Selected(NamedTuple):
  """The state dict found in a file's top-level object, and what the file says of it."""
  state_dict: dict
  entry: str | None  # The training checkpoint's key it came from; None for a bare one.
  arch: str | None  # The model name the checkpoint records ('arch', or args.model).


def select_state_dict(path: str, checkpoint: Any, is_tensor: Callable[[Any], bool]) -> Selected:
  """The state dict in `checkpoint`: itself, or a training checkpoint's (`WRAPPER_KEYS`)."""
  if not isinstance(checkpoint, dict):
    raise WeightFileError(f'{path}: expected a state dict (names -> tensors), '
                          f'found a {type(checkpoint).__name__}.')
  other = next(((k, v) for k, v in checkpoint.items() if not is_tensor(v)), None)
  if other is None:
    return Selected(checkpoint, None, None)
  entry = next((k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
  if entry is None:
    raise WeightFileError(
        f'{path}: expected a state dict (names -> tensors) or a training checkpoint with '
        f"one under {', '.join(map(repr, WRAPPER_KEYS))}, but {other[0]!r:.100} holds a "
        f'{type(other[1]).__name__}.')
  arch, args = checkpoint.get('arch'), checkpoint.get('args')
  if not isinstance(arch, str) and isinstance(args, PickledObject) and isinstance(
      args.state, dict):
    arch = args.state.get('model')
  return Selected(checkpoint[entry], entry, arch if isinstance(arch, str) else None)


def strip_wrapper_prefixes(state_dict: Mapping[str, Any], source: str) -> dict[str, Any]:
  """Keys without 'module.' / '_orig_mod.' prefixes, and without 'n_averaged'."""
  stripped, origin = {}, {}
  for key, value in state_dict.items():
    name = key
    while name.startswith(_PREFIXES):
      name = name.split('.', 1)[1]
    if name in _DROPPED:
      continue
    if name in stripped:
      raise ValueError(f'{source}: keys {origin[name]!r} and {key!r} are both {name!r} once '
                       f"their wrapper prefixes ({', '.join(_PREFIXES)}) are removed.")
    stripped[name], origin[name] = value, key
  return stripped


def _shape(state_dict, key) -> tuple[int, ...] | None:
  return tuple(np.shape(state_dict[key])) if key in state_dict else None


def _blocks(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
  """Blocks per stage of torchvision's names: (3, 4, 6, 3) for a ResNet-50."""
  return tuple(len({k.split('.')[1] for k in state_dict if k.startswith(f'layer{s}.')})
               for s in range(1, 5))


def layout_name(blocks: tuple[int, ...], bottleneck: bool, width: int = 64) -> str:
  """'resnet50' for (3, 4, 6, 3) bottleneck blocks of 64 base channels, and so on."""
  depth = _DEPTHS.get((tuple(blocks), bottleneck))
  name = (f'resnet{depth}' if depth else
          f"a ResNet of {'bottleneck' if bottleneck else 'basic'} blocks {tuple(blocks)}")
  return name if width == 64 else f'{name} of base width {width}'


def plain_layout(state_dict: Mapping[str, Any]) -> str | None:
  """The name of the torchvision-named ResNet in `state_dict` ('resnet50', ...), or None."""
  stem = _shape(state_dict, 'conv1.weight')
  if not all(_blocks(state_dict)) or stem is None:
    return None
  return layout_name(_blocks(state_dict), 'layer1.0.conv3.weight' in state_dict, stem[0])


def _variant_features(state_dict: Mapping[str, Any]) -> tuple[list[str], str]:
  """What sets a torchvision-named ResNet apart from the plain one, and timm's name."""
  keys, shape = list(state_dict), lambda key: _shape(state_dict, key)
  features, prefix, suffix = [], '', ''
  bottleneck = 'layer1.0.conv3.weight' in state_dict
  depth = _DEPTHS.get((_blocks(state_dict), bottleneck))
  name = f'resnet{depth or "N"}'
  planes = (shape('layer1.0.conv1.weight') or (0,))[0]
  if 'conv1.0.weight' in state_dict:
    widths = [(shape(f'conv1.{i}.weight') or (0,))[0] for i in (0, 3, 6)]
    features.append(f"a deep 3x3 stem 'conv1.0/1/3/4/6' of widths {widths}")
    suffix = 's' if widths[2] == 2 * planes else 'c'
    suffix = 't' if widths[0] != widths[1] else suffix
  if any(re.fullmatch(r'layer\d\.\d+\.downsample\.2\.weight', k) for k in keys):
    features.append("average-pool shortcuts 'downsample.1/2'")
    suffix = suffix if suffix == 't' else 'd'
  if any('.se.' in k for k in keys):
    eca = any('.se.conv.' in k for k in keys)
    features.append(f"{'ECA' if eca else 'squeeze-excitation'} attention "
                    "'layer{s}.{b}.se.*'")
    prefix = 'eca' if eca else 'se'
  conv2, conv3 = shape('layer1.0.conv2.weight'), shape('layer1.0.conv3.weight')
  if bottleneck and conv2 and conv3 and conv2[0] != conv2[1]:
    groups = conv2[0] // max(conv2[1], 1)
    features.append(f'grouped 3x3 convolutions ({groups} groups of {conv2[1]} channels)')
    name = name.replace('resnet', 'resnext') + suffix + f'_{groups}x{conv2[1]}d'
    suffix = ''
  elif bottleneck and conv2 and conv3 and conv2[0] * 4 != conv3[0]:
    features.append(f'{conv2[0] * 4 / conv3[0]:g}x wider bottlenecks')
    name = f'wide_{name}{suffix}_{conv2[0] * 4 // conv3[0]}'
    suffix = ''
  if 'bn1.weight' in state_dict and 'bn1.running_mean' not in state_dict:
    features.append('normalisation without running statistics (GroupNorm)')
    suffix += '_gn'
  if 'maxpool.0.weight' in state_dict:
    features.append("a convolution in place of the stem's max-pool ('maxpool.*')")
  return features, prefix + name + suffix


def describe_layout(state_dict: Mapping[str, Any]) -> str | None:
  """What non-plain network `state_dict` holds, from its keys and shapes; None if plain."""
  keys = list(state_dict)
  if any(k.startswith(('stem.', 'stages.')) for k in keys):
    if any(k.startswith('stages.') and '.blocks.' in k for k in keys):
      return ("a timm ResNetV2 (pre-activation blocks: 'stem.conv', "
              "'stages.N.blocks.M.norm1/conv1...', e.g. resnetv2_50, BiT)")
    return "a timm ByobNet-style network ('stem.*', 'stages.N.M.*', e.g. resnet51q)"
  if any(k.startswith(('embedder.', 'resnet.embedder.')) for k in keys):
    return ("a Hugging Face transformers ResNetModel ('embedder.*', 'encoder.stages.*', "
            'e.g. microsoft/resnet-50)')
  has_stem = 'conv1.weight' in state_dict or 'conv1.0.weight' in state_dict
  if not has_stem or not all(_blocks(state_dict)):
    return f"no torchvision/timm ResNet (no 'conv1' and 'layer1..4' keys; it has {keys[:5]})"
  features, name = _variant_features(state_dict)
  if not features:
    return None
  return f"a ResNet variant, timm's {name} layout: " + '; '.join(features)


def check_architecture_name(arch: str | None, source: str, what: str):
  """Refuses a recorded model name other than a plain ResNet's ('resnet50', ...)."""
  if arch is None or _PLAIN_NAMES.fullmatch(arch.split('.')[0]):
    return
  raise ValueError(f'{source}: {what} names the architecture {arch!r}, not {PLAIN_LAYOUT}. '
                   "(resnetblur50 and resnetaa50 even have resnet50's keys and shapes.)")


def check_hub_config(path: str):
  """Checks a timm `config.json` beside `path`: architecture, model_args and mean/std.

  Hugging Face hub snapshots keep it next to model.safetensors; other JSON files (not
  timm's: no 'architecture' and 'pretrained_cfg') are left alone.
  """
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
  if not os.path.isfile(config_path) or os.path.getsize(config_path) > (1 << 20):
    return
  try:
    with open(config_path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, ValueError):
    return
  if not isinstance(config, dict) or not isinstance(config.get('pretrained_cfg'), dict):
    return
  what = f'timm\'s {config_path}'
  if not isinstance(config.get('architecture'), str):
    return
  check_architecture_name(config['architecture'], path, what)
  if config.get('model_args'):
    raise ValueError(f'{path}: {what} builds {config["architecture"]!r} with model_args '
                     f'{config["model_args"]!r:.200}, which fgjax cannot check against '
                     f'{PLAIN_LAYOUT}.')
  cfg = config['pretrained_cfg']
  mean, std = cfg.get('mean', IMAGENET_MEAN), cfg.get('std', IMAGENET_STD)
  try:
    same = np.allclose(mean, IMAGENET_MEAN, atol=1e-4) and np.allclose(std, IMAGENET_STD,
                                                                         atol=1e-4)
  except (TypeError, ValueError):
    same = False
  if not same:
    raise ValueError(
        f'{path}: {what} says these weights expect inputs normalised with mean {mean} and '
        f'std {std}; fgjax normalises with ImageNet\'s mean {IMAGENET_MEAN} and std '
        f'{IMAGENET_STD} (fgjax.train_step.MEAN_RGB / STDDEV_RGB) and has no setting for '
        'others yet, so these weights would see inputs they were not trained on.')
