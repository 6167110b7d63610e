"""Tests for fgjax.models.pretrained: torch-free checkpoint reading and mapping.

The checkpoints are written here by a small emulation of `torch.save` (both of
its formats), which reaches cases real files rarely hold (odd dtypes, refused
globals, errors); real `torch.save` files are read in tests/test_pth_fixture.py.
The mapping is checked against a float64 NumPy implementation of torchvision's
ResNet forward pass.
"""

import struct
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fgjax.models import pretrained
from fgjax.models import resnet
import torch_save

_STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float16): 'HalfStorage',
    np.dtype(ml_dtypes.bfloat16): 'BFloat16Storage',
    np.dtype(np.int64): 'LongStorage',
}

# ---------------------------------------------------------------------------
# A torch.save emulator: pickle protocol 2 opcodes with persistent storage ids.
# ---------------------------------------------------------------------------


def _op_global(module, name):
  return b'c' + f'{module}\n{name}\n'.encode()


def _op_str(text):
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _op_int(n):
  return b'J' + struct.pack('<i', n)


def _op_tuple(items):
  return b'(' + b''.join(items) + b't'


def _pickle_state_dict(tensors, storages, legacy, extra=b''):
  """Pickles {name: (storage_key, offset, shape, stride)} as torch.save does.

  `storages` is {key: 1-D array}. Each tensor is
  `torch._utils._rebuild_tensor_v2(persistent storage id, offset, shape,
  stride, False, OrderedDict())`; the state dict is a `collections.OrderedDict`.
  """
  ordered_dict = _op_global('collections', 'OrderedDict') + b')R'
  out = b'\x80\x02' + ordered_dict + b'('
  for name, (key, offset, shape, stride) in tensors.items():
    data = storages[key]
    pid = [_op_str('storage'), _op_global('torch', _STORAGE_NAMES[data.dtype]), _op_str(key),
           _op_str('cpu'), _op_int(data.size)]
    if legacy:
      pid.append(b'N')  # No view metadata.
    args = [_op_tuple(pid) + b'Q', _op_int(offset), _op_tuple(map(_op_int, shape)),
            _op_tuple(map(_op_int, stride)), b'\x89', ordered_dict]
    out += _op_str(name) + _op_global('torch._utils', '_rebuild_tensor_v2')
    out += _op_tuple(args) + b'R'
  return out + extra + b'u.'


def _write_torch_file(path, tensors, storages, legacy=False, extra=b''):
  """Writes what `torch.save` writes: a zip archive, or the pre-1.6 stream."""
  torch_save.write_container(path, _pickle_state_dict(tensors, storages, legacy, extra),
                             storages, legacy)


def _write_state_dict(path, state_dict, legacy=False):
  """One contiguous storage per tensor."""
  tensors, storages = {}, {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.array(value, order='C')  # Unlike np.ascontiguousarray, keeps 0-d arrays 0-d.
    tensors[name] = (str(i), 0, value.shape, [s // value.itemsize for s in value.strides])
    storages[str(i)] = value.reshape(-1)
  _write_torch_file(path, tensors, storages, legacy)


# ---------------------------------------------------------------------------
# torchvision's ResNet, written from its definition: shapes and a float64 forward.
# ---------------------------------------------------------------------------


def _torchvision_shapes(layers, bottleneck, width=0.125, num_classes=10):
  """{key: shape} of torchvision.models.ResNet's state dict (float keys only)."""
  shapes = {}

  def bn(prefix, channels):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.{name}'] = (channels,)

  base = int(round(64 * width))
  shapes['conv1.weight'] = (base, 3, 7, 7)
  bn('bn1', base)
  inplanes = base
  for i, num_blocks in enumerate(layers):
    planes = base * 2 ** i
    for b in range(num_blocks):
      prefix, stride = f'layer{i + 1}.{b}', 2 if i > 0 and b == 0 else 1
      if bottleneck:
        convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
      else:
        convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
      for j, shape in enumerate(convs):
        shapes[f'{prefix}.conv{j + 1}.weight'] = shape
        bn(f'{prefix}.bn{j + 1}', shape[0])
      out = convs[-1][0]
      if stride != 1 or inplanes != out:
        shapes[f'{prefix}.downsample.0.weight'] = (out, inplanes, 1, 1)
        bn(f'{prefix}.downsample.1', out)
      inplanes = out
  shapes['fc.weight'] = (num_classes, inplanes)
  shapes['fc.bias'] = (num_classes,)
  return shapes


def _random_state_dict(shapes, seed=0):
  """Random values of torchvision's layout, scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for key, shape in shapes.items():
    if key.endswith('running_var') or (key.endswith('weight') and len(shape) == 1):
      value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 4:
      value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    else:
      value = rng.normal(0, 0.1, shape)
    state_dict[key] = value.astype(np.float32)
    if key.endswith('running_var'):
      state_dict[key[:-len('running_var')] + 'num_batches_tracked'] = np.array(7, np.int64)
  return state_dict


def _conv(x, w, stride, pad):
  """NCHW convolution by explicit im2col: x [N, C, H, W], w [O, C, kh, kw]."""
  n, c, h, wd = x.shape
  kh, kw = w.shape[2:]
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, oh, ow))
  for i in range(kh):
    for j in range(kw):
      cols[:, :, i, j] = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
  return np.einsum('nckluv,ockl->nouv', cols, w)


def _bn(x, sd, prefix):
  """Eval-mode BatchNorm2d, eps 1e-5."""
  col = lambda name: sd[f'{prefix}.{name}'].astype(np.float64)[None, :, None, None]
  return (x - col('running_mean')) / np.sqrt(col('running_var') + 1e-5) * col('weight') + col(
      'bias')


def _maxpool_3x3_s2_p1(x):
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  oh, ow = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  return np.max([x[:, :, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)],
                axis=0)


def _torchvision_block(x, sd, prefix, stride, bottleneck):
  relu = lambda v: np.maximum(v, 0)
  w = lambda name: sd[f'{prefix}.{name}.weight'].astype(np.float64)
  if bottleneck:  # v1.5: the stride is on the 3x3 convolution.
    out = relu(_bn(_conv(x, w('conv1'), 1, 0), sd, f'{prefix}.bn1'))
    out = relu(_bn(_conv(out, w('conv2'), stride, 1), sd, f'{prefix}.bn2'))
    out = _bn(_conv(out, w('conv3'), 1, 0), sd, f'{prefix}.bn3')
  else:
    out = relu(_bn(_conv(x, w('conv1'), stride, 1), sd, f'{prefix}.bn1'))
    out = _bn(_conv(out, w('conv2'), 1, 1), sd, f'{prefix}.bn2')
  if f'{prefix}.downsample.0.weight' in sd:
    x = _bn(_conv(x, w('downsample.0'), stride, 0), sd, f'{prefix}.downsample.1')
  return relu(out + x)


def _torchvision_forward(sd, x, layers, bottleneck):
  """torchvision.models.ResNet in eval mode: {'stage1'..'stage4' NCHW, 'pooled'}."""
  x = _conv(x.astype(np.float64), sd['conv1.weight'].astype(np.float64), 2, 3)
  x = _maxpool_3x3_s2_p1(np.maximum(_bn(x, sd, 'bn1'), 0))
  features = {}
  for i, num_blocks in enumerate(layers):
    for b in range(num_blocks):
      x = _torchvision_block(x, sd, f'layer{i + 1}.{b}', 2 if i > 0 and b == 0 else 1, bottleneck)
    features[f'stage{i + 1}'] = x
  features['pooled'] = x.mean(axis=(2, 3))
  return features


def _abstract_variables(model, size=32):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


# ---------------------------------------------------------------------------
# Reading checkpoints.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_round_trip_resnet18_state_dict(tmp_path, legacy):
  state_dict = _random_state_dict(_torchvision_shapes((2, 2, 2, 2), bottleneck=False))
  path = tmp_path / 'resnet18.pth'
  _write_state_dict(path, state_dict, legacy)
  loaded = pretrained.load_torch_state_dict(path)
  assert list(loaded) == list(state_dict)
  for key, value in state_dict.items():
    assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_dtypes_strides_offsets_and_shared_storages(tmp_path, legacy):
  shared = np.arange(24, dtype=np.float32)
  storages = {
      'shared': shared,
      'half': np.array([1.5, -2.25, 65504.0], np.float16),
      'bf16': np.array([1.0, -3.5, 0.0078125], ml_dtypes.bfloat16),
      'long': np.array([5, -(2 ** 40)], np.int64),
  }
  tensors = {
      'matrix': ('shared', 0, (4, 6), (6, 1)),
      'transposed': ('shared', 0, (6, 4), (1, 6)),  # Same storage, column-major.
      'window': ('shared', 7, (2, 3), (6, 2)),  # Offset and a step.
      'scalar': ('shared', 23, (), ()),
      'half': ('half', 0, (3,), (1,)),
      'bf16': ('bf16', 0, (3,), (1,)),
      'long': ('long', 1, (), ()),
  }
  path = tmp_path / 'mixed.pth'
  _write_torch_file(path, tensors, storages, legacy)
  loaded = pretrained.load_torch_state_dict(path)
  matrix = shared.reshape(4, 6)
  expected = {
      'matrix': matrix, 'transposed': matrix.T, 'window': matrix[1:3, 1:7:2],
      'scalar': np.float32(23), 'half': storages['half'], 'bf16': storages['bf16'],
      'long': np.int64(-(2 ** 40)),
  }
  for key, value in expected.items():
    assert loaded[key].dtype == np.asarray(value).dtype, key
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_npz(tmp_path):
  state_dict = _random_state_dict(_torchvision_shapes((1, 1, 1, 1), bottleneck=False))
  np.savez(tmp_path / 'weights.npz', **state_dict)
  loaded = pretrained.load_torch_state_dict(tmp_path / 'weights.npz')
  assert sorted(loaded) == sorted(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(loaded[key], value)


def test_read_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    pretrained.load_torch_state_dict(tmp_path / 'missing.pth')
  (tmp_path / 'noise.pth').write_bytes(b'not a checkpoint at all')
  with pytest.raises(ValueError, match='noise.pth: unknown format'):
    pretrained.load_torch_state_dict(tmp_path / 'noise.pth')
  with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as archive:
    archive.writestr('readme.txt', 'hello')
  with pytest.raises(ValueError, match='other.zip: unknown format'):
    pretrained.load_torch_state_dict(tmp_path / 'other.zip')
  # A training checkpoint is not a state dict.
  storages, tensors = {'0': np.zeros(1, np.float32)}, {'w': ('0', 0, (1,), (1,))}
  _write_torch_file(tmp_path / 'train.pth', tensors, storages, extra=_op_str('epoch') + _op_int(3))
  with pytest.raises(ValueError, match="train.pth: expected a state dict.*'epoch' holds a int"):
    pretrained.load_torch_state_dict(tmp_path / 'train.pth')


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_refuses_other_globals(tmp_path, legacy):
  storages = {'0': np.zeros(1, np.float32)}
  tensors = {'w': ('0', 0, (1,), (1,))}
  evil = _op_str('evil') + _op_global('os', 'system') + _op_tuple([_op_str('true')]) + b'R'
  path = tmp_path / 'evil.pth'
  _write_torch_file(path, tensors, storages, legacy, extra=evil)
  with pytest.raises(ValueError, match=r'evil\.pth.*os\.system'):
    pretrained.load_torch_state_dict(path)


# ---------------------------------------------------------------------------
# Mapping onto our variables.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name,layers,bottleneck', [
    ('resnet18', (2, 2, 2, 2), False), ('resnet34', (3, 4, 6, 3), False),
    ('resnet50', (3, 4, 6, 3), True), ('resnet101', (3, 4, 23, 3), True)])
def test_covers_every_torchvision_depth(name, layers, bottleneck):
  variables = _abstract_variables(resnet.get_backbone(name, width=0.125))
  state_dict = _random_state_dict(_torchvision_shapes(layers, bottleneck))
  converted = pretrained.torchvision_to_flax(state_dict, variables)
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  assert len(jax.tree_util.tree_leaves(converted)) == len(leaves)
  for path, leaf in leaves:
    value = converted
    for entry in path:
      value = value[entry.key]
    assert value.shape == leaf.shape and value.dtype == leaf.dtype, path
  np.testing.assert_array_equal(converted['params']['stage3_block1']['downsample_conv']['kernel'],
                                state_dict['layer3.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(converted['batch_stats']['stem_bn']['var'],
                                state_dict['bn1.running_var'])


def test_mapping_errors_name_the_keys():
  variables = _abstract_variables(resnet.ResNetTiny())
  good = _random_state_dict(_torchvision_shapes((1, 1, 1, 1), bottleneck=False))
  bad = dict(good)
  del bad['layer2.0.bn1.running_var']
  bad['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  bad['layer1.0.conv2.weight'] = np.zeros((8, 8, 1, 3), np.float32)
  with pytest.raises(ValueError) as error:
    pretrained.torchvision_to_flax(bad, variables)
  message = str(error.value)
  assert 'missing keys (1): layer2.0.bn1.running_var' in message
  assert 'unexpected keys (1): layer5.0.conv1.weight' in message
  assert 'layer1.0.conv2.weight: expected shape (8, 8, 3, 3), found (8, 8, 1, 3)' in message
  extra = {**variables, 'params': {**variables['params'], 'attention': {'kernel': 0}}}
  with pytest.raises(ValueError, match='no torchvision name .1.: params/attention/kernel'):
    pretrained.torchvision_to_flax(good, extra)
  # A ResNet-50 checkpoint for a ResNet-18: refused, not half loaded.
  with pytest.raises(ValueError, match='layer1.0.conv3.weight'):
    pretrained.torchvision_to_flax(
        _random_state_dict(_torchvision_shapes((3, 4, 6, 3), bottleneck=True)),
        _abstract_variables(resnet.ResNet18(width=0.125)))


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_mapping_errors_name_the_file(tmp_path, legacy):
  state_dict = _random_state_dict(_torchvision_shapes((1, 1, 1, 1), bottleneck=False))
  del state_dict['layer2.0.bn1.running_var']
  state_dict['layer1.0.conv2.weight'] = np.zeros((8, 8, 1, 3), np.float32)
  path = tmp_path / 'wrong.pth'
  _write_state_dict(path, state_dict, legacy)
  variables = _abstract_variables(resnet.ResNetTiny())
  with pytest.raises(ValueError) as error:
    pretrained.load_pretrained_backbone(path, variables, backbone_path=())
  message = str(error.value)
  assert message.startswith(f'{path} does not fit the ResNet variables:'), message
  assert 'missing keys (1): layer2.0.bn1.running_var' in message
  assert 'layer1.0.conv2.weight: expected shape (8, 8, 3, 3), found (8, 8, 1, 3)' in message


# ---------------------------------------------------------------------------
# Numerical reference: our forward with loaded weights == torchvision's forward.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('layers,bottleneck', [((1, 1, 1, 1), False), ((2, 1, 1, 1), True)],
                         ids=['basic_tiny', 'bottleneck'])
# Odd and even sizes: stride-2 3x3 convolutions must pad (1, 1) like torchvision.
@pytest.mark.parametrize('size', [33, 32])
def test_forward_matches_torchvision_reference(layers, bottleneck, size):
  block = resnet.BottleneckBlock if bottleneck else resnet.BasicBlock
  model = resnet.ResNet(stage_sizes=layers, block=block, width=0.125)
  state_dict = _random_state_dict(_torchvision_shapes(layers, bottleneck), seed=1)
  variables = pretrained.torchvision_to_flax(state_dict, _abstract_variables(model, size))
  images = np.random.default_rng(2).normal(size=(2, 3, size, size)).astype(np.float32)
  ours = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))
  reference = _torchvision_forward(state_dict, images, layers, bottleneck)
  for name, expected in reference.items():
    got = np.asarray(ours[name], np.float64)
    if got.ndim == 4:
      got = got.transpose(0, 3, 1, 2)  # NHWC -> NCHW.
    assert got.shape == expected.shape, name
    error = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
    assert error < 1e-4, f'{name}: relative error {error:.2e}'
