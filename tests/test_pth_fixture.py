"""Real `torch.save` files, read and mapped by fgjax.models.pretrained without torch.

tests/data/make_pth_fixture.py wrote them once with torch: a narrow bottleneck
ResNet of torchvision's layout, saved in the zip and in the legacy format, and
a reference .npz with its state dict (from Tensor.numpy()), a fixed input and
torch's eval-mode features of that input.
"""

import pathlib
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from fgjax.models import pretrained
from fgjax.models import resnet

DATA = pathlib.Path(__file__).parent / 'data'
PTH_FILES = ['narrow_resnet.pth', 'narrow_resnet_legacy.pth']


@pytest.fixture(scope='module')
def reference():
  with np.load(DATA / 'narrow_resnet_reference.npz') as npz:
    return {key: npz[key] for key in npz.files}


def _prefixed(reference, prefix):
  return {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


def test_fixtures_are_torch_files_of_both_formats(reference):
  assert int(str(reference['torch_version']).split('.')[0]) >= 2  # Written by 2.13.0.
  assert zipfile.is_zipfile(DATA / 'narrow_resnet.pth')
  assert not zipfile.is_zipfile(DATA / 'narrow_resnet_legacy.pth')


@pytest.mark.parametrize('name', PTH_FILES)
def test_reads_every_tensor_bit_exactly(reference, name):
  expected = _prefixed(reference, 'state_dict/')
  loaded = pretrained.load_torch_state_dict(DATA / name)
  assert list(loaded) == list(expected)  # torch's order, num_batches_tracked and fc included.
  for key, want in expected.items():
    got = loaded[key]
    assert (got.dtype, got.shape) == (want.dtype, want.shape), key
    np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize('name', PTH_FILES)
def test_forward_matches_torch(reference, name):
  """Wrongly transposed kernels, mixed-up layers or blocks, or lost running
  statistics all change the features; a shape check alone would miss most."""
  model = resnet.ResNet(stage_sizes=tuple(int(n) for n in reference['layers']),
                        block=resnet.BottleneckBlock, width=float(reference['width']))
  images = reference['input'].transpose(0, 2, 3, 1)  # NCHW -> NHWC.
  # Real initial values (not shapes), so that a leaf left unloaded stays visibly wrong.
  variables = model.init(jax.random.key(0), images)
  variables = pretrained.load_pretrained_backbone(DATA / name, variables, backbone_path=())
  ours = jax.jit(model.apply)(variables, images)  # Eval mode: running statistics.
  for key, want in _prefixed(reference, 'features/').items():
    got = np.asarray(ours[key])
    if got.ndim == 4:
      got = got.transpose(0, 3, 1, 2)  # NHWC -> NCHW.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=key)


@pytest.mark.parametrize('name', ['views.pth', 'views_legacy.pth'])
def test_reads_views_strides_offsets_and_storage_dtypes(name):
  """Tensors as torch stores views (a transpose, slices sharing a storage at an offset)
  and the half, bfloat16, int64 and bool storages."""
  with np.load(DATA / 'views_reference.npz') as npz:
    expected = {key: npz[key] for key in npz.files}
  loaded = pretrained.load_torch_state_dict(DATA / name)
  assert sorted(loaded) == sorted(expected)
  dtypes = {'half': np.float16, 'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64,
            'bool': np.bool_}
  for key, want in expected.items():
    got = loaded[key]
    assert got.dtype == dtypes.get(key, np.float32), key
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
