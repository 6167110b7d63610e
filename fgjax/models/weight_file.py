"""Reads a PyTorch state dict into NumPy arrays without torch, treating the file as hostile.

Both formats of `torch.save`, at any pickle protocol: the zip archive of PyTorch >= 1.6
(`<name>/data.pkl`, a record `<name>/data/<key>` per storage) and the single stream of
torchvision's first ResNet files (four pickles, then each storage's size and bytes);
also an `.npz` of the same keys, and a `.safetensors` file (Hugging Face hub; its header
checked in fgjax.models.timm_weights, its data read by the `safetensors` package). A
training checkpoint (timm's or torchvision's train.py) holds the state dict under a key
such as 'state_dict_ema' (fgjax.models.timm_weights); only its tensors are read.
Nothing is allocated for a size the file declares before that size is checked: the
unpickler (fgjax.models.torch_pickle) cannot read past the file's end; then every
tensor must fit its storage's declared size (integer sizes, strides and offsets >= 0,
the element count within the storage from the offset, the farthest element the strides
reach inside it), and every storage's declared size must fit the bytes the file holds.
Every failure is a `WeightFileError` (a ValueError) naming the file, the tensor's key
where there is one, and what was expected.
"""

import io
import math
import os
import pickle
import re
import struct
import zipfile

from typing import NamedTuple

import ml_dtypes
import numpy as np

from fgjax.models import timm_weights
from fgjax.models.torch_pickle import BoundedReader
from fgjax.models.torch_pickle import RestrictedUnpickler
from fgjax.models.torch_pickle import Storage
from fgjax.models.torch_pickle import Tensor
from fgjax.models.torch_pickle import WeightFileError

PathLike = str | os.PathLike


class WeightFile(NamedTuple):
  """A weight file's state dict, and what the file says of it."""
  state_dict: dict[str, np.ndarray]
  entry: str | None = None  # The training checkpoint's key it came from, e.g. 'state_dict'.
  arch: str | None = None  # The model name the training checkpoint records.


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
# The first two pickles of the pre-1.6 format (the third is sys_info).
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_VERSION = 1001
# Sizes, strides and offsets beyond this are refused: far past any real tensor, far
# below the overflow of NumPy's byte counts.
_MAX_COUNT = 2 ** 48
# zlib's best case: a deflated zip member cannot expand more than this.
_DEFLATE_MAX_RATIO = 1032
# Whatever else a malformed file makes the unpickler or zipfile raise.
_MALFORMED = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
              struct.error, KeyError, TypeError, IndexError, AttributeError, ValueError,
              OverflowError, MemoryError, RecursionError, NotImplementedError)


def _is_count(n) -> bool:
  return type(n) is int and 0 <= n < _MAX_COUNT  # pylint: disable=unidiomatic-typecheck


def _storage_dtype(where: str, storage: Storage) -> np.dtype:
  """The storage's dtype, after checking its declared size (a view's against its base)."""
  dtype = _STORAGE_DTYPES.get(storage.storage_type.name)
  if dtype is None:
    raise WeightFileError(f'{where}: storage type torch.{storage.storage_type.name} is not '
                          f'supported; expected one of {", ".join(_STORAGE_DTYPES)}.')
  if not _is_count(storage.numel):
    raise WeightFileError(f'{where}: storage {storage.key!r} declares {storage.numel!r:.50} '
                          'elements; expected an integer in [0, 2**48).')
  base = storage.base
  if base is not None:
    _storage_dtype(where, base)
    if not _is_count(storage.offset) or storage.offset + storage.numel > base.numel:
      raise WeightFileError(
          f'{where}: storage view {storage.key!r} of elements [{storage.offset!r:.50}, '
          f'+{storage.numel}) lies outside its base storage {base.key!r} of {base.numel}.')
  return np.dtype(dtype)


def _check_tensor(where: str, tensor: Tensor):
  """Refuses a tensor that would read outside its storage, from the declarations alone."""
  dtype = _storage_dtype(where, tensor.storage)
  shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
  if (not isinstance(shape, (tuple, list)) or not isinstance(stride, (tuple, list))
      or len(shape) != len(stride) or not all(map(_is_count, (*shape, *stride)))
      or not _is_count(offset)):
    raise WeightFileError(f'{where}: expected integer sizes, strides and offset in '
                          f'[0, 2**48), one per dimension; found shape {shape!r:.100}, stride '
                          f'{stride!r:.100}, offset {offset!r:.50}.')
  numel, available = math.prod(shape), tensor.storage.numel - offset
  if numel == 0:
    return
  if numel > available:
    raise WeightFileError(
        f'{where}: shape {tuple(shape)} needs {numel} x {dtype.name} = '
        f'{numel * dtype.itemsize} bytes, but its storage {tensor.storage.key!r} holds '
        f'{max(available, 0) * dtype.itemsize} bytes from offset {offset} '
        f'({tensor.storage.numel} elements in all).')
  last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
  if last >= tensor.storage.numel:
    raise WeightFileError(
        f'{where}: shape {tuple(shape)}, stride {tuple(stride)} and offset {offset} reach '
        f'element {last}, past the end of its storage {tensor.storage.key!r} of '
        f'{tensor.storage.numel} elements.')


def _check_state_dict(path: str, state_dict) -> dict[str, str]:
  """Checks every tensor; returns {root storage key: the first tensor key using it}."""
  users = {}
  for key, value in state_dict.items():
    if not isinstance(value, Tensor):
      raise WeightFileError(f'{path}: expected a state dict (names -> tensors), but '
                            f'{key!r:.100} holds a {type(value).__name__}.')
    _check_tensor(f'{path}: tensor {key!r}', value)
    root = value.storage if value.storage.base is None else value.storage.base
    users.setdefault(root.key, key)
  return users


def _decode(raw: bytes, dtype: np.dtype, numel: int, little_endian: bool) -> np.ndarray:
  """`numel` elements of `dtype` from `raw` (checked to hold them), in native order."""
  # Via unsigned integers, so that one code path swaps bytes for every dtype.
  order = '<' if little_endian else '>'
  words = np.frombuffer(raw, dtype=f'{order}u{dtype.itemsize}', count=numel)
  return words.astype(f'=u{dtype.itemsize}').view(dtype)


def _copy_out(tensor: Tensor, roots: dict[str, np.ndarray]) -> np.ndarray:
  """Copies a checked strided view out of its storage's array."""
  storage = tensor.storage
  if storage.base is None:
    data = roots[storage.key]
  else:  # A view (old format): elements [offset, offset + numel) of its base.
    data = roots[storage.base.key][storage.offset:storage.offset + storage.numel]
  shape, stride, offset = tuple(tensor.shape), tuple(tensor.stride), tensor.offset
  if 0 in shape:
    return np.zeros(shape, data.dtype)
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape, [s * data.itemsize for s in stride], writeable=False)
  return np.array(view)


def _member_size(path: str, info: zipfile.ZipInfo) -> int:
  """The bytes a zip member yields, after checking its header against the file."""
  archive_size = os.path.getsize(path)
  if info.header_offset + info.compress_size > archive_size:
    raise WeightFileError(
        f'{path}: zip member {info.filename!r} claims {info.compress_size} bytes from offset '
        f'{info.header_offset}, past the end of the {archive_size}-byte file.')
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise WeightFileError(f'{path}: zip member {info.filename!r} uses compression method '
                          f'{info.compress_type}; expected stored or deflated.')
  ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
  if info.file_size > ratio * info.compress_size:
    raise WeightFileError(f'{path}: zip member {info.filename!r} claims {info.file_size} '
                          f'bytes from {info.compress_size} in the file.')
  return info.file_size


def _read_member(path: str, archive: zipfile.ZipFile, name: str) -> bytes:
  """A zip member's bytes, read once its header is checked."""
  info = archive.getinfo(name)
  _member_size(path, info)
  return archive.read(info)


def _select(path: str, checkpoint) -> tuple[timm_weights.Selected, dict[str, str]]:
  """The state dict in the unpickled file, and `_check_state_dict` of its tensors."""
  selected = timm_weights.select_state_dict(path, checkpoint, lambda v: isinstance(v, Tensor))
  return selected, _check_state_dict(path, selected.state_dict)


def _load_zip(path: str, archive: zipfile.ZipFile, prefix: str) -> WeightFile:
  """Reads `<prefix>data.pkl` and the storages `<prefix>data/<key>` it names."""
  names = set(archive.namelist())
  little_endian = (prefix + 'byteorder' not in names
                   or _read_member(path, archive, prefix + 'byteorder').strip() != b'big')
  declared = {}

  def declare_storage(storage, view):
    if view is not None:
      raise WeightFileError(f'{path}: storage {storage.key!r} has view metadata, which '
                            'only the legacy format holds.')
    if declared.setdefault(storage.key, storage) != storage:
      raise WeightFileError(f'{path}: storage {storage.key!r} is declared twice, as '
                            f'{declared[storage.key]} and {storage}.')
    return declared[storage.key]

  data_pkl = _read_member(path, archive, prefix + 'data.pkl')
  reader = BoundedReader(io.BytesIO(data_pkl), len(data_pkl), path)
  selected, users = _select(path, RestrictedUnpickler(reader, path, declare_storage).load())
  state_dict, roots = selected.state_dict, {}
  for key, user in users.items():
    storage, where = declared[key], f'{path}: tensor {user!r}'
    dtype, record = _storage_dtype(where, storage), f'{prefix}data/{key}'
    if record not in names:
      raise WeightFileError(f'{where}: its storage record {record!r} is not in the file.')
    info = archive.getinfo(record)
    needed, held = storage.numel * dtype.itemsize, _member_size(path, info)
    if needed > held:
      raise WeightFileError(f'{where}: its storage {record!r} declares {storage.numel} x '
                            f'{dtype.name} = {needed} bytes, but the file holds {held}.')
    roots[key] = _decode(archive.read(info), dtype, storage.numel, little_endian)
  return WeightFile({key: _copy_out(tensor, roots) for key, tensor in state_dict.items()},
                    selected.entry, selected.arch)


def _load_legacy(path: str, reader: BoundedReader) -> WeightFile:
  """Reads the pre-1.6 format: four pickles, then each storage's size and bytes."""
  declared, views = {}, {}

  def no_storage(storage, view):
    raise WeightFileError(f'{path}: a storage ({storage.key!r}) outside the state dict.')

  def declare_storage(storage, view):
    root = declared.setdefault(storage.key, storage)
    if root != storage:
      raise WeightFileError(f'{path}: storage {storage.key!r} is declared twice, as '
                            f'{root} and {storage}.')
    if view is None:
      return root
    view_key, offset, numel = view
    return views.setdefault(view_key, Storage(str(view_key), root.storage_type, numel,
                                               root, offset))

  def load(declare=no_storage):
    return RestrictedUnpickler(reader, path, declare).load()

  unknown = f'{path}: unknown format: neither a PyTorch checkpoint (zip or legacy) nor an .npz'
  try:
    magic = load()
  except _MALFORMED + (WeightFileError,) as error:
    raise WeightFileError(f'{unknown} ({error}).') from error
  if magic != _LEGACY_MAGIC or load() != _LEGACY_VERSION:
    raise WeightFileError(unknown + '.')
  sys_info = load()
  little_endian = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
  selected, users = _select(path, load(declare_storage))
  state_dict, keys = selected.state_dict, load()
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
    raise WeightFileError(f'{path}: the storage list {keys!r:.200} does not match the '
                          f'storages the tensors use ({sorted(declared)!r:.200}).')
  roots = {}
  for key in map(str, keys):
    storage = declared[key]
    where = f'{path}: storage {key!r}' + (f' (tensor {users[key]!r})' if key in users else '')
    dtype = _storage_dtype(where, storage)
    (numel,) = struct.unpack('<q' if little_endian else '>q', reader.read(8))
    if numel != storage.numel:
      raise WeightFileError(f'{where}: the pickle declares {storage.numel} elements, '
                            f'its data {numel}.')
    if numel * dtype.itemsize > reader.left:
      raise WeightFileError(f'{where}: declares {numel} x {dtype.name} = '
                            f'{numel * dtype.itemsize} bytes, but only {reader.left} '
                            'bytes remain in the file.')
    if key not in users:  # Outside the state dict (an optimizer's): not needed.
      reader.skip(numel * dtype.itemsize)
      continue
    roots[key] = _decode(reader.read(numel * dtype.itemsize), dtype, numel, little_endian)
  return WeightFile({key: _copy_out(tensor, roots) for key, tensor in state_dict.items()},
                    selected.entry, selected.arch)


def _load_npz(path: str, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
  """Reads `np.savez` arrays, checking each header's size against the member's bytes."""
  arrays = {}
  for info in archive.infolist():
    name = info.filename[:-len('.npy')]
    where = f'{path}: array {name!r}'
    raw = _read_member(path, archive, info.filename)
    header = io.BytesIO(raw)
    version = np.lib.format.read_magic(header)
    if version not in ((1, 0), (2, 0)):
      raise WeightFileError(f'{where}: .npy format {version}; expected 1.0 or 2.0.')
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(header)
    if dtype.hasobject:
      raise WeightFileError(f'{where}: dtype {dtype} holds Python objects; expected numbers.')
    numel, start = math.prod(shape), header.tell()
    if numel * dtype.itemsize > len(raw) - start:
      raise WeightFileError(f'{where}: shape {shape} needs {numel * dtype.itemsize} bytes '
                            f'of {dtype}, but the file holds {len(raw) - start}.')
    flat = np.frombuffer(raw, dtype, count=numel, offset=start)
    arrays[name] = flat.reshape(shape, order='F' if fortran_order else 'C').copy()
  return arrays


def _is_safetensors(path: str) -> bool:
  """A '.safetensors' name, or its start: a little-endian u64 header size, then '{'."""
  with open(path, 'rb') as f:
    head = f.read(9)
  size = int.from_bytes(head[:8], 'little') if len(head) == 9 else -1
  return path.endswith('.safetensors') or (
      0 < size < os.path.getsize(path) - 8 and head[8:] == b'{')


def _load(path: str) -> WeightFile:
  # The name first: a safetensors file's data could end like a zip directory.
  if _is_safetensors(path):
    return WeightFile(timm_weights.load_safetensors(path))
  if not zipfile.is_zipfile(path):
    with open(path, 'rb') as f:
      return _load_legacy(path, BoundedReader(f, os.fstat(f.fileno()).st_size, path))
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if re.fullmatch(r'[^/]+/data\.pkl', n)]
    if len(pickles) == 1:
      return _load_zip(path, archive, pickles[0][:-len('data.pkl')])
    if names and all(n.endswith('.npy') for n in names):
      return WeightFile(_load_npz(path, archive))
    raise WeightFileError(f'{path}: unknown format: a zip file that is neither a PyTorch '
                          f'checkpoint (<name>/data.pkl) nor an .npz; it holds {names[:5]}.')


def load_torch_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`torch.save` file), `.npz` or `.safetensors`, without torch.

  Args:
    path: a file written by `torch.save(model.state_dict(), path)` (zip or
      legacy format; also a training checkpoint holding one, see `read_weight_file`),
      by `np.savez(path, **state_dict)` or by `safetensors.*.save_file`.

  Returns:
    {name: array}, arrays in the stored dtype (bfloat16 as `ml_dtypes.bfloat16`).
    Raises FileNotFoundError, or WeightFileError (a ValueError) naming the file.
  """
  return read_weight_file(path).state_dict


def read_weight_file(path: PathLike) -> WeightFile:
  """`load_torch_state_dict`, and which entry of a training checkpoint the state dict is.

  A `torch.save` file may hold a training checkpoint rather than a bare state dict:
  the first of 'state_dict_ema', 'model_ema', 'state_dict' and 'model' it has is read
  (timm's order: EMA weights first); the model it records (args.model, else 'arch')
  is returned too.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No such checkpoint file: {path}')
  try:
    return _load(path)
  except WeightFileError:
    raise
  except _MALFORMED as error:
    raise WeightFileError(f'{path}: malformed or truncated weight file '
                          f'({type(error).__name__}: {error!s:.300}).') from error
