"""ImageNet-pretrained ResNet weights (torchvision, timm) for `fgjax.models.resnet`.

No PyTorch is needed: `read_weight_file` (fgjax.models.weight_file) reads what
`torch.save` writes, either format, an `.npz` or a `.safetensors` file; a training
checkpoint's weights (EMA first) and timm's hub files are found by
fgjax.models.timm_weights; this module maps torchvision's names and layouts onto ours.

  variables = model.init(rng, images)
  variables = load_pretrained_backbone('resnet50-0676ba61.pth', variables)

Names, torchvision -> ours (conv kernels OIHW -> HWIO); timm's ResNet has the same:

  conv1.weight                      stem_conv/kernel
  bn1.{weight,bias}                 stem_bn/{scale,bias}                  params
  bn1.running_{mean,var}            stem_bn/{mean,var}                    batch_stats
  layer{s}.{b}.conv{i}.weight       stage{s}_block{b+1}/conv{i}/kernel
  layer{s}.{b}.bn{i}.*              stage{s}_block{b+1}/bn{i}/*
  layer{s}.{b}.downsample.0.weight  stage{s}_block{b+1}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*       stage{s}_block{b+1}/downsample_bn/*

`*.num_batches_tracked` and `fc.*` (the head is trained anew) are dropped, and so are
the 'module.' / '_orig_mod.' prefixes of wrapped models.
"""

import os
import re
from typing import Any, Mapping, Sequence

from flax import traverse_util
import jax
import numpy as np

from fgjax.models import timm_weights
from fgjax.models.weight_file import load_torch_state_dict  # pylint: disable=unused-import
from fgjax.models.weight_file import read_weight_file
from fgjax.models.weight_file import WeightFileError  # pylint: disable=unused-import

PathLike = str | os.PathLike


# Our leaf name -> torchvision's, per collection.
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
_BLOCK_MODULE = re.compile(r'stage(\d+)_block(\d+)/(conv[123]|bn[123]|downsample_(conv|bn))')
_IGNORED_KEYS = ('fc.weight', 'fc.bias')
# What a Hugging Face hub snapshot of timm holds, in the order they are read.
HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def torchvision_key(collection: str, path: Sequence[str]) -> str | None:
  """The torchvision state-dict key of our leaf `collection`/`path`, or None.

  E.g. ('params', ('stage2_block1', 'downsample_conv', 'kernel')) ->
  'layer2.0.downsample.0.weight'.
  """
  *module_path, leaf = path
  leaf_name = _LEAF_NAMES.get((collection, leaf))
  module = '/'.join(module_path)
  if leaf_name is None:
    return None
  if module in ('stem_conv', 'stem_bn'):
    return f"{'conv1' if module == 'stem_conv' else 'bn1'}.{leaf_name}"
  match = _BLOCK_MODULE.fullmatch(module)
  if match is None:
    return None
  stage, block, layer = match.group(1), int(match.group(2)), match.group(3)
  layer = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(layer, layer)
  return f'layer{stage}.{block - 1}.{layer}.{leaf_name}'


def _torch_shape(leaf) -> tuple[int, ...]:
  """The shape torchvision stores our leaf in: OIHW for a kernel (ours is HWIO)."""
  if len(leaf.shape) == 4:
    return (leaf.shape[3], leaf.shape[2], *leaf.shape[:2])
  return tuple(leaf.shape)


def _convert(key: str, value: np.ndarray, leaf) -> tuple[np.ndarray | None, str | None]:
  """Torch layout -> ours, cast to the leaf's dtype; or (None, why) on a bad shape."""
  value = np.asarray(value)
  if len(leaf.shape) == 2 and value.ndim == 1:
    # BatchNorm statistics kept per domain (resnet.BatchNorm, [domains, C]): every
    # domain starts from the pretrained averages.
    value = np.broadcast_to(value, (leaf.shape[0],) + value.shape)
  if value.shape != _torch_shape(leaf):
    return None, f'{key}: expected shape {_torch_shape(leaf)}, found {value.shape}'
  if len(leaf.shape) == 4:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  value = value.astype(leaf.dtype)
  if isinstance(leaf, jax.Array):  # Keep the placement of the variables we replace.
    return jax.device_put(value, leaf.sharding), None
  return value, None


def _layout_note(state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
  """What network the state dict holds, where its keys tell and it is not the model's."""
  variant = timm_weights.describe_layout(state_dict)
  model = timm_weights.plain_layout(expected) or 'plain ResNet'
  if variant:
    return (f'\n  It holds {variant}; the model is a {model}, '
            f'{timm_weights.PLAIN_LAYOUT}.')
  held = timm_weights.plain_layout(state_dict)
  if held and held != model:
    return f'\n  It holds a {held}; the model is a {model} (model.backbone).'
  return ''


def _listing(title: str, items) -> str:
  items = sorted(items)
  shown = ', '.join(items[:20]) + (f', ... ({len(items) - 20} more)' if len(items) > 20 else '')
  return f'\n  {title} ({len(items)}): {shown}'


def torchvision_to_flax(state_dict: Mapping[str, Any], variables: Mapping[str, Any],
                        source: str = 'The state dict'):
  """Returns `variables` of a `resnet.ResNet` with torchvision's weights in them.

  Args:
    state_dict: torchvision ResNet-18/34/50/101 {key: array}, e.g. from
      `load_torch_state_dict`. `fc.*` and `*.num_batches_tracked` are ignored.
    variables: {'params': ..., 'batch_stats': ...} of the backbone alone; the
      leaves may be arrays or `jax.ShapeDtypeStruct`s (only shape and dtype
      are read).
    source: what errors call the state dict, e.g. its file.

  Returns:
    New variables of the same structure and dtypes; each leaf comes from
    exactly one state-dict key. Raises ValueError naming every missing,
    unexpected or mis-shaped key, and every leaf with no torchvision counterpart.
  """
  flat = {(collection, *path): leaf for collection, tree in variables.items()
          for path, leaf in traverse_util.flatten_dict(tree).items()}
  keys = {}  # torchvision key -> our (collection, *path).
  unmapped = []
  for (collection, *path), leaf in flat.items():
    key = torchvision_key(collection, path)
    if key is None or key in keys:
      unmapped.append('/'.join((collection, *path)))
    else:
      keys[key] = (collection, *path)
  ignorable = set(_IGNORED_KEYS) | {
      k.rsplit('.', 1)[0] + '.num_batches_tracked' for k in keys if k.endswith('running_mean')}
  missing = [k for k in keys if k not in state_dict]
  unexpected = [k for k in state_dict if k not in keys and k not in ignorable]
  converted, bad_shapes = {}, []
  for key, path in keys.items():
    if key in state_dict:
      converted[path], why = _convert(key, state_dict[key], flat[path])
      if why:
        bad_shapes.append(why)
  if missing or unexpected or unmapped or bad_shapes:
    expected = {key: jax.ShapeDtypeStruct(_torch_shape(flat[path]), flat[path].dtype)
                for key, path in keys.items()}
    raise ValueError(
        f'{source} does not fit the ResNet variables:' +
        (_listing('missing keys', missing) if missing else '') +
        (_listing('unexpected keys', unexpected) if unexpected else '') +
        (_listing('mis-shaped keys', bad_shapes) if bad_shapes else '') +
        (_listing('leaves with no torchvision name', unmapped) if unmapped else '') +
        _layout_note(state_dict, expected))
  return traverse_util.unflatten_dict(converted)


def _subtree(tree: Mapping[str, Any], path: Sequence[str]):
  for name in path:
    if not isinstance(tree, Mapping) or name not in tree:
      return None
    tree = tree[name]
  return tree


def _replace_subtree(tree: Mapping[str, Any], path: Sequence[str], value):
  if not path:
    return value
  new = dict(tree)
  new[path[0]] = _replace_subtree(tree[path[0]], path[1:], value)
  return new


def hub_weight_file(folder: PathLike) -> str | None:
  """The weight file of a Hugging Face hub snapshot of a timm model; None if not one.

  The folder must hold timm's config.json (what `check_hub_config` reads) and one of
  `HUB_WEIGHT_FILES`.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder) or timm_weights.read_hub_config(folder) is None:
    return None
  return next((os.path.join(folder, name) for name in HUB_WEIGHT_FILES
               if os.path.isfile(os.path.join(folder, name))), None)


def read_backbone_state_dict(path: PathLike) -> tuple[dict[str, np.ndarray], str]:
  """The ResNet state dict in a weight file, and what errors are to call it.

  Args:
    path: a torchvision or timm weight file (.pth, .bin, .safetensors, .npz), a
      training checkpoint of timm's or torchvision's train.py (its EMA weights
      where it has them), or a Hugging Face hub snapshot folder of a timm model.

  Returns:
    ({torchvision key: array}, e.g. "ckpt.pth.tar (its 'state_dict_ema')"). The
    'module.' / '_orig_mod.' prefixes are stripped. Raises ValueError naming the file
    where a timm config.json beside it, or the model a training checkpoint records,
    is not a plain ResNet's (or the config's mean/std are not ImageNet's).
  """
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    if hub_weight_file(path) is None:
      raise FileNotFoundError(
          f'{path} is a folder, but no Hugging Face hub snapshot of a timm model: expected '
          f"timm's config.json and one of {', '.join(HUB_WEIGHT_FILES)} in it.")
    path = hub_weight_file(path)
  timm_weights.check_hub_config(path)  # Before reading: it may say why the file is wrong.
  weights = read_weight_file(path)
  timm_weights.check_architecture_name(weights.arch, path, 'the training checkpoint')
  name = path if weights.entry is None else f'{path} (its {weights.entry!r})'
  return timm_weights.strip_wrapper_prefixes(weights.state_dict, name), name


def load_pretrained_backbone(source: PathLike | Mapping[str, Any],
                             variables: Mapping[str, Any],
                             backbone_path: Sequence[str] | str = ('backbone',)):
  """Returns `variables` with the backbone's subtree replaced by pretrained weights.

  Args:
    source: a weight file or hub folder (see `read_backbone_state_dict`), or a
      state dict.
    variables: the whole model's variables, e.g. from `model.init`.
    backbone_path: names from a collection's root to the backbone ('a/b' or
      ('a', 'b')); () when `variables` are the backbone's own.

  Returns:
    New variables; everything outside the backbone is left as it was.
  """
  if isinstance(backbone_path, str):
    backbone_path = tuple(p for p in backbone_path.split('/') if p)
  backbone = {c: _subtree(t, backbone_path) for c, t in variables.items()}
  backbone = {c: t for c, t in backbone.items() if t is not None}
  if 'params' not in backbone:
    available = sorted(variables.get('params', {}))
    raise KeyError(f"No backbone at params/{'/'.join(backbone_path)}; the top-level "
                   f'params are {available}.')
  if isinstance(source, Mapping):
    name = 'The state dict'
    state_dict = timm_weights.strip_wrapper_prefixes(source, name)
  else:
    state_dict, name = read_backbone_state_dict(source)
  converted = torchvision_to_flax(state_dict, backbone, name)
  new = dict(variables)
  for collection, tree in converted.items():
    new[collection] = _replace_subtree(variables[collection], backbone_path, tree)
  return new


def is_fgjax_run(path: PathLike) -> bool:
  """Whether `path` is a fgjax workdir (a folder with config.json), not a weight file
  or a hub snapshot folder (whose config.json is timm's)."""
  path = os.path.expanduser(os.fspath(path))
  return (os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json'))
          and timm_weights.read_hub_config(path) is None)


def load_backbone_from_run(workdir: PathLike, variables: Mapping[str, Any]):
  """Returns `variables` with the 'backbone' taken from another fgjax run's checkpoint.

  The source run may be any method with the same backbone architecture, e.g. a demo
  `resnet` run whose backbone a region model then fine-tunes, the way the papers start
  from ImageNet weights. Its newest checkpoint is read (else its best one). BatchNorm
  running averages come from the source's image statistics (domain 0) and are copied
  into every statistics domain of the target, as for torchvision weights.
  """
  from fgjax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = os.path.expanduser(os.fspath(workdir))
  raw, where = checkpoint.restore_raw(workdir)
  new = dict(variables)
  for collection in ('params', 'batch_stats'):
    source = _subtree(raw.get(collection, {}), ('backbone',))
    target = _subtree(variables.get(collection, {}), ('backbone',))
    if target is None:
      continue
    if source is None:
      raise KeyError(f'{where}: no {collection}/backbone in the checkpoint; is it a run of a '
                     f'fgjax model?')
    src_flat = traverse_util.flatten_dict(source)
    tgt_flat = traverse_util.flatten_dict(target)
    missing = sorted(set(tgt_flat) - set(src_flat))
    extra = sorted(set(src_flat) - set(tgt_flat))
    if missing or extra:
      raise ValueError(f'{where}: the backbone differs from this model\'s ({collection}): '
                       f'missing {missing[:3]}, unexpected {extra[:3]} (same model.backbone?).')
    loaded = {}
    for key, want in tgt_flat.items():
      value = np.asarray(src_flat[key], dtype=want.dtype)
      if collection == 'batch_stats' and value.shape != want.shape:
        value = value if value.ndim == 1 else value[0]   # The source's image domain.
        value = np.broadcast_to(value, want.shape).copy()
      if value.shape != want.shape:
        raise ValueError(f'{where}: {collection}/backbone/{"/".join(key)} has shape '
                         f'{value.shape}, this model needs {tuple(want.shape)}.')
      loaded[key] = value
    new[collection] = _replace_subtree(variables[collection], ('backbone',),
                                       traverse_util.unflatten_dict(loaded))
  return new
