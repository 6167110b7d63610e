"""ImageNet-pretrained torchvision ResNet weights for `fgjax.models.resnet`.

No PyTorch is needed. `load_torch_state_dict` reads what `torch.save` writes
(the zip format of PyTorch >= 1.6, and the older single-stream format of
torchvision's first ResNet files such as resnet50-19c8e357.pth) with a
restricted unpickler that turns tensors into NumPy arrays and refuses every
other global; it also reads an `.npz` holding the same keys.

  variables = model.init(rng, images)
  variables = load_pretrained_backbone('resnet50-0676ba61.pth', variables)

Names, torchvision -> ours (conv kernels OIHW -> HWIO):

  conv1.weight                      stem_conv/kernel
  bn1.{weight,bias}                 stem_bn/{scale,bias}                  params
  bn1.running_{mean,var}            stem_bn/{mean,var}                    batch_stats
  layer{s}.{b}.conv{i}.weight       stage{s}_block{b+1}/conv{i}/kernel
  layer{s}.{b}.bn{i}.*              stage{s}_block{b+1}/bn{i}/*
  layer{s}.{b}.downsample.0.weight  stage{s}_block{b+1}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*       stage{s}_block{b+1}/downsample_bn/*

`*.num_batches_tracked` and `fc.*` (the head is trained anew) are dropped.
"""

import collections
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Mapping, Sequence

from flax import traverse_util
import jax
import ml_dtypes
import numpy as np

PathLike = str | os.PathLike

_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
# The first three pickles of the pre-1.6 format: magic number, version, sys_info.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_VERSION = 1001
# torch pickles the magic number with protocol 2 as a 10-byte LONG1.
_LEGACY_HEADER = b'\x80\x02\x8a\x0a' + _LEGACY_MAGIC.to_bytes(10, 'little')


class _StorageType:
  """Stands in for the global `torch.<Name>Storage`; only its dtype matters."""

  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat typed buffer. `data` is set once its bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int, base=None, offset: int = 0):
    self.dtype, self.numel, self.base, self.offset = dtype, numel, base, offset
    self.data = None

  def array(self) -> np.ndarray:
    if self.base is not None:  # A view (old format): elements [offset, offset + numel).
      return self.base.array()[self.offset:self.offset + self.numel]
    return self.data


class _Tensor:
  """What `_rebuild_tensor_v2` returns: a strided view into a `_Storage`."""

  def __init__(self, storage, offset, shape, stride):
    self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _read_storage(raw: bytes, dtype: np.dtype, numel: int, little_endian: bool, where: str):
  """Decodes `numel` elements of `dtype` from `raw` into a native-order array."""
  if len(raw) < numel * dtype.itemsize:
    raise ValueError(f'{where}: storage holds {len(raw)} bytes, '
                     f'{numel} x {dtype.name} needs {numel * dtype.itemsize}.')
  # Via unsigned integers, so that one code path swaps bytes for every dtype.
  order = '<' if little_endian else '>'
  words = np.frombuffer(raw, dtype=f'{order}u{dtype.itemsize}', count=numel)
  return words.astype(f'=u{dtype.itemsize}').view(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a state dict; any global but tensors and OrderedDict is refused."""

  def __init__(self, file, path: str, load_storage):
    super().__init__(file, encoding='utf-8')
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
      return self._rebuild_tensor  # A bound method: a pickle cannot patch it.
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return self._rebuild_parameter
    if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f'{self._path}: refusing to unpickle the global {module}.{name}: a state dict '
        'holds only tensors (torch._utils._rebuild_tensor_v2, torch.*Storage) and '
        'collections.OrderedDict.')

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel[, view metadata]); a Python 2
    # pickle may hold bytes.
    if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ('storage', b'storage')
        or not isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f'{self._path}: unsupported persistent id {pid!r:.200}.')
    return self._load_storage(pid)

  def _rebuild_tensor(self, storage, offset, shape, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata.
    if not isinstance(storage, _Storage):
      raise pickle.UnpicklingError(f'{self._path}: a tensor without a storage.')
    return _Tensor(storage, offset, tuple(shape), tuple(stride))

  def _rebuild_parameter(self, data, *unused):
    del unused
    return data


def _to_array(tensor: _Tensor, where: str) -> np.ndarray:
  """Copies a strided view out of its storage, after checking its bounds."""
  data = tensor.storage.array()
  if data is None:
    raise ValueError(f'{where}: its storage has no data in the file.')
  shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
  if len(shape) != len(stride) or any(n < 0 for n in shape) or any(s < 0 for s in stride):
    raise ValueError(f'{where}: bad shape {shape} or stride {stride}.')
  if 0 in shape:
    return np.zeros(shape, data.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
  if offset < 0 or last >= data.size:
    raise ValueError(f'{where}: shape {shape}, stride {stride} and offset {offset} '
                     f'read past the end of a storage of {data.size} elements.')
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape, [s * data.itemsize for s in stride], writeable=False)
  return np.array(view)


def _load_zip(path: str, archive: zipfile.ZipFile, prefix: str):
  """Reads `<prefix>data.pkl` and the storages `<prefix>data/<key>` it names."""
  names = set(archive.namelist())
  little_endian = True
  if prefix + 'byteorder' in names:
    little_endian = archive.read(prefix + 'byteorder').strip() != b'big'
  storages = {}

  def load_storage(pid):
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if key not in storages:
      record = f'{prefix}data/{key}'
      if record not in names:
        raise ValueError(f'{path}: the checkpoint has no storage record {record!r}.')
      storages[key] = _Storage(storage_type.dtype, numel)
      storages[key].data = _read_storage(archive.read(record), storage_type.dtype, numel,
                                         little_endian, f'{path}:{record}')
    return storages[key]

  with archive.open(prefix + 'data.pkl') as f:
    return _RestrictedUnpickler(f, path, load_storage).load()


def _load_legacy(path: str, f):
  """Reads the pre-1.6 format: four pickles, then each storage's size and bytes."""

  def no_storage(pid):
    raise pickle.UnpicklingError(f'{path}: unexpected persistent id {pid!r:.200}.')

  def load(load_storage=no_storage):
    return _RestrictedUnpickler(f, path, load_storage).load()

  if load() != _LEGACY_MAGIC or load() != _LEGACY_VERSION:
    raise ValueError(f'{path}: not a PyTorch checkpoint (bad magic number or version).')
  sys_info = load()
  little_endian = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
  roots, views = {}, {}

  def load_storage(pid):
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    roots.setdefault(key, _Storage(storage_type.dtype, numel))
    view_metadata = pid[5] if len(pid) > 5 else None
    if view_metadata is None:
      return roots[key]
    view_key, offset, view_numel = view_metadata
    return views.setdefault(view_key, _Storage(storage_type.dtype, view_numel,
                                               base=roots[key], offset=offset))

  result = load(load_storage)
  for key in load():
    if key not in roots:
      raise ValueError(f'{path}: storage {key!r} is not used by any tensor.')
    storage = roots[key]
    (numel,) = struct.unpack('<q' if little_endian else '>q', f.read(8))
    raw = f.read(numel * storage.dtype.itemsize)
    storage.data = _read_storage(raw, storage.dtype, numel, little_endian, f'{path}:{key}')
  return result


def load_torch_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`torch.save` file) or an `.npz`, without torch.

  Args:
    path: a file written by `torch.save(model.state_dict(), path)` (zip or
      legacy format), or by `np.savez(path, **state_dict)`.

  Returns:
    {name: array}, arrays in the stored dtype (bfloat16 as `ml_dtypes.bfloat16`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No such checkpoint file: {path}')
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pickles = [n for n in names if re.fullmatch(r'[^/]+/data\.pkl', n)]
      if len(pickles) == 1:
        state_dict = _load_zip(path, archive, pickles[0][:-len('data.pkl')])
      elif names and all(n.endswith('.npy') for n in names):
        with np.load(path, allow_pickle=False) as npz:
          return {key: npz[key] for key in npz.files}
      else:
        raise ValueError(f'{path}: unknown format: a zip file that is neither a PyTorch '
                         f'checkpoint (<name>/data.pkl) nor an .npz; it holds {names[:5]}.')
  else:
    with open(path, 'rb') as f:
      if f.read(len(_LEGACY_HEADER)) != _LEGACY_HEADER:
        raise ValueError(f'{path}: unknown format: neither a PyTorch checkpoint (zip or '
                         'legacy) nor an .npz.')
      f.seek(0)
      state_dict = _load_legacy(path, f)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f'{path}: expected a state dict (names -> tensors), '
                     f'found a {type(state_dict).__name__}.')
  arrays = {}
  for key, value in state_dict.items():
    if not isinstance(value, _Tensor):
      raise ValueError(f'{path}: expected a state dict (names -> tensors), but {key!r} '
                       f'holds a {type(value).__name__}.')
    arrays[key] = _to_array(value, f'{path}: tensor {key!r}')
  return arrays


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


def _convert(key: str, value: np.ndarray, leaf) -> tuple[np.ndarray | None, str | None]:
  """Torch layout -> ours, cast to the leaf's dtype; or (None, why) on a bad shape."""
  value = np.asarray(value)
  is_kernel = len(leaf.shape) == 4
  if len(leaf.shape) == 2 and value.ndim == 1:
    # BatchNorm statistics kept per domain (resnet.BatchNorm, [domains, C]): every
    # domain starts from the pretrained averages.
    value = np.broadcast_to(value, (leaf.shape[0],) + value.shape)
  expected = (leaf.shape[3], leaf.shape[2], *leaf.shape[:2]) if is_kernel else leaf.shape
  if value.shape != tuple(expected):
    return None, f'{key}: expected shape {tuple(expected)}, found {value.shape}'
  if is_kernel:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  value = value.astype(leaf.dtype)
  if isinstance(leaf, jax.Array):  # Keep the placement of the variables we replace.
    return jax.device_put(value, leaf.sharding), None
  return value, None


def _listing(title: str, items) -> str:
  items = sorted(items)
  shown = ', '.join(items[:20]) + (f', ... ({len(items) - 20} more)' if len(items) > 20 else '')
  return f'\n  {title} ({len(items)}): {shown}'


def torchvision_to_flax(state_dict: Mapping[str, Any], variables: Mapping[str, Any]):
  """Returns `variables` of a `resnet.ResNet` with torchvision's weights in them.

  Args:
    state_dict: torchvision ResNet-18/34/50/101 {key: array}, e.g. from
      `load_torch_state_dict`. `fc.*` and `*.num_batches_tracked` are ignored.
    variables: {'params': ..., 'batch_stats': ...} of the backbone alone; the
      leaves may be arrays or `jax.ShapeDtypeStruct`s (only shape and dtype
      are read).

  Returns:
    New variables of the same structure and dtypes; each leaf comes from
    exactly one state-dict key. Raises ValueError naming every missing,
    unused or mis-shaped key, and every leaf with no torchvision counterpart.
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
  unused = [k for k in state_dict if k not in keys and k not in ignorable]
  converted, bad_shapes = {}, []
  for key, path in keys.items():
    if key in state_dict:
      converted[path], why = _convert(key, state_dict[key], flat[path])
      if why:
        bad_shapes.append(why)
  if missing or unused or unmapped or bad_shapes:
    raise ValueError(
        'The state dict does not fit the ResNet variables:' +
        (_listing('missing keys', missing) if missing else '') +
        (_listing('unused keys', unused) if unused else '') +
        (_listing('shape mismatches', bad_shapes) if bad_shapes else '') +
        (_listing('leaves with no torchvision name', unmapped) if unmapped else ''))
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


def load_pretrained_backbone(source: PathLike | Mapping[str, Any],
                             variables: Mapping[str, Any],
                             backbone_path: Sequence[str] | str = ('backbone',)):
  """Returns `variables` with the backbone's subtree replaced by pretrained weights.

  Args:
    source: a checkpoint path (see `load_torch_state_dict`) or a state dict.
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
  state_dict = source if isinstance(source, Mapping) else load_torch_state_dict(source)
  converted = torchvision_to_flax(state_dict, backbone)
  new = dict(variables)
  for collection, tree in converted.items():
    new[collection] = _replace_subtree(variables[collection], backbone_path, tree)
  return new


def is_fgjax_run(path: PathLike) -> bool:
  """Whether `path` is a fgjax workdir (a folder with config.json), not a weight file."""
  path = os.path.expanduser(os.fspath(path))
  return os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json'))


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
