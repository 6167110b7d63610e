"""Hostile npz and safetensors weight files: refused before their declared sizes are
read (the torch formats' cases and `_load_refused` are in test_weight_file.py)."""

import io
import struct
import zipfile

import numpy as np
import pytest

from fgjax.models import pretrained
from test_weight_file import _load_refused  # pylint: disable=g-bad-import-order


def test_npz_header_larger_than_its_data(tmp_path):
  path, member = tmp_path / 'big.npz', io.BytesIO()
  np.lib.format.write_array_header_1_0(
      member, {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 60000)})
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('w.npy', member.getvalue() + bytes(16))
  _load_refused(path, "array 'w': shape (60000, 60000) needs 14400000000 bytes "
                'of float32, but the file holds 16')


def test_npz_of_python_objects_is_refused(tmp_path):
  np.savez(tmp_path / 'objects.npz', w=np.array([{'a': 1}], dtype=object))
  _load_refused(tmp_path / 'objects.npz', "array 'w': dtype object holds Python objects")


def test_npz_fortran_order_and_public_names(tmp_path):
  value = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
  np.savez_compressed(tmp_path / 'f.npz', w=value)
  loaded = pretrained.load_torch_state_dict(tmp_path / 'f.npz')  # Re-exported name.
  np.testing.assert_array_equal(loaded['w'], value)
  assert loaded['w'].dtype == np.int16
  assert issubclass(pretrained.WeightFileError, ValueError)


# ---------------------------------------------------------------------------
# safetensors: the header's sizes are checked against the file before reading.
# ---------------------------------------------------------------------------

_HOSTILE_SAFETENSORS_HEADERS = {  # (header size field, header), what the refusal says.
    'header_size_2_to_40': ((1 << 40, b'{}'), 'declare a header of 1099511627776 bytes'),
    'tensor_of_14_gb': (
        (None, b'{"w": {"dtype": "F32", "shape": [60000, 60000], "data_offsets": [0, 8]}}'),
        "tensor 'w': shape (60000, 60000) of F32 needs 14400000000 bytes, but its "
        'data_offsets [0, 8] hold 8'),
    'offsets_past_the_end': (
        (None, b'{"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}'),
        "tensor 'w': its data_offsets [0, 4096] reach past the 8 bytes of data"),
}


@pytest.mark.parametrize('case', list(_HOSTILE_SAFETENSORS_HEADERS))
def test_safetensors_header_beyond_the_file(tmp_path, case):
  (size, header), expected = _HOSTILE_SAFETENSORS_HEADERS[case]
  path = tmp_path / f'{case}.safetensors'
  size = len(header) if size is None else size
  path.write_bytes(struct.pack('<Q', size) + header + bytes(8))
  _load_refused(path, expected)
