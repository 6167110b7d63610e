"""Hostile and malformed weight files: fgjax.models.weight_file refuses them, early.

Every file here is written byte by byte (pickle protocol 2/4 opcodes, zip records,
the legacy stream), so that it can lie: a storage larger than its bytes, a tensor
larger than its storage, a length field larger than the file. Each must raise a
ValueError naming the file (and the tensor's key where there is one) before any
large allocation, which `tracemalloc` measures (NumPy reports its buffers to it).
"""

import pathlib
import pickle
import random
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from fgjax.models import weight_file

DATA = pathlib.Path(__file__).parent / 'data'
PEAK_LIMIT = 4 << 20  # Bytes: far above what these tiny files need.
FORMATS = ['zip', 'legacy']


# ---------------------------------------------------------------------------
# Writing files: pickle opcodes, as torch.save lays them out.
# ---------------------------------------------------------------------------


class _Global(str):
  """A global reference: 'module name'."""


def _op(value) -> bytes:
  """Pickle opcodes pushing `value` (str, int, None, bool, tuple or _Global)."""
  if isinstance(value, _Global):
    module, name = value.split()
    return b'c' + f'{module}\n{name}\n'.encode()
  if isinstance(value, str):
    data = value.encode()
    return b'X' + struct.pack('<I', len(data)) + data
  if value is None:
    return b'N'
  if isinstance(value, bool):
    return b'\x88' if value else b'\x89'
  if isinstance(value, int):
    if -2 ** 31 <= value < 2 ** 31:
      return b'J' + struct.pack('<i', value)
    data = value.to_bytes(value.bit_length() // 8 + 1, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data  # LONG1.
  if isinstance(value, float):
    return b'G' + struct.pack('>d', value)
  if isinstance(value, tuple):
    return b'(' + b''.join(map(_op, value)) + b't'
  raise TypeError(value)


def _tensor(key='0', numel=6, offset=0, shape=(6,), stride=(1,), storage='FloatStorage',
            view=None, legacy=False):
  """Opcodes of `_rebuild_tensor_v2(persistent storage id, offset, shape, stride, ...)`."""
  pid = ('storage', _Global(f'torch {storage}'), key, 'cpu', numel)
  if legacy:
    pid += (view,)
  ordered_dict = _op(_Global('collections OrderedDict')) + b')R'
  storage_id = _op(pid) + b'Q'  # BINPERSID: the reader's persistent_load(pid).
  args = (b'(' + storage_id + b''.join(map(_op, (offset, shape, stride, False))) +
          ordered_dict + b't')
  return _op(_Global('torch._utils _rebuild_tensor_v2')) + args + b'R'


def _state_dict_pickle(tensors: dict[str, bytes], protocol=2, prefix=b'') -> bytes:
  """An OrderedDict {name: tensor opcodes}; `prefix` runs first, right after PROTO."""
  out = bytes([0x80, protocol]) + prefix + _op(_Global('collections OrderedDict')) + b')R('
  return out + b''.join(_op(name) + t for name, t in tensors.items()) + b'u.'


def _write_zip(path, payload: bytes, records: dict[str, bytes]):
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr('archive/data.pkl', payload)
    archive.writestr('archive/byteorder', 'little')
    for key, raw in records.items():
      archive.writestr(f'archive/data/{key}', raw)


def _write_legacy(path, payload: bytes, storages: dict[str, tuple[int, bytes]], protocol=2):
  """The pre-1.6 stream; `storages` is {key: (element count written, bytes)}."""
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  with open(path, 'wb') as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
      f.write(pickle.dumps(header, protocol=protocol))
    f.write(payload)
    f.write(pickle.dumps(list(storages), protocol=protocol))
    for numel, raw in storages.values():
      f.write(struct.pack('<q', numel) + raw)


def _write_payload(path, fmt, payload: bytes, storages: dict[str, tuple[int, bytes]]):
  """The state-dict pickle and `storages` ({key: (element count, bytes)}) as `fmt`."""
  if fmt == 'zip':
    _write_zip(path, payload, {key: raw for key, (_, raw) in storages.items()})
  else:
    _write_legacy(path, payload, storages)


def _write(path, fmt, tensor_kwargs, storages: dict[str, tuple[int, bytes]]):
  """One tensor 'w', `_tensor(**tensor_kwargs)`, over `storages`."""
  payload = _state_dict_pickle({'w': _tensor(legacy=fmt == 'legacy', **tensor_kwargs)})
  _write_payload(path, fmt, payload, storages)


def _floats(n):
  return (n, np.arange(n, dtype='<f4').tobytes())


def _load_refused(path, *patterns):
  """Loading `path` raises a ValueError naming it and `patterns`, having allocated little."""
  tracemalloc.start()
  try:
    with pytest.raises(ValueError) as error:
      weight_file.load_torch_state_dict(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(error.value)
  assert message.startswith(str(path)), message
  for pattern in patterns:
    assert pattern in message, f'{pattern!r} not in: {message}'
  assert peak < PEAK_LIMIT, f'{peak} bytes allocated before: {message}'


# ---------------------------------------------------------------------------
# Tensors that reach outside their storage: refused from the declarations.
# ---------------------------------------------------------------------------

# (tensor fields, storage elements, what the message says).
_HOSTILE_TENSORS = {
    # The reported 1.6 KB file: one element, 13.4 GiB of zero strides.
    'stride0_60000x60000': (dict(numel=1, shape=(60000, 60000), stride=(0, 0)), 1,
                            'shape (60000, 60000) needs 3600000000 x float32 = 14400000000 '
                            "bytes, but its storage '0' holds 4 bytes from offset 0"),
    # Only counting from the offset refuses this: the strides reach element 4 of 6.
    'count_past_offset': (dict(offset=3, shape=(2, 2), stride=(1, 0)), 6,
                          "needs 4 x float32 = 16 bytes, but its storage '0' holds 12 bytes "
                          'from offset 3'),
    # Six elements of six, but the strides reach element 1 + 2 * 5 = 11.
    'reach_past_end': (dict(shape=(2, 3), stride=(1, 5)), 6,
                       "reach element 11, past the end of its storage '0' of 6 elements"),
    'negative_offset': (dict(numel=1, offset=-1, shape=(1,), stride=(1,)), 1,
                        'expected integer sizes, strides and offset in [0, 2**48)'),
    'negative_stride': (dict(numel=2, shape=(2,), stride=(-1,)), 2,
                        'expected integer sizes, strides and offset in [0, 2**48)'),
    'negative_size': (dict(shape=(-2, -3), stride=(1, 1)), 6,
                      'expected integer sizes, strides and offset in [0, 2**48)'),
    # No element, but NumPy cannot even make an empty array this wide.
    'empty_but_huge': (dict(shape=(0, 2 ** 60), stride=(1, 1)), 6,
                       'expected integer sizes, strides and offset in [0, 2**48)'),
    'float_size': (dict(shape=(6.0,), stride=(1,)), 6,
                   'expected integer sizes, strides and offset in [0, 2**48)'),
    'stride_per_dimension': (dict(shape=(2, 3), stride=(1,)), 6,
                             'one per dimension; found shape (2, 3), stride (1,)'),
    'negative_storage_size': (dict(numel=-6), 6,
                              "storage '0' declares -6 elements; expected an integer in "
                              '[0, 2**48)'),
    'unknown_storage_type': (dict(storage='ComplexFloatStorage'), 6,
                             'storage type torch.ComplexFloatStorage is not supported; '
                             'expected one of DoubleStorage, FloatStorage'),
}


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('case', list(_HOSTILE_TENSORS))
def test_tensor_outside_its_storage_is_refused_before_allocating(tmp_path, fmt, case):
  fields, storage_numel, expected = _HOSTILE_TENSORS[case]
  path = tmp_path / f'{case}.pth'
  _write(path, fmt, fields, {'0': _floats(storage_numel)})
  assert path.stat().st_size < 2048  # As small as the reported file.
  _load_refused(path, "tensor 'w'", expected)


def test_legacy_view_outside_its_base_is_refused(tmp_path):
  path = tmp_path / 'view.pth'
  _write(path, 'legacy', dict(view=('v', 4, 4), shape=(4,)), {'0': _floats(6)})
  _load_refused(path, "tensor 'w'", "storage view 'v' of elements [4, +4) lies outside "
                "its base storage '0' of 6")


@pytest.mark.parametrize('fmt', FORMATS)
def test_storage_declared_twice_with_different_sizes(tmp_path, fmt):
  legacy = fmt == 'legacy'
  payload = _state_dict_pickle({'a': _tensor(legacy=legacy),
                                'b': _tensor(numel=7, shape=(7,), legacy=legacy)})
  path = tmp_path / 'twice.pth'
  _write_payload(path, fmt, payload, {'0': _floats(7)})
  _load_refused(path, "storage '0' is declared twice")


def test_legacy_storage_list_differs_from_the_pickle(tmp_path):
  path = tmp_path / 'list.pth'
  payload = _state_dict_pickle({'w': _tensor(legacy=True)})
  _write_legacy(path, payload, {'0': _floats(6), 'x': _floats(6)})
  _load_refused(path, "the storage list ['0', 'x'] does not match the storages the tensors "
                "use (['0'])")


# ---------------------------------------------------------------------------
# Storages that claim more bytes than the file holds: refused before reading.
# ---------------------------------------------------------------------------


def test_zip_storage_larger_than_its_record(tmp_path):
  path = tmp_path / 'big_storage.pth'
  _write(path, 'zip', dict(numel=2 ** 40, shape=(2 ** 40,)), {'0': _floats(1)})
  _load_refused(path, "tensor 'w': its storage 'archive/data/0' declares "
                '1099511627776 x float32 = 4398046511104 bytes, but the file holds 4')


def _forge_central_directory_size(path, member, compressed, uncompressed):
  """Rewrites `member`'s sizes in the zip's central directory (what zipfile trusts)."""
  data = bytearray(path.read_bytes())
  at = data.index(b'PK\x01\x02')
  while True:
    name_length = struct.unpack_from('<H', data, at + 28)[0]
    if data[at + 46:at + 46 + name_length] == member.encode():
      struct.pack_into('<II', data, at + 20, compressed, uncompressed)
      break
    at = data.index(b'PK\x01\x02', at + 4)
  path.write_bytes(bytes(data))


_FORGED_MEMBERS = {  # Zip headers of the storage record, and what the refusal says.
    # Without the check, zipfile allocates 1 GiB for it before finding the file short.
    'past_the_end': ((2 ** 31 - 1, 2 ** 31 - 1), 'claims 2147483647 bytes from offset'),
    'stored_but_bigger': ((24, 2 ** 31 - 1), 'claims 2147483647 bytes from 24 in the file'),
    'bzip2': (None, 'uses compression method 12; expected stored or deflated'),
}


@pytest.mark.parametrize('case', list(_FORGED_MEMBERS))
def test_zip_member_header_checked_before_reading(tmp_path, case):
  sizes, expected = _FORGED_MEMBERS[case]
  path = tmp_path / f'{case}.pth'
  _write(path, 'zip', dict(), {'0': _floats(6)})
  if sizes:
    _forge_central_directory_size(path, 'archive/data/0', *sizes)
  else:
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('archive/data.pkl', _state_dict_pickle({'w': _tensor()}))
      archive.writestr('archive/data/0', _floats(6)[1], zipfile.ZIP_BZIP2)
  _load_refused(path, f"zip member 'archive/data/0' {expected}")


def test_legacy_storage_of_2_to_the_40_elements(tmp_path):
  """The reported file: once a bare MemoryError naming no file."""
  path = tmp_path / 'huge_legacy.pth'
  _write(path, 'legacy', dict(numel=2 ** 40, shape=(4,)), {'0': (2 ** 40, bytes(16))})
  _load_refused(path, "storage '0' (tensor 'w'): declares 1099511627776 x float32 = "
                '4398046511104 bytes, but only 16 bytes remain in the file')


def test_legacy_data_size_differs_from_the_pickle(tmp_path):
  path = tmp_path / 'short_legacy.pth'
  _write(path, 'legacy', dict(), {'0': _floats(1)})
  _load_refused(path, "storage '0' (tensor 'w'): the pickle declares 6 elements, its data 1")


# ---------------------------------------------------------------------------
# Length fields inside the pickle itself.
# ---------------------------------------------------------------------------

_SIZE = 2 ** 26  # 64 MiB: visible to tracemalloc if a reader allocated it.
_READING = f'reading {_SIZE} bytes, but only'
_LENGTH_FIELDS = {  # Opcodes right after PROTO 4, and what the refusal says.
    'binunicode8': (b'\x8d' + struct.pack('<Q', _SIZE) + b'abc', _READING),
    'binbytes8': (b'\x8e' + struct.pack('<Q', _SIZE) + b'abc', _READING),
    'frame': (b'\x95' + struct.pack('<Q', _SIZE) + b'N', _READING),
    'long4': (b'\x8b' + struct.pack('<i', _SIZE) + b'\x01', _READING),
    # Python's unpickler allocates a bytearray before reading it, however short the file.
    'bytearray8': (b'\x96' + struct.pack('<Q', _SIZE) + b'abc', 'a pickled bytearray'),
}


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('field', list(_LENGTH_FIELDS))
def test_pickle_length_field_beyond_the_file(tmp_path, fmt, field):
  opcodes, expected = _LENGTH_FIELDS[field]
  path = tmp_path / f'{field}.pth'
  _write_payload(path, fmt, _state_dict_pickle({}, protocol=4, prefix=opcodes), {})
  _load_refused(path, expected)


@pytest.mark.parametrize('fmt', FORMATS)
def test_pickle_memo_index_allocates_nothing(tmp_path, fmt):
  """LONG_BINPUT at index 2**22: the C unpickler would size its memo by it (64 MiB)."""
  memo = b'N' + b'r' + struct.pack('<I', 2 ** 22) + b'0'  # Push None, memoise it, pop.
  payload = _state_dict_pickle({'w': _tensor(legacy=fmt == 'legacy')}, prefix=memo)
  path = tmp_path / 'memo.pth'
  _write_payload(path, fmt, payload, {'0': _floats(6)})
  tracemalloc.start()
  try:
    loaded = weight_file.load_torch_state_dict(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(loaded['w'], np.arange(6, dtype=np.float32))
  assert peak < PEAK_LIMIT


# ---------------------------------------------------------------------------
# Every other malformation: a ValueError naming the file, never a bare error.
# ---------------------------------------------------------------------------


def _mutations(data: bytes, start: int, seed: int, count: int):
  """Truncations of `data`, and copies with one byte at or after `start` changed."""
  rng = random.Random(seed)
  for _ in range(count):
    yield data[:rng.randrange(len(data))]
    at = rng.randrange(start, len(data))
    yield data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]


def _assert_loads_or_names_the_file(path):
  try:
    weight_file.load_torch_state_dict(path)
  except ValueError as error:
    assert str(error).startswith(f'{path}: '), error


def test_mutated_legacy_file_never_raises_a_bare_error(tmp_path):
  data = (DATA / 'views_legacy.pth').read_bytes()
  path = tmp_path / 'mutated.pth'
  for mutated in _mutations(data, 0, seed=0, count=200):
    path.write_bytes(mutated)
    _assert_loads_or_names_the_file(path)


def test_mutated_zip_pickle_never_raises_a_bare_error(tmp_path):
  with zipfile.ZipFile(DATA / 'views.pth') as archive:
    members = {info.filename: archive.read(info) for info in archive.infolist()}
  pkl = next(name for name in members if name.endswith('/data.pkl'))
  path = tmp_path / 'mutated.pth'
  for mutated in _mutations(members[pkl], 2, seed=1, count=150):
    with zipfile.ZipFile(path, 'w') as archive:  # Valid zip (CRCs), mutated pickle.
      for name, raw in members.items():
        archive.writestr(name, mutated if name == pkl else raw)
    _assert_loads_or_names_the_file(path)


def test_corrupt_zip_record_names_the_file(tmp_path):
  path = tmp_path / 'crc.pth'
  _write(path, 'zip', dict(), {'0': _floats(6)})
  data = bytearray(path.read_bytes())
  data[data.index(np.arange(6, dtype='<f4').tobytes())] ^= 1  # Now the CRC fails.
  path.write_bytes(bytes(data))
  _load_refused(path, 'malformed or truncated weight file', 'CRC')


# ---------------------------------------------------------------------------
# Formats: the legacy stream at any pickle protocol; .npz headers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_legacy_format_at_any_pickle_protocol(tmp_path, protocol):
  """torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4) frames its
  pickles; once refused as an unknown format."""
  path = tmp_path / f'protocol{protocol}.pth'
  payload = _state_dict_pickle(
      {'w': _tensor(legacy=True, shape=(2, 3), stride=(1, 2))}, protocol=protocol)
  _write_legacy(path, payload, {'0': _floats(6)}, protocol=protocol)
  assert path.read_bytes()[:2] == bytes([0x80, protocol])
  loaded = weight_file.load_torch_state_dict(path)
  np.testing.assert_array_equal(loaded['w'], np.arange(6, dtype=np.float32).reshape(3, 2).T)
