"""The pickle of a `torch.save` file, unpickled into plain records and nothing else.

`RestrictedUnpickler` builds only what a state dict holds: an OrderedDict of `Tensor`s
over `Storage`s (records, unchecked; fgjax.models.weight_file checks them against each
other and the file), and the plain data around it in a training checkpoint (numbers,
strings, lists, dicts, and `argparse.Namespace` or `torch.device` as an inert
`PickledObject`). Every other global is refused. It is Python's pure-Python unpickler
over a `BoundedReader`, so that no size field of the file (a string's, a frame's, a
memo index) makes it allocate more than the file holds.
"""

import collections
import pickle
from typing import NamedTuple


class WeightFileError(ValueError):
  """A weight file that cannot be read; the message says which and why."""


# What the unpickler builds: immutable records (a pickle's BUILD opcode cannot touch
# them), checked only once the whole pickle has been read.
class StorageType(NamedTuple):
  """Stands in for the global `torch.<name>`, e.g. name='FloatStorage'."""
  name: str


class Storage(NamedTuple):
  """`numel` elements stored under `key`; a view (legacy) is [offset, +numel) of `base`."""
  key: str
  storage_type: StorageType
  numel: object
  base: 'object' = None
  offset: object = 0


class Tensor(NamedTuple):
  """What `_rebuild_tensor_v2` returns: a strided view into a `Storage`, unchecked."""
  storage: Storage
  offset: object
  shape: object
  stride: object


class PickledObject:
  """Stands in for an allowed object of plain data (`argparse.Namespace`, `torch.device`):
  its pickled arguments and state are kept as data; no code of the original class runs."""
  args, state = (), None

  def __init__(self, *args):
    self.args = args

  def __setstate__(self, state):
    self.state = state


# What a training checkpoint holds besides tensors: timm's and torchvision's train.py
# save their command line (`args`), which may name a device; torch.load(weights_only=True)
# allows both.
_PLAIN_OBJECTS = {('argparse', 'Namespace'): type('Namespace', (PickledObject,), {}),
                  ('torch', 'device'): type('device', (PickledObject,), {})}


class BoundedReader:
  """A file that refuses to read past its last byte, before allocating for it."""

  def __init__(self, file, size: int, where: str):
    self._file, self.left, self._where = file, size, where

  def read(self, n: int) -> bytes:
    if n > self.left:
      raise WeightFileError(f'{self._where}: reading {n} bytes, but only {self.left} remain '
                            'in the file (truncated, or a size field beyond its end).')
    data = self._file.read(n)
    self.left -= len(data)
    return data

  def skip(self, n: int):
    """Moves `n` bytes on without reading them, refusing to pass the file's end."""
    if n > self.left:
      raise WeightFileError(f'{self._where}: skipping {n} bytes, but only {self.left} remain '
                            'in the file (truncated, or a size field beyond its end).')
    self._file.seek(n, 1)
    self.left -= n

  def readline(self) -> bytes:
    line = self._file.readline(self.left)
    self.left -= len(line)
    return line


def _refuse_bytearray8(unpickler):
  raise WeightFileError(f'{unpickler.path}: a pickled bytearray (protocol 5), which a state '
                        'dict never holds and which would be allocated before it is read.')


class RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Unpickles a state dict; any global but tensors, storages, OrderedDict,
  argparse.Namespace and torch.device (`PickledObject`s) is refused.

  The pure-Python unpickler: the C one grows its memo to twice any index a pickle
  names (LONG_BINPUT 2**31: 32 GiB) before any check could run.

  Args:
    reader: the file, positioned at the pickle.
    path: the file's name, for errors.
    declare_storage: (Storage, view metadata or None) -> the Storage that a
      persistent id stands for; the file's format decides (see weight_file).
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access
  dispatch[pickle.BYTEARRAY8[0]] = _refuse_bytearray8

  def __init__(self, reader: BoundedReader, path: str, declare_storage):
    super().__init__(reader, encoding='utf-8')
    self.path = path
    self._declare_storage = declare_storage

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name in ('_rebuild_tensor', '_rebuild_tensor_v2'):
      return self._rebuild_tensor  # A bound method: a pickle cannot patch it.
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return lambda data, *unused: data  # requires_grad, backward hooks.
    if module in ('torch', 'torch.cuda') and name.endswith('Storage'):
      return StorageType(name)  # An unknown dtype is refused with its tensor's key.
    if (module, name) in _PLAIN_OBJECTS:
      return _PLAIN_OBJECTS[module, name]
    raise WeightFileError(
        f'{self.path}: refusing to unpickle the global {module}.{name}: a state dict '
        'holds only tensors (torch._utils._rebuild_tensor_v2, torch.*Storage) and '
        'collections.OrderedDict (a training checkpoint also argparse.Namespace and '
        'torch.device).')

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel[, view]); bytes from Python 2.
    if (not isinstance(pid, tuple) or len(pid) not in (5, 6)
        or pid[0] not in ('storage', b'storage') or not isinstance(pid[1], StorageType)
        or not isinstance(pid[2], (str, bytes, int))):
      raise WeightFileError(f'{self.path}: expected a storage id (\'storage\', '
                            f'torch.<Type>Storage, key, location, size), found {pid!r:.200}.')
    key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
    view = pid[5] if len(pid) == 6 else None
    if view is not None and (not isinstance(view, tuple) or len(view) != 3):
      raise WeightFileError(f'{self.path}: storage {key!r}: expected view metadata '
                            f'(key, offset, size), found {view!r:.200}.')
    return self._declare_storage(Storage(key, pid[1], pid[4]), view)

  def _rebuild_tensor(self, storage, offset, shape, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata.
    if not isinstance(storage, Storage):
      raise WeightFileError(f'{self.path}: a tensor without a storage ({storage!r:.100}).')
    return Tensor(storage, offset, shape, stride)
