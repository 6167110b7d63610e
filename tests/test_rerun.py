"""Workdir identity: what a rerun may change of the config its workdir saved."""

import ast
import importlib
import io
import json
import shlex

import numpy as np
import PIL.Image
import pytest

from fgjax import config_lib
from fgjax import train_step as ts
from fgjax.data import pipeline


def _demo(method: str = 'resnet', **values):
  """configs/demo.py's config for `method` with {'train__epochs': 3}-style values set."""
  config = importlib.import_module('configs.demo').get_config(method)
  for key, value in values.items():
    *sections, name = key.split('__')
    node = config
    for s in sections:
      node = node[s]
    node[name] = value
  return config


def _saved(config) -> dict:
  """The flattened config.json that train.py writes for `config`."""
  return config_lib.flatten(json.loads(config.to_json_best_effort(indent=2)))


@pytest.mark.parametrize('method', config_lib.METHODS)
def test_the_same_config_differs_in_nothing(method):
  config = _demo(method)
  assert config_lib.rerun_differences(_saved(config), config) == ([], [])


def test_json_lists_and_nulls_equal_the_configs_tuples_and_nones():
  config = _demo('ssanet')
  saved = _saved(config)
  assert saved['model.ssanet.dsm_stages'] == ['stage2', 'stage3', 'stage4']
  assert saved['model.fdl.smooth_kernel_size'] is None
  assert config.model.ssanet.dsm_stages == ('stage2', 'stage3', 'stage4')
  assert config_lib.rerun_differences(saved, config) == ([], [])
  changed = _demo('ssanet', model__ssanet__dsm_stages=('stage3', 'stage4'))
  assert config_lib.rerun_differences(saved, changed) == (
      [('model.ssanet.dsm_stages', ('stage2', 'stage3', 'stage4'), ('stage3', 'stage4'))], [])


def test_more_epochs_is_allowed_and_nothing_else_differs():
  saved = _saved(_demo('nts'))
  assert config_lib.rerun_differences(saved, _demo('nts', train__epochs=80)) == (
      [], [('train.epochs', 50, 80)])


# Keys a rerun may change, each with a new value (the rule, stated here on its own).
_MAY_CHANGE = {'train.epochs': 80, 'train.eval_every_epochs': 1, 'train.log_every_steps': 7,
               'train.checkpoint_every_steps': 9, 'train.keep_checkpoints': 5,
               'train.skip_nonfinite_steps': 3, 'train.parallelism': 'shard_map',
               'eval.batch_size': 50, 'data.data_dir': '/elsewhere', 'data.on_bad_image': 'skip'}
# Keys that decide the model, the data or the optimisation done, each with a new value.
_BLOCKING = {'seed': 1, 'data.image_size': 96, 'data.resize_size': 100, 'data.num_workers': 2,
             'data.name': 'parts', 'data.train_split': 'test', 'data.sampler': 'class_balanced',
             'model.backbone': 'resnet18', 'model.dtype': 'bfloat16',
             'model.pretrained_path': 'runs/parts_pretrain', 'model.init_from': 'runs/x',
             'model.regions.nms_iou': 0.5, 'model.regions.navigator_guide': 'train',
             'train.batch_size': 64, 'train.base_lr': 0.05, 'train.pretrained_lr_mult': 1.0,
             'train.lr_decay_epochs': 10, 'train.lr_decay_factor': 0.5,
             'train.warmup_epochs': 0.0, 'train.momentum': 0.8, 'train.weight_decay': 0.0,
             'train.grad_clip_norm': 1.0}


@pytest.mark.parametrize('key', sorted(_MAY_CHANGE))
def test_a_key_that_only_extends_or_logs_may_change(key):
  config = _demo('nts', **{key.replace('.', '__'): _MAY_CHANGE[key]})
  old = config_lib.flatten(_demo('nts'))[key]
  assert config_lib.rerun_differences(_saved(_demo('nts')), config) == (
      [], [(key, old, _MAY_CHANGE[key])])


@pytest.mark.parametrize('key', sorted(_BLOCKING))
def test_a_key_that_decides_the_run_blocks_it(key):
  config = _demo('nts', **{key.replace('.', '__'): _BLOCKING[key]})
  old = config_lib.flatten(_demo('nts'))[key]
  assert config_lib.rerun_differences(_saved(_demo('nts')), config) == (
      [(key, old, _BLOCKING[key])], [])


def test_another_method_blocks_with_both_names():
  blocking, allowed = config_lib.rerun_differences(_saved(_demo('nts')), _demo('fdl'))
  assert ('model.name', 'nts', 'fdl') in blocking and not allowed


def test_another_image_size_blocks_with_both_sizes():
  saved = _saved(_demo())
  assert config_lib.rerun_differences(saved, _demo(data__image_size=72)) == (
      [('data.image_size', 64, 72)], [])


def test_keys_the_run_does_not_read_do_not_count():
  saved = _saved(_demo('fdl'))
  unread = _demo('fdl', model__ssanet__op_bins=5, model__regions__navigator_guide='always',
                 data__classes_per_batch=3)  # Another method's; FDL has none; random sampler.
  assert config_lib.rerun_differences(saved, unread) == ([], [])
  assert config_lib.rerun_differences(_saved(_demo()), _demo(model__regions__pad=0)) == ([], [])


def test_an_older_runs_moved_and_missing_keys_compare_as_renamed_and_default():
  saved = _saved(_demo('nts', model__regions__proposal_num=5))
  saved['model.nts.proposal_num'] = saved.pop('model.regions.proposal_num')  # Moved since.
  del saved['model.regions.navigator_guide'], saved['train.skip_nonfinite_steps']  # Added since.
  assert config_lib.rerun_differences(saved, _demo('nts', model__regions__proposal_num=5)) == (
      [], [])
  rerun = _demo('nts', model__regions__navigator_guide='train', train__skip_nonfinite_steps=2)
  assert config_lib.rerun_differences(saved, rerun) == (
      [('model.regions.navigator_guide', 'none', 'train'),
       ('model.regions.proposal_num', 5, 6)],
      [('train.skip_nonfinite_steps', 0, 2)])


def test_the_error_names_each_blocking_key_with_both_values_and_what_to_do():
  saved = _saved(_demo('ssanet'))
  rerun = _demo('ssanet', data__image_size=72, model__ssanet__dsm_stages=('stage4',),
                model__fdl__region_size=96, train__base_lr=0.2)
  blocking, _ = config_lib.rerun_differences(saved, rerun)
  message = config_lib.rerun_error_message('runs/x', blocking)
  assert message.startswith('runs/x holds a run of another config')
  for line in ("config.data.image_size: saved 64, now 72",
               "config.model.ssanet.dsm_stages: saved ('stage2', 'stage3', 'stage4'), "
               "now ('stage4',)",
               'config.train.base_lr: saved 0.1, now 0.2'):
    assert line in message
  assert 'model.fdl' not in message  # SSANet does not read it.
  assert 'rerun with the saved values:' in message
  assert 'new --workdir' in message
  flags = [f.split('=', 1) for f in shlex.split(message.splitlines()[-1])]
  assert {k[len('--config.'):]: ast.literal_eval(v) for k, v in flags} == {
      'data.image_size': 64, 'model.ssanet.dsm_stages': ('stage2', 'stage3', 'stage4'),
      'train.base_lr': 0.1}


def test_the_error_gives_the_method_after_the_config_path():
  blocking, _ = config_lib.rerun_differences(_saved(_demo('nts')), _demo('fdl'))
  assert '--config=CONFIG.py:nts' in config_lib.rerun_error_message('w', blocking)


@pytest.mark.parametrize('epochs, decay_epochs', [(10, 4), (8, 4), (8, 8)])
def test_more_epochs_leave_the_lr_of_the_steps_taken_unchanged(epochs, decay_epochs):
  steps_per_epoch = 3
  schedule = lambda total: ts.lr_schedule(0.1, steps_per_epoch, decay_epochs, 0.5, total,
                                          warmup_epochs=1.5)
  taken = np.arange(epochs * steps_per_epoch)
  before, after = schedule(epochs), schedule(epochs + 9)
  np.testing.assert_array_equal([before(s) for s in taken], [after(s) for s in taken])
  later = np.arange(epochs * steps_per_epoch, (epochs + 9) * steps_per_epoch)
  assert any(before(s) != after(s) for s in later)  # The new epochs decay where the old did not.


class _Pngs:
  """Eight 8 x 8 images for the train pipeline."""

  def __len__(self):
    return 8

  def __getitem__(self, i):
    buf = io.BytesIO()
    PIL.Image.new('RGB', (8, 8), (i * 30, 0, 0)).save(buf, format='PNG')
    return {'image': buf.getvalue(), 'label': np.int32(i % 2), 'crop_bottom': 0}


def test_another_worker_count_cannot_restore_the_saved_iterator_state():
  """Why data.num_workers blocks a rerun: the batches are the same at any worker count
  (tests/test_pipeline.py), but the iterator state in a checkpoint has one entry per
  worker process and does not restore into an iterator with another count."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['pytest'])  # grain's worker options read absl flags.
  make = lambda workers: pipeline.make_train_iterator(
      _Pngs(), pipeline.ImageSpec(8, 8), global_batch_size=2, seed=0, num_devices=1,
      num_workers=workers)
  direct = make(0)
  next(direct), next(direct)
  assert direct.get_state() == {'next_index': 2}
  workers = make(2)  # No worker process starts before the first batch.
  assert len(workers.get_state()['iterators_in_use_states']) == 2
  with pytest.raises(KeyError):
    workers.set_state(direct.get_state())
  with pytest.raises(KeyError):
    make(0).set_state(workers.get_state())


def test_training_stops_on_another_config_before_writing_and_records_allowed_changes(
    tiny_config, tmp_path):
  from fgjax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config, str(workdir), stop_after_steps=2)
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  tiny_config.data.image_size = 34
  with pytest.raises(ValueError, match=r'config\.data\.image_size: saved 32, now 34'):
    train.train_and_evaluate(tiny_config, str(workdir))
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
  tiny_config.data.image_size = 32
  tiny_config.train.epochs = 3
  result = train.train_and_evaluate(tiny_config, str(workdir), stop_after_steps=3)
  assert result['step'] == 3
  assert json.loads((workdir / 'config.json').read_text())['train']['epochs'] == 3
  changes = [json.loads(l) for l in (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert [c['changed'] for c in changes] == [{'train.epochs': {'saved': 2, 'now': 3}}]
