"""timm and Hugging Face hub weight files, and training checkpoints, as pretrained backbones.

One set of ResNet weights is written as torchvision's bare state dict (tests/
test_pretrained.py's torch.save emulator) and as every other file a user may hold: a
`.safetensors` file, timm's `pytorch_model.bin`, checkpoints of timm's and torchvision's
train.py (EMA weights beside other ones, 'module.' prefixes, args and optimizer state),
'_orig_mod.' keys of torch.compile, a hub snapshot folder. Each must give the very
parameters the torchvision file gives. Wrong files must be refused naming the file,
the keys, and where the keys tell, the network the file holds.
"""

import argparse
import collections
import io
import json
import pickle
import struct
import zipfile

import chex
import numpy as np
import pytest
import safetensors.numpy

from fgjax.models import pretrained
from fgjax.models import resnet
from fgjax.models import timm_weights
from test_pretrained import _abstract_variables  # pylint: disable=g-bad-import-order
from test_pretrained import _random_state_dict
from test_pretrained import _torchvision_shapes
from test_pretrained import _write_state_dict

LAYERS = (1, 1, 1, 1)  # A tiny bottleneck ResNet (base width 8).

# ---------------------------------------------------------------------------
# A torch.save emulator for whole checkpoints: Python's pickler, with tensors
# pickled as torch pickles them and storages as persistent ids.
# ---------------------------------------------------------------------------


class _Tensor:
  """An array that pickles as `torch._utils._rebuild_tensor_v2(storage, ...)`."""

  def __init__(self, array):
    self.array = np.array(array, order='C')


class _TorchGlobal:
  """Pickles as the global `module.name` (torch cannot be imported here)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *unused):  # The pickler asks a reduce function to be callable.
    raise NotImplementedError


_STORAGE_TYPES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage'}


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes `obj` as torch.save's pickle; the tensors' data go to `self.storages`."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy, self.storages = legacy, {}

  def _save_global(self, obj):
    self.write(b'c' + f'{obj.module}\n{obj.name}\n'.encode())

  dispatch[_TorchGlobal] = _save_global

  def reducer_override(self, obj):
    if not isinstance(obj, _Tensor):
      return NotImplemented
    key, array = str(len(self.storages)), obj.array
    self.storages[key] = array.reshape(-1)
    pid = ('storage', _TorchGlobal('torch', _STORAGE_TYPES[array.dtype]), key, 'cpu', array.size)
    storage = _PersistentId(pid + (None,) if self.legacy else pid)
    stride = tuple(s // array.itemsize for s in array.strides)
    return (_TorchGlobal('torch._utils', '_rebuild_tensor_v2'),
            (storage, 0, array.shape, stride, False, collections.OrderedDict()))

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, _PersistentId) else None


class _PersistentId:

  def __init__(self, pid):
    self.pid = pid


def _torch_save(path, obj, legacy=False):
  """What `torch.save(obj, path)` writes (zip, or with legacy=True the pre-1.6 stream),
  where `obj`'s tensors are `_Tensor`s."""
  payload = io.BytesIO()
  pickler = _TorchPickler(payload, legacy)
  pickler.dump(obj)
  if legacy:
    sys_info = {'protocol_version': 1001, 'little_endian': True,
                'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
    with open(path, 'wb') as f:
      for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
        f.write(pickle.dumps(header, protocol=2))
      f.write(payload.getvalue() + pickle.dumps(list(pickler.storages), protocol=2))
      for data in pickler.storages.values():
        f.write(struct.pack('<q', data.size) + data.astype(data.dtype.newbyteorder('<')).tobytes())
    return
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr('archive/data.pkl', payload.getvalue())
    archive.writestr('archive/byteorder', 'little')
    for key, data in pickler.storages.items():
      archive.writestr(f'archive/data/{key}', data.tobytes())
    archive.writestr('archive/version', '3\n')


def _tensors(state_dict, prefix=''):
  return collections.OrderedDict((prefix + k, _Tensor(v)) for k, v in state_dict.items())


def _optimizer_state(state_dict):
  """SGD's state_dict: momentum buffers (tensors the loader must not need) and groups."""
  floats = [k for k, v in state_dict.items() if v.dtype == np.float32]
  return {'state': {i: {'momentum_buffer': _Tensor(np.full_like(state_dict[k], 0.5))}
                    for i, k in enumerate(floats)},
          'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'nesterov': False,
                            'params': list(range(len(floats)))}]}


# ---------------------------------------------------------------------------
# One set of weights, every file.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def weights():
  """(the weights, other weights of the same shapes: a checkpoint's non-EMA ones)."""
  shapes = _torchvision_shapes(LAYERS, bottleneck=True)
  return _random_state_dict(shapes, seed=0), _random_state_dict(shapes, seed=1)


@pytest.fixture(scope='module')
def variables():
  return _abstract_variables(resnet.ResNet(stage_sizes=LAYERS, block=resnet.BottleneckBlock,
                                           width=0.125))


@pytest.fixture(scope='module')
def expected(weights, variables, tmp_path_factory):
  """What torchvision's file of the weights gives."""
  path = tmp_path_factory.mktemp('torchvision') / 'resnet.pth'
  _write_state_dict(path, weights[0])
  return pretrained.load_pretrained_backbone(path, variables, backbone_path=())


def _hub_config(architecture='resnet50.a1_in1k', mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), **extra):
  """timm's config.json of a hub snapshot, as `push_to_hf_hub` writes it."""
  return {'architecture': architecture, 'num_classes': 1000, 'num_features': 2048,
          'global_pool': 'avg', **extra,
          'pretrained_cfg': {'tag': 'a1_in1k', 'input_size': [3, 224, 224],
                             'interpolation': 'bicubic', 'crop_pct': 0.95, 'mean': list(mean),
                             'std': list(std), 'num_classes': 1000, 'first_conv': 'conv1',
                             'classifier': 'fc'}}


def _write_safetensors(folder, good, other):
  del other
  safetensors.numpy.save_file(good, str(folder / 'model.safetensors'))
  return folder / 'model.safetensors'


def _write_timm_bin(folder, good, other):
  """timm's hub pytorch_model.bin: a zip torch.save of the state dict, keys sorted."""
  del other
  kept = {k: good[k] for k in sorted(good) if not k.endswith('num_batches_tracked')}
  _torch_save(folder / 'pytorch_model.bin', _tensors(kept))
  return folder / 'pytorch_model.bin'


def _timm_train_checkpoint(good, other, arch='resnet'):
  """timm's train.py CheckpointSaver: EMA weights beside the trained ones."""
  return {'epoch': 12, 'arch': arch, 'state_dict': _tensors(other),
          'optimizer': _optimizer_state(other), 'version': 2,
          'args': argparse.Namespace(model='resnet50', lr=0.1, model_ema=True, amp=True,
                                     device='cuda:0', input_size=None),
          'amp_scaler': {'scale': 65536.0, 'growth_factor': 2.0, '_growth_tracker': 17},
          'metric': 76.3, 'state_dict_ema': _tensors(good)}


def _write_timm_train_checkpoint(folder, good, other):
  _torch_save(folder / 'model_best.pth.tar', _timm_train_checkpoint(good, other))
  return folder / 'model_best.pth.tar'


def _write_timm_train_checkpoint_legacy(folder, good, other):
  """The pre-1.6 stream: the optimizer's storages lie between the ones read."""
  _torch_save(folder / 'checkpoint-12.pth.tar', _timm_train_checkpoint(good, other), legacy=True)
  return folder / 'checkpoint-12.pth.tar'


def _write_torchvision_train_checkpoint(folder, good, other):
  """torchvision's references/classification/train.py under DDP, --model-ema."""
  ema = _tensors(good, 'module.')
  ema['n_averaged'] = _Tensor(np.array(480, np.int64))
  checkpoint = {'model': _tensors(other), 'optimizer': _optimizer_state(other),
                'lr_scheduler': {'T_max': 600, 'base_lrs': [0.5], 'last_epoch': 4,
                                 '_step_count': 5, '_last_lr': [0.49]},
                'epoch': 4, 'args': argparse.Namespace(model='resnet50', weights=None),
                'model_ema': ema}
  _torch_save(folder / 'checkpoint.pth', checkpoint)
  return folder / 'checkpoint.pth'


def _write_imagenet_example_checkpoint(folder, good, other):
  """PyTorch's examples/imagenet main.py: DataParallel keys, 'arch' only."""
  del other
  checkpoint = {'epoch': 90, 'arch': 'resnet50', 'state_dict': _tensors(good, 'module.'),
                'best_acc1': 76.1, 'optimizer': _optimizer_state(good)}
  _torch_save(folder / 'model_best.pth.tar', checkpoint)
  return folder / 'model_best.pth.tar'


def _write_compiled(folder, good, other):
  """A state dict of torch.compile's wrapper, itself under DDP for one key."""
  del other
  state_dict = _tensors(good, '_orig_mod.')
  state_dict['module._orig_mod.fc.bias'] = state_dict.pop('_orig_mod.fc.bias')
  _torch_save(folder / 'compiled.pth', state_dict)
  return folder / 'compiled.pth'


def _write_hub_folder(folder, good, other):
  """A hub snapshot: config.json beside model.safetensors; the folder is passed."""
  _write_safetensors(folder, good, other)
  (folder / 'config.json').write_text(json.dumps(_hub_config()))
  return folder


FILES = {
    'safetensors': _write_safetensors,
    'timm_pytorch_model_bin': _write_timm_bin,
    'timm_train_checkpoint': _write_timm_train_checkpoint,
    'timm_train_checkpoint_legacy': _write_timm_train_checkpoint_legacy,
    'torchvision_train_checkpoint': _write_torchvision_train_checkpoint,
    'imagenet_example_checkpoint': _write_imagenet_example_checkpoint,
    'torch_compile_prefixes': _write_compiled,
    'hub_folder': _write_hub_folder,
}


@pytest.mark.parametrize('kind', list(FILES))
def test_loads_the_torchvision_files_parameters(tmp_path, weights, variables, expected, kind):
  path = FILES[kind](tmp_path, *weights)
  loaded = pretrained.load_pretrained_backbone(path, variables, backbone_path=())
  chex.assert_trees_all_equal(loaded, expected)


def test_the_other_weights_would_differ(weights, variables, expected):
  """Else loading a checkpoint's non-EMA weights could pass the test above."""
  other = pretrained.load_pretrained_backbone(weights[1], variables, backbone_path=())
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(other, expected)


def test_hub_folder_is_not_a_fgjax_run(tmp_path, weights):
  _write_hub_folder(tmp_path, *weights)
  assert not pretrained.is_fgjax_run(tmp_path)
  assert pretrained.hub_weight_file(tmp_path) == str(tmp_path / 'model.safetensors')


def test_checkpoint_entry_and_recorded_model(tmp_path, weights):
  path = _write_timm_train_checkpoint(tmp_path, *weights)
  state_dict, name = pretrained.read_backbone_state_dict(path)
  assert name == f"{path} (its 'state_dict_ema')"
  np.testing.assert_array_equal(state_dict['conv1.weight'], weights[0]['conv1.weight'])
  read = pretrained.read_weight_file(_write_torchvision_train_checkpoint(tmp_path, *weights))
  assert (read.entry, read.arch) == ('model_ema', 'resnet50')
  assert 'module.conv1.weight' in read.state_dict and 'n_averaged' in read.state_dict


# ---------------------------------------------------------------------------
# Wrong files: refused naming the file, the keys and what the file holds.
# ---------------------------------------------------------------------------


def _refused(source, variables, *fragments):
  """Loading `source` raises a ValueError starting with its name, holding `fragments`."""
  with pytest.raises(ValueError) as error:
    pretrained.load_pretrained_backbone(source, variables, backbone_path=())
  message = str(error.value)
  assert message.startswith(str(source)), message
  for fragment in fragments:
    assert fragment in message, f'{fragment!r} not in: {message}'
  return message


def _without(state_dict, key):
  return {k: v for k, v in state_dict.items() if k != key}


_WRONG_KEYS = {  # A change to the weights, and what the refusal lists.
    'missing': (lambda sd: _without(sd, 'layer2.0.bn1.running_var'),
                'missing keys (1): layer2.0.bn1.running_var'),
    'unexpected': (lambda sd: {**sd, 'layer1.0.extra.weight': np.ones(3, np.float32)},
                   'unexpected keys (1): layer1.0.extra.weight'),
    'mis_shaped': (lambda sd: {**sd, 'bn1.weight': np.ones(9, np.float32)},
                   'mis-shaped keys (1): bn1.weight: expected shape (8,), found (9,)'),
}


@pytest.mark.parametrize('case', list(_WRONG_KEYS))
def test_wrong_keys_in_a_safetensors_file(tmp_path, weights, variables, case):
  change, listed = _WRONG_KEYS[case]
  path = _write_safetensors(tmp_path, change(weights[0]), None)
  message = _refused(path, variables, f'{path} does not fit the ResNet variables:', listed)
  assert 'It holds' not in message  # A plain ResNet: nothing to say of its layout.


@pytest.mark.parametrize('case', list(_WRONG_KEYS))
def test_wrong_keys_in_a_training_checkpoint(tmp_path, weights, variables, case):
  """The EMA weights are wrong, the others right: the error names the EMA entry."""
  change, listed = _WRONG_KEYS[case]
  path = tmp_path / 'last.pth.tar'
  _torch_save(path, _timm_train_checkpoint(change(weights[0]), weights[1]))
  _refused(path, variables, f"{path} (its 'state_dict_ema') does not fit", listed)


@pytest.fixture(scope='module')
def resnet50_weights():
  return _random_state_dict(_torchvision_shapes((3, 4, 6, 3), bottleneck=True), seed=3)


@pytest.fixture(scope='module')
def resnet50_variables():
  return _abstract_variables(resnet.ResNet50(width=0.125))


def _resnet50d_style(state_dict):
  """timm's resnet50d: a deep 3x3 stem 'conv1.0/1/3/4/6' (bn1 after it) and
  average-pool shortcuts 'downsample.1/2' (the pool has no weights)."""
  changed = {}
  for key, value in state_dict.items():
    if key != 'conv1.weight':
      changed[key.replace('downsample.1.', 'downsample.2.').replace(
          'downsample.0.', 'downsample.1.')] = value
  for index, shape in ((0, (4, 3, 3, 3)), (3, (4, 4, 3, 3)), (6, (8, 4, 3, 3))):
    changed[f'conv1.{index}.weight'] = np.ones(shape, np.float32)
    if index < 6:
      for name in ('weight', 'bias', 'running_mean', 'running_var'):
        changed[f'conv1.{index + 1}.{name}'] = np.ones(shape[0], np.float32)
  return changed


def _seresnet50_style(state_dict):
  """timm's seresnet50: squeeze-excitation 'se.fc1/fc2' in every block."""
  changed = dict(state_dict)
  for key, value in state_dict.items():
    if key.endswith('.conv3.weight'):
      block, channels = key[:-len('.conv3.weight')], value.shape[0]
      changed[f'{block}.se.fc1.weight'] = np.ones((channels // 16, channels, 1, 1), np.float32)
      changed[f'{block}.se.fc2.weight'] = np.ones((channels, channels // 16, 1, 1), np.float32)
  return changed


def _resnetv2_style(unused):
  return {'stem.conv.weight': np.ones((8, 3, 7, 7), np.float32),
          'stages.0.blocks.0.norm1.weight': np.ones(8, np.float32),
          'stages.0.blocks.0.conv1.weight': np.ones((8, 8, 1, 1), np.float32)}


def _resnet18_style(unused):
  return _random_state_dict(_torchvision_shapes((2, 2, 2, 2), bottleneck=False))


_OTHER_NETWORKS = {  # The file's weights, and what the refusal says they are.
    'resnet50d': (_resnet50d_style, [
        'missing keys (17): conv1.weight', 'unexpected keys (31): conv1.0.weight',
        'mis-shaped keys (4): layer1.0.downsample.1.weight',
        "timm's resnet50d layout: a deep 3x3 stem 'conv1.0/1/3/4/6' of widths [4, 4, 8]",
        "average-pool shortcuts 'downsample.1/2'", 'the model is a resnet50 of base width 8']),
    'seresnet50': (_seresnet50_style, [
        'unexpected keys (32): layer1.0.se.fc1.weight', "timm's seresnet50 layout",
        'squeeze-excitation attention']),
    'resnetv2': (_resnetv2_style, ['unexpected keys (3): stages.0.blocks.0.conv1.weight',
                                   'a timm ResNetV2 (pre-activation blocks']),
    'resnet18': (_resnet18_style, ['missing keys (', 'layer1.0.conv3.weight',
                                   'It holds a resnet18 of base width 8; the model is a '
                                   'resnet50 of base width 8']),
}


@pytest.mark.parametrize('network', list(_OTHER_NETWORKS))
def test_other_networks_are_refused_as_what_they_are(tmp_path, resnet50_weights,
                                                     resnet50_variables, network):
  make, fragments = _OTHER_NETWORKS[network]
  path = _write_safetensors(tmp_path, make(resnet50_weights), None)
  _refused(path, resnet50_variables, *fragments)


def test_prefixes_that_collide_are_refused(weights, variables):
  state_dict = {**weights[0], 'module.conv1.weight': weights[0]['conv1.weight']}
  with pytest.raises(ValueError, match="The state dict: keys 'conv1.weight' and "
                     "'module.conv1.weight' are both 'conv1.weight'"):
    pretrained.load_pretrained_backbone(state_dict, variables, backbone_path=())


# ---------------------------------------------------------------------------
# Malformed safetensors files.
# ---------------------------------------------------------------------------


def _safetensors_parts(path):
  """(header dict, data bytes) of a .safetensors file."""
  raw = path.read_bytes()
  size = int.from_bytes(raw[:8], 'little')
  return json.loads(raw[8:8 + size]), raw[8 + size:]


def _write_safetensors_parts(path, header, data):
  encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
  path.write_bytes(len(encoded).to_bytes(8, 'little') + encoded + data)


def _last_tensor(header):
  return max((k for k in header if k != '__metadata__'),
             key=lambda k: header[k]['data_offsets'][1])


def _corrupt_header(header, data):
  del header
  return b'{"conv1.weight": {"dtype": "F32", "sha', data


def _truncated(header, data):
  return header, data[:-6]


def _shape_beyond_data(header, data):
  header['bn1.weight']['shape'] = [60000, 60000]
  return header, data


def _unknown_dtype(header, data):
  header['bn1.weight']['dtype'] = 'C64'
  return header, data


_MALFORMED_SAFETENSORS = {  # A corruption, and what the refusal says (with its key).
    'corrupt_header': (_corrupt_header, ['its safetensors header is not JSON']),
    'truncated_data': (_truncated, ['reach past the', 'bytes of data the file holds']),
    'shape_beyond_data': (_shape_beyond_data, [
        "tensor 'bn1.weight': shape (60000, 60000) of F32 needs 14400000000 bytes"]),
    'unknown_dtype': (_unknown_dtype, ["tensor 'bn1.weight': dtype 'C64' is not supported"]),
    'header_size_beyond_file': (None, ['its first 8 bytes declare a header of 1099511627776 '
                                       'bytes']),
}


@pytest.mark.parametrize('case', list(_MALFORMED_SAFETENSORS))
def test_malformed_safetensors_files(tmp_path, weights, variables, case):
  corrupt, fragments = _MALFORMED_SAFETENSORS[case]
  path = _write_safetensors(tmp_path, weights[0], None)
  header, data = _safetensors_parts(path)
  if case == 'truncated_data':
    fragments = fragments + [f'tensor {_last_tensor(header)!r}']
  if corrupt is None:
    path.write_bytes((1 << 40).to_bytes(8, 'little') + path.read_bytes()[8:])
  else:
    _write_safetensors_parts(path, *corrupt(header, data))
  _refused(path, variables, f'{path}: ', *fragments)
  assert issubclass(pretrained.WeightFileError, ValueError)


# ---------------------------------------------------------------------------
# What a hub config.json or a training checkpoint says of the weights.
# ---------------------------------------------------------------------------

_WRONG_CONFIGS = {  # config.json beside the weights, and what the refusal says.
    'architecture': (_hub_config('resnet50d.a1_in1k'),
                     ["'architecture' of timm's", "names the architecture 'resnet50d.a1_in1k'"]),
    'blur_architecture': (_hub_config('resnetblur50.bt_in1k'),
                          ["names the architecture 'resnetblur50.bt_in1k'"]),
    'mean_std': (_hub_config(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                 ["'pretrained_cfg' of timm's", "'mean' [0.5, 0.5, 0.5] and 'std' "
                  '[0.5, 0.5, 0.5]', "fgjax normalises with ImageNet's mean"]),
    'model_args': (_hub_config(model_args={'stem_type': 'deep', 'num_classes': 10}),
                   ["'model_args' of timm's", "with 'stem_type' set"]),
}


@pytest.mark.parametrize('case', list(_WRONG_CONFIGS))
@pytest.mark.parametrize('weights_file', ['model.safetensors', 'pytorch_model.bin'])
def test_hub_config_beside_the_file_is_checked(tmp_path, weights, variables, case,
                                               weights_file):
  config, fragments = _WRONG_CONFIGS[case]
  write = _write_safetensors if weights_file.endswith('safetensors') else _write_timm_bin
  path = write(tmp_path, *weights)
  (tmp_path / 'config.json').write_text(json.dumps(config))
  config_path = str(tmp_path / 'config.json')
  _refused(path, variables, f'{path}: ', config_path, *fragments)
  # The hub folder too: not taken for a fgjax run, its weight file checked.
  assert not pretrained.is_fgjax_run(tmp_path)
  _refused(tmp_path, variables, f'{path}: ', *fragments)


def test_config_json_of_no_hub_model_is_left_alone(tmp_path, weights, variables, expected):
  """A fgjax workdir's config.json, or an unreadable one, says nothing of the weights."""
  path = _write_safetensors(tmp_path, *weights)
  for text in (json.dumps({'model': {'backbone': 'resnet50'}, 'seed': 0}), '{not json'):
    (tmp_path / 'config.json').write_text(text)
    loaded = pretrained.load_pretrained_backbone(path, variables, backbone_path=())
    chex.assert_trees_all_equal(loaded, expected)


@pytest.mark.parametrize('model,refused', [
    ('resnetblur50', True), ('resnet50d', True), ('seresnext50_32x4d', True),
    ('hf-hub:timm/resnet50.a1_in1k', False), ('timm/resnet50.tv2_in1k', False),
    ('resnet50', False), ('tv_resnet50', False)])
def test_model_a_training_checkpoint_records(tmp_path, weights, variables, expected, model,
                                             refused):
  checkpoint = _timm_train_checkpoint(*weights)
  checkpoint['args'] = argparse.Namespace(model=model, lr=0.1)
  path = tmp_path / 'last.pth.tar'
  _torch_save(path, checkpoint)
  if refused:
    _refused(path, variables, f"the training checkpoint names the architecture {model!r}")
  else:
    chex.assert_trees_all_equal(
        pretrained.load_pretrained_backbone(path, variables, backbone_path=()), expected)


@pytest.mark.parametrize('arch,refused', [
    ('resnet', False), ('distributeddataparallel', False), ('resnet18', False),
    ('wide_resnet50_2', True)])
def test_arch_without_args(tmp_path, weights, variables, arch, refused):
  """timm records the class name (of the wrapper, under DDP); PyTorch's example the model."""
  checkpoint = _timm_train_checkpoint(*weights, arch=arch)
  del checkpoint['args']
  path = tmp_path / 'last.pth.tar'
  _torch_save(path, checkpoint)
  if refused:
    _refused(path, variables, f'names the architecture {arch!r}')
  else:
    pretrained.load_pretrained_backbone(path, variables, backbone_path=())
