"""timm and Hugging Face hub weight files, and training checkpoints, as pretrained backbones.

One set of ResNet weights is written as torchvision's bare state dict (by tests/
test_pretrained.py's torch.save emulator) and as every other file a user may hold (by
tests/torch_save.py's): a `.safetensors` file, timm's `pytorch_model.bin`, checkpoints
of timm's and torchvision's train.py (EMA weights beside other ones, 'module.'
prefixes, args and optimizer state), '_orig_mod.' keys of torch.compile, a hub
snapshot folder. Each must give the very parameters the torchvision file gives. Wrong
files must be refused naming the file, the keys, and where the keys tell, the network
the file holds.
"""

import argparse
import json

import chex
import numpy as np
import pytest
import safetensors.numpy

from fgjax.models import pretrained
from fgjax.models import resnet
from test_pretrained import _abstract_variables  # pylint: disable=g-bad-import-order
from test_pretrained import _random_state_dict
from test_pretrained import _torchvision_shapes
from test_pretrained import _write_state_dict
from torch_save import Tensor
from torch_save import tensors
from torch_save import torch_save
from torch_save import TorchGlobal

LAYERS = (1, 1, 1, 1)  # A tiny bottleneck ResNet (base width 8).


def _optimizer_state(state_dict):
  """SGD's state_dict: momentum buffers (tensors the loader must not need) and groups."""
  floats = [k for k, v in state_dict.items() if v.dtype == np.float32]
  return {'state': {i: {'momentum_buffer': Tensor(np.full_like(state_dict[k], 0.5))}
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


def _write_safetensors(folder, good, unused_other=None, name='model.safetensors'):
  safetensors.numpy.save_file(good, str(folder / name))
  return folder / name


def _timm_train_checkpoint(good, other, arch='resnet'):
  """timm's train.py CheckpointSaver: EMA weights beside the trained ones."""
  return {'epoch': 12, 'arch': arch, 'state_dict': tensors(other),
          'optimizer': _optimizer_state(other), 'version': 2,
          'args': argparse.Namespace(model='resnet50', lr=0.1, model_ema=True, amp=True,
                                     device=TorchGlobal('torch', 'device', 'cuda', 0)),
          'amp_scaler': {'scale': 65536.0, 'growth_factor': 2.0, '_growth_tracker': 17},
          'metric': 76.3, 'state_dict_ema': tensors(good)}


def _torchvision_train_checkpoint(good, other):
  """torchvision's references/classification/train.py under DDP, with --model-ema."""
  ema = tensors(good, 'module.')
  ema['n_averaged'] = Tensor(np.array(480, np.int64))
  return {'model': tensors(other), 'optimizer': _optimizer_state(other),
          'lr_scheduler': {'T_max': 600, 'base_lrs': [0.5], 'last_epoch': 4, '_last_lr': [0.4]},
          'epoch': 4, 'args': argparse.Namespace(model='resnet50', weights=None),
          'model_ema': ema}


def _imagenet_example_checkpoint(good, unused_other):
  """PyTorch's examples/imagenet main.py: DataParallel keys, 'arch' only."""
  return {'epoch': 90, 'arch': 'resnet50', 'state_dict': tensors(good, 'module.'),
          'best_acc1': 76.1, 'optimizer': _optimizer_state(good)}


def _timm_hub_state_dict(good, unused_other):
  """timm's hub pytorch_model.bin: the state dict, keys sorted, no batch counters."""
  return tensors({k: good[k] for k in sorted(good) if not k.endswith('num_batches_tracked')})


def _compiled_state_dict(good, unused_other):
  """torch.compile's wrapper's keys, one of them also under DDP."""
  state_dict = tensors(good, '_orig_mod.')
  state_dict['module._orig_mod.fc.bias'] = state_dict.pop('_orig_mod.fc.bias')
  return state_dict


_TORCH_FILES = {  # name: (file name, (weights, other weights) -> what is saved, legacy).
    'timm_pytorch_model_bin': ('pytorch_model.bin', _timm_hub_state_dict, False),
    'timm_train_checkpoint': ('model_best.pth.tar', _timm_train_checkpoint, False),
    # The pre-1.6 stream: the optimizer's storages lie between the ones read.
    'timm_train_checkpoint_legacy': ('last.pth.tar', _timm_train_checkpoint, True),
    'torchvision_train_checkpoint': ('checkpoint.pth', _torchvision_train_checkpoint, False),
    'imagenet_example_checkpoint': ('model_best.pth.tar', _imagenet_example_checkpoint, False),
    'torch_compile_prefixes': ('compiled.pth', _compiled_state_dict, False),
}


def _write(kind, folder, good, other):
  """Writes `good` (and `other`, where a checkpoint holds two) as `kind`; its path."""
  if kind == 'safetensors':
    return _write_safetensors(folder, good)
  if kind == 'safetensors_named_pth':  # Found by its header, whatever its name.
    return _write_safetensors(folder, good, name='weights.pth')
  if kind == 'hub_folder':  # A hub snapshot: config.json beside model.safetensors.
    _write_safetensors(folder, good)
    (folder / 'config.json').write_text(json.dumps(_hub_config()))
    return folder
  name, make, legacy = _TORCH_FILES[kind]
  torch_save(folder / name, make(good, other), legacy)
  return folder / name


FILES = ['safetensors', 'safetensors_named_pth', 'hub_folder', *_TORCH_FILES]


@pytest.mark.parametrize('kind', FILES)
def test_loads_the_torchvision_files_parameters(tmp_path, weights, variables, expected, kind):
  path = _write(kind, tmp_path, *weights)
  loaded = pretrained.load_pretrained_backbone(path, variables, backbone_path=())
  chex.assert_trees_all_equal(loaded, expected)


def test_the_other_weights_would_differ(weights, variables, expected):
  """Else loading a checkpoint's non-EMA weights could pass the test above."""
  other = pretrained.load_pretrained_backbone(weights[1], variables, backbone_path=())
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(other, expected)


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
  path = _write_safetensors(tmp_path, change(weights[0]))
  message = _refused(path, variables, f'{path} does not fit the ResNet variables:', listed)
  assert 'It holds' not in message  # A plain ResNet: nothing to say of its layout.


@pytest.mark.parametrize('case', list(_WRONG_KEYS))
def test_wrong_keys_in_a_training_checkpoint(tmp_path, weights, variables, case):
  """The EMA weights are wrong, the others right: the error names the EMA entry."""
  change, listed = _WRONG_KEYS[case]
  path = tmp_path / 'last.pth.tar'
  torch_save(path, _timm_train_checkpoint(change(weights[0]), weights[1]))
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


_OTHER_NETWORKS = {  # The file's weights, and what the refusal says they are.
    'resnet50d': (_resnet50d_style, [
        'missing keys (17): conv1.weight', 'unexpected keys (31): conv1.0.weight',
        'mis-shaped keys (4): layer1.0.downsample.1.weight',
        "timm's resnet50d layout: a deep 3x3 stem 'conv1.0/1/3/4/6' of widths [4, 4, 8]",
        "average-pool shortcuts 'downsample.1/2'", 'the model is a resnet50 of base width 8']),
    'seresnet50': (_seresnet50_style, [
        'unexpected keys (32): layer1.0.se.fc1.weight', "timm's seresnet50 layout",
        'squeeze-excitation attention']),
    'resnetv2': (lambda unused: {'stem.conv.weight': np.ones((8, 3, 7, 7), np.float32),
                                 'stages.0.blocks.0.conv1.weight': np.ones((8, 8, 1, 1),
                                                                           np.float32)},
                 ['unexpected keys (2): stage', 'a timm ResNetV2 (pre-activation blocks']),
    'resnet18': (lambda unused: _random_state_dict(_torchvision_shapes((2, 2, 2, 2), False)),
                 ['missing keys (', 'layer1.0.conv3.weight', 'It holds a resnet18 of base '
                  'width 8; the model is a resnet50 of base width 8']),
}


@pytest.mark.parametrize('network', list(_OTHER_NETWORKS))
def test_other_networks_are_refused_as_what_they_are(tmp_path, resnet50_weights,
                                                     resnet50_variables, network):
  make, fragments = _OTHER_NETWORKS[network]
  path = _write_safetensors(tmp_path, make(resnet50_weights))
  _refused(path, resnet50_variables, *fragments)


def test_prefixes_that_collide_are_refused(weights, variables):
  state_dict = {**weights[0], 'module.conv1.weight': weights[0]['conv1.weight']}
  with pytest.raises(ValueError, match="The state dict: keys 'conv1.weight' and "
                     "'module.conv1.weight' are both 'conv1.weight'"):
    pretrained.load_pretrained_backbone(state_dict, variables, backbone_path=())


# ---------------------------------------------------------------------------
# Malformed safetensors files.
# ---------------------------------------------------------------------------


def _with_bn1_weight(field, value):
  """A header change: bn1.weight's `field` set to `value`."""
  def change(header, data):
    header['bn1.weight'][field] = value
    return json.dumps(header).encode(), data
  return change


_MALFORMED_SAFETENSORS = {  # A change to (header, data), and what the refusal says.
    'corrupt_header': (lambda header, data: (b'{"conv1.weight": {"dtype": "F32", "sha', data),
                       ['its safetensors header is not JSON']),
    'truncated_data': (lambda header, data: (json.dumps(header).encode(), data[:-6]),
                       ['reach past the', 'bytes of data the file holds']),
    'unknown_dtype': (_with_bn1_weight('dtype', 'C64'),
                      ["tensor 'bn1.weight': dtype 'C64' is not supported"]),
    'offsets_of_other_size': (_with_bn1_weight('shape', [4]),
                              ["tensor 'bn1.weight': shape (4,) of F32 needs 16 bytes, but "
                               'its data_offsets']),
}


@pytest.mark.parametrize('case', list(_MALFORMED_SAFETENSORS))
def test_malformed_safetensors_files(tmp_path, weights, variables, case):
  """More (and allocation checks) in tests/test_weight_file.py."""
  corrupt, fragments = _MALFORMED_SAFETENSORS[case]
  path = _write_safetensors(tmp_path, weights[0])
  raw = path.read_bytes()
  size = int.from_bytes(raw[:8], 'little')
  header, data = json.loads(raw[8:8 + size]), raw[8 + size:]
  last = max((k for k in header if k != '__metadata__'),
             key=lambda k: header[k]['data_offsets'][1])  # What a truncation cuts.
  header, data = corrupt(header, data)
  path.write_bytes(len(header).to_bytes(8, 'little') + header + data)
  message = _refused(path, variables, f'{path}: ', *fragments)
  assert case != 'truncated_data' or f'tensor {last!r}' in message, message


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
  kind = 'safetensors' if weights_file.endswith('safetensors') else 'timm_pytorch_model_bin'
  path = _write(kind, tmp_path, *weights)
  (tmp_path / 'config.json').write_text(json.dumps(config))
  config_path = str(tmp_path / 'config.json')
  _refused(path, variables, f'{path}: ', config_path, *fragments)
  # The hub folder too: not taken for a fgjax run, its weight file checked.
  assert not pretrained.is_fgjax_run(tmp_path)
  _refused(tmp_path, variables, f'{path}: ', *fragments)


def test_config_json_of_no_hub_model_is_left_alone(tmp_path, weights, variables, expected):
  """A fgjax workdir's config.json, or an unreadable one, says nothing of the weights."""
  path = _write_safetensors(tmp_path, weights[0])
  for text in (json.dumps({'model': {'backbone': 'resnet50'}, 'seed': 0}), '{not json'):
    (tmp_path / 'config.json').write_text(text)
    loaded = pretrained.load_pretrained_backbone(path, variables, backbone_path=())
    chex.assert_trees_all_equal(loaded, expected)


@pytest.mark.parametrize('recorded,refused', [
    # timm's and torchvision's train.py: args.model, whatever 'arch' says.
    (dict(model='resnetblur50'), True), (dict(model='resnet50d'), True),
    (dict(model='seresnext50_32x4d'), True), (dict(model='hf-hub:timm/resnet50.a1_in1k'), False),
    (dict(model='timm/resnet50.tv2_in1k'), False), (dict(model='tv_resnet50'), False),
    # Without args: timm's 'arch' is the class (of the DDP wrapper, when wrapped),
    # PyTorch's ImageNet example's the model.
    (dict(arch='resnet'), False), (dict(arch='distributeddataparallel'), False),
    (dict(arch='resnet18'), False), (dict(arch='wide_resnet50_2'), True)])
def test_model_a_training_checkpoint_records(tmp_path, weights, variables, expected,
                                             recorded, refused):
  checkpoint = _timm_train_checkpoint(*weights, arch=recorded.get('arch', 'resnet'))
  if 'model' in recorded:
    checkpoint['args'] = argparse.Namespace(model=recorded['model'], lr=0.1)
  else:
    del checkpoint['args']
  path = tmp_path / 'last.pth.tar'
  torch_save(path, checkpoint)
  if refused:
    name = recorded.get('model', recorded.get('arch'))
    _refused(path, variables, f'the training checkpoint names the architecture {name!r}')
  else:
    chex.assert_trees_all_equal(
        pretrained.load_pretrained_backbone(path, variables, backbone_path=()), expected)


def test_folder_without_hub_weights(tmp_path, variables):
  (tmp_path / 'config.json').write_text(json.dumps(_hub_config()))
  with pytest.raises(FileNotFoundError, match='no Hugging Face hub snapshot .* model.safetensors'):
    pretrained.load_pretrained_backbone(tmp_path, variables, backbone_path=())
