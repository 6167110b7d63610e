"""ResNet weights as timm, the Hugging Face hub and training scripts store them.

torchvision's `resnet50-0676ba61.pth` is a bare state dict. The same network's weights
also come as:

  * timm's files on the Hugging Face hub (e.g. `timm/resnet50.a1_in1k`):
    `model.safetensors` (`load_safetensors`) and `pytorch_model.bin`, both
    `model.state_dict()` of timm's `ResNet`, whose keys and shapes are torchvision's
    (conv1, bn1, layer{s}.{b}.conv{i}, downsample.0/1, fc). Beside them a `config.json`
    names the architecture and the input mean/std the weights expect (`check_hub_config`).
  * a checkpoint of a training script: timm's train.py writes {'epoch', 'arch',
    'optimizer', 'args', 'state_dict', 'state_dict_ema', 'metric', ...}, torchvision's
    reference train.py {'model', 'model_ema', 'optimizer', 'lr_scheduler', 'args', ...}.
    The state dict is taken from the first of `WRAPPER_KEYS` present, EMA weights
    first, as timm's own loader does.
  * keys prefixed 'module.' (DataParallel, DistributedDataParallel, torchvision's EMA)
    or '_orig_mod.' (torch.compile), which timm strips too; torchvision's EMA adds a
    counter 'n_averaged', dropped here.

Other timm ResNets are other networks: a deep 3x3 stem ('conv1.0/1/3/4/6': resnet50c,
d, s, t), average-pool shortcuts ('downsample.1/2': *d, *t), SE or ECA attention
('se.*'), grouped (ResNeXt) or wider bottlenecks, GroupNorm (resnet50_gn), or the
pre-activation ResNetV2 ('stem.conv', 'stages.N.blocks.M'). `describe_layout` names
them, so that such a file is refused as what it is. resnetblur50 and resnetaa50 have
resnet50's very keys and shapes (their filters hold no weights): only a checkpoint's
recorded model or the hub's config.json tells them apart, and both are checked where
present.
"""

import json
import math
import os
import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import safetensors
import safetensors.numpy

from fgjax.models.torch_pickle import PickledObject
from fgjax.models.torch_pickle import WeightFileError

# Where a training checkpoint keeps the weights, in the order timm's loader looks.
WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
_PREFIXES = ('module.', '_orig_mod.')
_DROPPED = ('n_averaged',)  # torch.optim.swa_utils.AveragedModel's update count.
# Class names a wrapped model records as its 'arch' (DDP, DataParallel, torch.compile).
_WRAPPER_CLASSES = ('distributeddataparallel', 'dataparallel', 'optimizedmodule')
# The input statistics fgjax normalises with (fgjax.train_step.MEAN_RGB / 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's names of the plain layout (and their deprecated aliases); 'resnet' is what
# timm's train.py records when it knows only the class.
_PLAIN_NAMES = re.compile(r'((tv_|ssl_|swsl_)?resnet\d+|gluon_resnet\d+_v1b|resnet)')
PLAIN_LAYOUT = ("the plain ResNet layout of fgjax's backbone (torchvision's resnet18/34/50/"
                "101, timm's resnet50.*: a 7x7 stem 'conv1', blocks 'layer{s}.{b}.conv{i}', "
                "1x1 convolution shortcuts 'downsample.0/1')")
# model_args of a hub config.json that leave the weights' layout as it is.
_HARMLESS_MODEL_ARGS = {'num_classes', 'global_pool', 'drop_rate', 'drop_path_rate',
                        'drop_block_rate', 'in_chans'}
# Bytes per element of the safetensors dtypes NumPy can hold; the package's own limit.
_SAFETENSORS_ITEMSIZE = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4,
                         'I16': 2, 'I8': 1, 'U8': 1, 'BOOL': 1}
_SAFETENSORS_MAX_HEADER = 100_000_000
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((2, 2, 2, 2), True): 26,
           ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152,
           ((3, 24, 36, 3), True): 200}


class Selected(NamedTuple):
  """The state dict found in a file's top-level object, and what the file says of it."""
  state_dict: dict
  entry: str | None  # The training checkpoint's key it came from; None for a bare one.
  arch: str | None  # The model the checkpoint records (args.model, else 'arch').


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
  return Selected(checkpoint[entry], entry, _recorded_model_name(checkpoint))


def _recorded_model_name(checkpoint: dict) -> str | None:
  """The model a training checkpoint was made with: its command line's --model first.

  timm's train.py records 'arch' as the model's class name ('resnet' for every timm
  ResNet, 'distributeddataparallel' when wrapped), so its args.model says more;
  PyTorch's ImageNet example records only 'arch' ('resnet50').
  """
  args = checkpoint.get('args')
  if isinstance(args, PickledObject) and isinstance(args.state, dict):
    model = args.state.get('model', args.state.get('arch'))
    if isinstance(model, str) and model:
      return model
  arch = checkpoint.get('arch')
  return arch if isinstance(arch, str) and arch.lower() not in _WRAPPER_CLASSES else None


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
  """The shape of an array, or of anything with a `.shape` (jax.ShapeDtypeStruct)."""
  if key not in state_dict:
    return None
  return tuple(getattr(state_dict[key], 'shape', None) or np.shape(state_dict[key]))


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
  if bottleneck and conv2 and conv3 and 0 < conv2[1] < conv2[0] and not conv2[0] % conv2[1]:
    groups = conv2[0] // conv2[1]
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
  has_stem = any(k.startswith(('conv1.', 'bn1.')) for k in keys)
  if not has_stem or not all(_blocks(state_dict)):
    return f"no torchvision/timm ResNet (no 'conv1' and 'layer1..4' keys; it has {keys[:5]})"
  features, name = _variant_features(state_dict)
  if not features:
    return None
  return f"a ResNet variant, timm's {name} layout: " + '; '.join(features)


def check_architecture_name(arch: str | None, source: str, what: str):
  """Refuses a recorded model name other than a plain ResNet's ('resnet50', ...).

  `arch` may carry a pretrained tag and a hub prefix: 'hf-hub:timm/resnet50.a1_in1k'.
  """
  if arch is None or _PLAIN_NAMES.fullmatch(arch.split('/')[-1].split('.')[0].lower()):
    return
  raise ValueError(f'{source}: {what} names the architecture {arch!r}, not {PLAIN_LAYOUT}. '
                   '(Names are checked because some, resnetblur50 and resnetaa50, have '
                   "resnet50's very keys and shapes.)")


def read_hub_config(folder: str) -> tuple[str, dict] | None:
  """(path, contents) of a timm `config.json` in `folder`; None where there is none.

  Hugging Face hub snapshots keep it next to model.safetensors. Other JSON files (a
  fgjax workdir's config.json: no 'architecture' and 'pretrained_cfg') do not count.
  """
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path) or os.path.getsize(config_path) > (1 << 20):
    return None
  try:
    with open(config_path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, ValueError):
    return None
  if (not isinstance(config, dict) or not isinstance(config.get('pretrained_cfg'), dict)
      or not isinstance(config.get('architecture'), str)):
    return None
  return config_path, config


def check_hub_config(path: str):
  """Checks a timm `config.json` beside `path`: architecture, model_args and mean/std."""
  found = read_hub_config(os.path.dirname(os.path.abspath(path)))
  if found is None:
    return
  config_path, config = found
  what = f"timm's {config_path}"
  check_architecture_name(config['architecture'], path, f"'architecture' of {what}")
  model_args = config.get('model_args') or {}
  changed = sorted(set(model_args) - _HARMLESS_MODEL_ARGS) if isinstance(
      model_args, dict) else ['(not a dict)']
  if changed:
    raise ValueError(f"{path}: 'model_args' of {what} builds {config['architecture']!r} with "
                     f"{', '.join(map(repr, changed))} set, which fgjax cannot check against "
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
        f"{path}: 'pretrained_cfg' of {what} says these weights expect inputs normalised "
        f"with 'mean' {mean} and 'std' {std}; fgjax normalises with ImageNet's mean "
        f'{IMAGENET_MEAN} and std {IMAGENET_STD} (fgjax.train_step.MEAN_RGB / STDDEV_RGB) '
        'and has no setting for others, so these weights would see inputs unlike those '
        'they were trained on.')


def _safetensors_header(path: str) -> dict:
  """The JSON header of a .safetensors file, each tensor's entry checked against the file.

  The format: a little-endian u64 header size, the header ({key: {'dtype', 'shape',
  'data_offsets': [begin, end)}}, '__metadata__'), then the data. The `safetensors`
  package checks this too, but its errors name no tensor.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    header_size = int.from_bytes(head, 'little') if len(head) == 8 else None
    if header_size is None or header_size > min(size - 8, _SAFETENSORS_MAX_HEADER):
      raise WeightFileError(
          f'{path}: not a safetensors file: its first 8 bytes declare a header of '
          f'{header_size} bytes, but the file holds {max(size - 8, 0)} after them.')
    raw = f.read(header_size)
  try:
    header = json.loads(raw)
  except ValueError as error:  # UnicodeDecodeError too.
    raise WeightFileError(f'{path}: its safetensors header is not JSON ({error}).') from error
  if not isinstance(header, dict):
    raise WeightFileError(f'{path}: its safetensors header is a {type(header).__name__}, '
                          'not an object of tensors.')
  data_size = size - 8 - header_size
  for key, entry in header.items():
    if key != '__metadata__':
      _check_safetensors_entry(f'{path}: tensor {key!r}', entry, data_size)
  return header


def _check_safetensors_entry(where: str, entry: Any, data_size: int):
  """One header entry: a known dtype, a shape whose bytes its data_offsets hold."""
  if not isinstance(entry, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(entry):
    raise WeightFileError(f"{where}: expected 'dtype', 'shape' and 'data_offsets' in the "
                          f'safetensors header, found {entry!r:.200}.')
  dtype, shape, offsets = entry['dtype'], entry['shape'], entry['data_offsets']
  if dtype not in _SAFETENSORS_ITEMSIZE:
    raise WeightFileError(f'{where}: dtype {dtype!r:.50} is not supported; expected one of '
                          f"{', '.join(_SAFETENSORS_ITEMSIZE)}.")
  is_count = lambda n: type(n) is int and 0 <= n < 2 ** 48  # pylint: disable=unidiomatic-typecheck
  if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
          and all(map(is_count, (*shape, *offsets))) and offsets[0] <= offsets[1]):
    raise WeightFileError(f'{where}: expected integer shape and data_offsets [begin, end) in '
                          f'[0, 2**48), found shape {shape!r:.100}, data_offsets '
                          f'{offsets!r:.100}.')
  if offsets[1] > data_size:
    raise WeightFileError(f'{where}: its data_offsets {offsets} reach past the {data_size} '
                          'bytes of data the file holds (truncated?).')
  needed = math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]
  if needed != offsets[1] - offsets[0]:
    raise WeightFileError(f'{where}: shape {tuple(shape)} of {dtype} needs {needed} bytes, but '
                          f'its data_offsets {offsets} hold {offsets[1] - offsets[0]}.')


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (plain tensors: no code in the format to run)."""
  _safetensors_header(path)
  try:
    return dict(safetensors.numpy.load_file(path))
  except (safetensors.SafetensorError, TypeError, ValueError, OSError) as error:
    raise WeightFileError(f'{path}: not a readable safetensors file '
                          f'({type(error).__name__}: {error!s:.300}).') from error
