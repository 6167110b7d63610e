"""Configs: every data set config loads and validates; bad keys and names are named."""

import importlib
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
      assert config[section].to_dict() == configs['resnet'][section].to_dict(), (method, section)
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


def test_unknown_model_name_lists_valid_ones():
  config = config_lib.base_config()
  config.model.name = 'ntsnet'
  with pytest.raises(ValueError, match=r"model.name='ntsnet'.*'resnet'"):
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
