"""End to end on the tiny demo data: train, save, resume, exact evaluation."""

import json
import os
import subprocess
import sys

import chex
import numpy as np
import pytest

from fgjax import inference
from fgjax import train
from fgjax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_trains_saves_restores_and_continues(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  # 96 train images / batch 16 = 6 steps per epoch; 2 epochs = 12 steps.
  first = train.train_and_evaluate(tiny_config, workdir, stop_after_steps=5)
  assert first['step'] == 5
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '5']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['backbone'] == 'resnet_tiny'
  final = train.train_and_evaluate(tiny_config, workdir)
  assert final['step'] == 12
  assert int(final['state'].step) == 12
  # Evaluation saw each of the 37 test images exactly once (batch 16 leaves 5).
  assert final['count'] == 37
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [r for r in rows if r['split'] == 'eval']
  assert [r['step'] for r in evals] == [6, 12]
  train_rows = [r for r in rows if r['split'] == 'train']
  assert {'loss', 'accuracy', 'lr', 'images_per_s'} <= set(train_rows[-1])
  assert os.listdir(os.path.join(workdir, 'best'))


def test_resume_equals_uninterrupted_training(tiny_config, tmp_path):
  tiny_config.train.checkpoint_every_steps = 100  # Only the stop and the end save.
  tiny_config.train.eval_every_epochs = 100
  straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
  train.train_and_evaluate(tiny_config, str(tmp_path / 'resumed'), stop_after_steps=4)
  resumed = train.train_and_evaluate(tiny_config, str(tmp_path / 'resumed'))
  assert int(resumed['state'].step) == int(straight['state'].step) == 12
  chex.assert_trees_all_close(resumed['state'].params, straight['state'].params, atol=1e-6)
  chex.assert_trees_all_close(resumed['state'].batch_stats, straight['state'].batch_stats,
                              atol=1e-6)
  np.testing.assert_allclose(resumed['accuracy'], straight['accuracy'])


def test_exact_eval_matches_unbatched_accuracy(tiny_config, tmp_path):
  """Accuracy over padded batches of 16 == a plain loop over every test image."""
  tiny_config.train.epochs = 1
  result = train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  state = result['state']
  from fgjax import models, train_step as ts  # pylint: disable=g-import-not-at-top
  model = models.build_model(tiny_config.model, num_classes=10)
  source = pipeline.TfdsSource('demo', tiny_config.data.data_dir, 'test', 'tiny')
  transform = pipeline.eval_transform(pipeline.ImageSpec(32, 36))
  correct = 0
  for i in range(len(source)):
    example = transform(source[i])
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                         ts.normalise(example['image'][None]))['logits']
    correct += int(np.argmax(logits[0]) == example['label'])
  assert result['count'] == len(source) == 37
  np.testing.assert_allclose(result['accuracy'], correct / 37, atol=1e-9)


def test_batch_not_divisible_by_devices_names_both_numbers(tiny_config, tmp_path):
  tiny_config.train.batch_size = 12
  with pytest.raises(ValueError, match=r'batch_size=12.*device count 8'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_non_finite_loss_stops_training(tiny_config, tmp_path):
  tiny_config.train.base_lr = 1e30
  with pytest.raises(train.NonFiniteLossError, match='step'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_eight_devices_equal_one_through_the_training_command(tiny_config, tmp_path):
  """launch/train.py on 1 device and train_and_evaluate on 8, same config: the same
  parameters and eval metrics (BatchNorm statistics are global over devices), so the
  model the command builds averages its statistics over the device axis."""
  tiny_config.train.epochs = 1
  eight = train.train_and_evaluate(tiny_config, str(tmp_path / 'eight'))
  overrides = [f'--config.{k}={v}' for k, v in (
      ('data.data_dir', tiny_config.data.data_dir), ('data.builder_config', 'tiny'),
      ('data.image_size', 32), ('data.resize_size', 36), ('train.batch_size', 16),
      ('train.epochs', 1), ('eval.batch_size', 16))]
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'train.py'), '--config=configs/demo.py',
       f'--workdir={tmp_path / "one"}', *overrides], cwd=REPO, capture_output=True, text=True,
      timeout=600, env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '1 devices' in proc.stdout and int(eight['step']) == 6
  one = inference.load_run(str(tmp_path / 'one'), 'latest').state
  assert int(one.step) == 6
  chex.assert_trees_all_close(one.params, eight['state'].params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(one.batch_stats, eight['state'].batch_stats, rtol=1e-4,
                              atol=1e-5)
  evals = [json.loads(l) for l in open(tmp_path / 'one' / 'metrics.jsonl')]
  final = [r for r in evals if r['split'] == 'eval'][-1]
  np.testing.assert_allclose(final['loss'], eight['loss'], rtol=1e-4)
