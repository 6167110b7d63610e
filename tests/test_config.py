"""Configs: every data set config loads and validates; bad keys and names are named."""

import ast
import importlib
import re
import subprocess
import sys

import pytest

from fgjax import config_lib


@pytest.mark.parametrize('name', ['demo', 'cub', 'aircraft', 'cars'])
@pytest.mark.parametrize('method', config_lib.METHODS)
def test_configs_validate(name, method):
  config = importlib.import_module(f'configs.{name}').get_config(method)
  config_lib.validate(config)
  assert (config.data.name, config.model.name) == (name, method)


def test_parts_configs_give_every_method_the_same_start_and_budget():
  configs = {m: importlib.import_module('configs.parts').get_config(m) for m in config_lib.METHODS}
  for method, config in configs.items():
    config_lib.validate(config)
    assert (config.data.name, config.model.name) == ('parts', method)
    assert config.model.pretrained_path == 'runs/parts_pretrain'
    for section in ('data', 'train', 'eval'):
      got, want = config[section].to_dict(), configs['resnet'][section].to_dict()
      if method == 'scrim' and section == 'data':  # The same images, in P x K batches.
        assert (got.pop('sampler'), got.pop('classes_per_batch')) == ('class_balanced', 8)
        want = {k: v for k, v in want.items() if k not in ('sampler', 'classes_per_batch')}
      assert got == want, (method, section)
  pretrain = importlib.import_module('configs.parts_pretrain').get_config()
  config_lib.validate(pretrain)
  assert (pretrain.data.builder_config, pretrain.model.pretrained_path) == ('pretrain', '')
  assert pretrain.model.backbone == configs['resnet'].model.backbone


def test_unknown_method_after_colon_lists_valid_ones():
  with pytest.raises(ValueError, match=r"'ntsnet'.*'fdl'"):
    importlib.import_module('configs.cub').get_config('ntsnet')


@pytest.mark.parametrize('name', ['cub', 'aircraft', 'cars'])
def test_real_data_configs_follow_the_papers_recipe(name):
  c = importlib.import_module(f'configs.{name}').get_config()
  assert (c.data.image_size, c.data.resize_size, c.train.batch_size) == (448, 600, 16)
  assert (c.train.base_lr, c.train.lr_decay_epochs, c.train.lr_decay_factor) == (0.01, 40, 0.1)
  assert (c.train.momentum, c.train.weight_decay, c.train.epochs) == (0.9, 5e-4, 100)
  assert c.train.pretrained_lr_mult == 0.1


def test_adding_a_key_fails():
  config = config_lib.base_config()
  with pytest.raises(AttributeError):
    config.train.batchsize = 3


# The validation rules, stated here independently of config_lib's own lists.
_CHOICES = {
    'data.name': ('demo', 'parts', 'cub', 'aircraft', 'cars'),
    'data.sampler': ('random', 'class_balanced'),
    'data.on_bad_image': ('error', 'skip'),
    'model.name': ('resnet', 'nts', 'fdl', 'ssanet', 'scrim'),
    'model.backbone': ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet_tiny'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.regions.anchor_grid': ('scaled', 'feature'),
    'model.regions.navigator_guide': ('none', 'train', 'always'),
    'model.fdl.cam_mode': ('max', 'single'),
    'model.fdl.map_alignment': ('receptive_field', 'top_left'),
    'model.fdl.padding_score': ('min', 'inside'),
    'model.ssanet.map_alignment': ('receptive_field', 'top_left'),
    'train.parallelism': ('pmap', 'shard_map'),
}
_POSITIVE = ['train.batch_size', 'eval.batch_size', 'train.epochs', 'data.image_size',
             'train.log_every_steps', 'train.checkpoint_every_steps', 'train.keep_checkpoints',
             'train.eval_every_epochs', 'train.lr_decay_epochs', 'model.regions.proposal_num',
             'model.regions.cat_num']


def _config(values: dict):
  """base_config() with {dotted key: value} set."""
  config = config_lib.base_config()
  for key, value in values.items():
    *sections, name = key.split('.')
    section = config
    for s in sections:
      section = section[s]
    section[name] = value
  return config


@pytest.mark.parametrize('key', sorted(_CHOICES))
def test_each_choice_accepts_its_values_and_names_them_on_a_bad_one(key):
  for value in _CHOICES[key]:
    config_lib.validate(_config({key: value}))
  with pytest.raises(ValueError) as raised:
    config_lib.validate(_config({key: 'bogus'}))
  msg = str(raised.value)
  assert f"config.{key}='bogus'" in msg
  listed = re.search(r'valid values: (\[.*\])', msg)
  assert listed and set(ast.literal_eval(listed.group(1))) == set(_CHOICES[key]), msg


@pytest.mark.parametrize('key', _POSITIVE)
def test_each_count_must_be_positive(key):
  config_lib.validate(_config({'model.regions.cat_num': 1, key: 1}))
  for bad in (0, -3):
    with pytest.raises(ValueError, match=re.escape(f'config.{key} must be positive, got {bad}')):
      config_lib.validate(_config({key: bad}))


def test_resize_size_may_equal_but_not_undercut_image_size():
  config_lib.validate(_config({'data.image_size': 64, 'data.resize_size': 64}))
  with pytest.raises(ValueError, match=r'resize_size=63 .*image_size=64'):
    config_lib.validate(_config({'data.image_size': 64, 'data.resize_size': 63}))


def test_concatenated_parts_are_at_most_the_proposals():
  config_lib.validate(_config({'model.regions.proposal_num': 3, 'model.regions.cat_num': 3}))
  with pytest.raises(ValueError, match=r'cat_num=4 exceeds .*proposal_num=3'):
    config_lib.validate(_config({'model.regions.proposal_num': 3, 'model.regions.cat_num': 4}))


# Keys the region models each carried before they shared model.regions.
_MOVED = {'model.nts.proposal_num': 'model.regions.proposal_num',
          'model.ssanet.cat_num': 'model.regions.cat_num',
          'model.fdl.num_regions': 'model.regions.proposal_num',
          'model.fdl.hybrid_regions': 'model.regions.cat_num',
          'model.fdl.pad': 'model.regions.pad',
          'model.nts.navigator_guide': 'model.regions.navigator_guide',
          'model.ssanet.dropout_rate': 'model.regions.dropout_rate'}


@pytest.mark.parametrize('old', sorted(_MOVED))
def test_a_moved_key_names_its_new_name(old):
  assert f'{old} is now {_MOVED[old]}' in config_lib.unknown_keys_message([old])


def test_an_older_runs_config_reads_its_own_methods_moved_keys():
  old = {'model.name': 'fdl', 'model.fdl.hybrid_regions': 2, 'model.fdl.num_regions': 5,
         'model.fdl.cam_mode': 'single', 'model.nts.cat_num': 1, 'model.nts.pad': 7}
  assert config_lib.upgrade(old) == {
      'model.name': 'fdl', 'model.regions.cat_num': 2, 'model.regions.proposal_num': 5,
      'model.fdl.cam_mode': 'single'}


def test_unknown_key_is_named_with_a_suggestion():
  config = config_lib.base_config()
  config_lib.validate(config)
  config.unlock()
  config.train.batchsize = 3
  with pytest.raises(ValueError, match=r"'train\.batchsize'.*-> train\.batch_size"):
    config_lib.validate(config)


def test_unknown_key_message_suggests_and_lists():
  msg = config_lib.unknown_keys_message(['train.batchsize'])
  assert 'train.batch_size' in msg and 'data.image_size' in msg


def test_command_line_override_and_unknown_key(tmp_path):
  script = ('import sys; sys.argv[0] = "launch/train.py"; '
            'import runpy; runpy.run_path("launch/train.py", run_name="__main__")')
  bad = subprocess.run(
      [sys.executable, '-c', script, '--config=configs/demo.py', f'--workdir={tmp_path}',
       '--config.train.batchsize=32'], capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert 'train.batchsize -> train.batch_size' in bad.stderr
  good = subprocess.run(
      [sys.executable, '-c',
       'import sys; from absl import flags; from ml_collections import config_flags; '
       'config_flags.DEFINE_config_file("config", lock_config=True); flags.FLAGS(sys.argv); '
       'print(flags.FLAGS.config.train.batch_size)',
       '--config=configs/demo.py', '--config.train.batch_size=48'],
      capture_output=True, text=True, timeout=120)
  assert good.stdout.strip() == '48', good.stderr
