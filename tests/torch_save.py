"""A torch.save emulator for whole checkpoints, without torch.

Python's pure-Python pickler, with `Tensor`s pickled as torch pickles them
(`torch._utils._rebuild_tensor_v2` over a persistent storage id) and their data
written as torch.save lays it out: the zip archive of PyTorch >= 1.6, or the pre-1.6
stream. Everything else in the object (dicts, OrderedDicts, lists, numbers,
`argparse.Namespace`, `TorchGlobal('torch', 'device', 'cuda', 0)`) is pickled as
Python pickles it, so training checkpoints with args and optimizer state can be written.
tests/test_pretrained.py writes flat state dicts opcode by opcode instead.

  torch_save(path, {'state_dict': {'w': Tensor(np.ones(3, np.float32))}, 'epoch': 3})
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np


class Tensor:
  """An array that pickles as `torch._utils._rebuild_tensor_v2(storage, ...)`."""

  def __init__(self, array):
    self.array = np.array(array, order='C')


class TorchGlobal:
  """Pickles as the global `module.name`, or with `args` as `module.name(*args)`
  (e.g. torch.device('cuda', 0)); torch cannot be imported here."""

  def __init__(self, module, name, *args):
    self.module, self.name, self.args = module, name, args

  def __call__(self, *unused):  # The pickler asks a reduce function to be callable.
    raise NotImplementedError


class _StorageId(tuple):
  """('storage', torch.<Type>Storage, key, location, numel[, view]): a persistent id."""


_STORAGE_TYPES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage'}


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes `obj` as torch.save's pickle; the tensors' data go to `self.storages`."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy, self.storages = legacy, {}

  def _save_global(self, obj):
    self.write(b'c' + f'{obj.module}\n{obj.name}\n'.encode())

  dispatch[TorchGlobal] = _save_global

  def reducer_override(self, obj):
    if isinstance(obj, TorchGlobal) and obj.args:
      return TorchGlobal(obj.module, obj.name), obj.args
    if not isinstance(obj, Tensor):
      return NotImplemented
    key, array = str(len(self.storages)), obj.array
    self.storages[key] = array.reshape(-1)
    storage_type = TorchGlobal('torch', _STORAGE_TYPES[array.dtype])
    storage = _StorageId(('storage', storage_type, key, 'cpu', array.size) +
                         ((None,) if self.legacy else ()))
    stride = tuple(s // array.itemsize for s in array.strides)
    return (TorchGlobal('torch._utils', '_rebuild_tensor_v2'),
            (storage, 0, array.shape, stride, False, collections.OrderedDict()))

  def persistent_id(self, obj):
    return tuple(obj) if isinstance(obj, _StorageId) else None


def torch_save(path, obj, legacy=False):
  """What `torch.save(obj, path)` writes (zip, or with legacy=True the pre-1.6 stream),
  where `obj`'s tensors are `Tensor`s."""
  payload = io.BytesIO()
  pickler = _TorchPickler(payload, legacy)
  pickler.dump(obj)
  write_container(path, payload.getvalue(), pickler.storages, legacy)


def write_container(path, payload: bytes, storages: dict, legacy=False):
  """Lays out a pickled object `payload` and its storages {key: 1-D array} as torch.save
  does: the zip archive (archive/data.pkl, archive/data/<key>), or the pre-1.6 stream
  (magic number, protocol, system info, the payload, the storage keys, then each
  storage's element count and little-endian bytes)."""
  if legacy:
    sys_info = {'protocol_version': 1001, 'little_endian': True,
                'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
    with open(path, 'wb') as f:
      for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
        f.write(pickle.dumps(header, protocol=2))
      f.write(payload + pickle.dumps(list(storages), protocol=2))
      for data in storages.values():
        f.write(struct.pack('<q', data.size) + data.astype(data.dtype.newbyteorder('<')).tobytes())
    return
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr('archive/data.pkl', payload)
    archive.writestr('archive/byteorder', 'little')
    for key, data in storages.items():
      archive.writestr(f'archive/data/{key}', data.tobytes())
    archive.writestr('archive/version', '3\n')


def tensors(state_dict, prefix=''):
  """{prefix + name: Tensor} in an OrderedDict, as `model.state_dict()` returns it."""
  return collections.OrderedDict((prefix + k, Tensor(v)) for k, v in state_dict.items())
