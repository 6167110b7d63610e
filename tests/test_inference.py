"""Evaluate, predict and visualise from a run's workdir alone."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest

from fgjax import inference
from fgjax import train
from fgjax.data import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, demo_data_dir):
  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  c = demo_config.get_config()
  c.data.data_dir = demo_data_dir
  c.data.builder_config = 'tiny'
  c.data.image_size, c.data.resize_size = 32, 36
  c.model.name = 'fdl'  # A model with regions, so that boxes are drawn.
  c.train.batch_size, c.train.epochs, c.eval.batch_size = 16, 1, 16
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(c, workdir)
  return workdir, result


def test_evaluate_run_reproduces_training_eval(trained_run):
  # Same batch size as in training: at 32 px FDL's attention map is a single cell,
  # so every anchor ties and rounding noise of another batch size may pick others.
  workdir, result = trained_run
  again = inference.evaluate_run(workdir, 'latest', batch_size=16)
  assert again['count'] == 37
  np.testing.assert_allclose(again['accuracy'], result['accuracy'])
  np.testing.assert_allclose(again['loss'], result['loss'], rtol=1e-5)


def test_predict_files_and_visualize(trained_run, tmp_path):
  workdir, _ = trained_run
  paths = []
  for i, (img, _, _) in enumerate(demo.generate_split('test', 3)):
    path = str(tmp_path / f'img{i}.png')
    PIL.Image.fromarray(img).convert('L').save(path)  # Grayscale input, too.
    paths.append(path)
  run = inference.load_run(workdir)
  rows = inference.predict_files(run, inference.expand_paths(str(tmp_path / '*.png')), top_k=3)
  assert [r['file'] for r in rows] == paths
  for row in rows:
    probs = [t['prob'] for t in row['top_k']]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert len(row['regions']) == 6 and all(len(b) == 4 for b in row['regions'])
  written = inference.visualize_files(run, paths, str(tmp_path / 'viz'))
  assert len(written) == 3
  with PIL.Image.open(written[0]) as img:
    assert img.size == (64, 64)
  assert len(inference.visualize_eval_split(run, 2, str(tmp_path / 'viz2'))) == 2


def test_missing_images_and_workdir_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing-here'):
    inference.expand_paths(str(tmp_path / 'nothing-here*.jpg'))
  with pytest.raises(FileNotFoundError, match='config.json'):
    inference.load_run(str(tmp_path))
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='bad.jpg'):
    inference.load_images([str(bad)], inference.pipeline.ImageSpec(32, 36))


def test_predict_command_line(trained_run, tmp_path):
  workdir, _ = trained_run
  img, _, _ = next(demo.generate_split('test', 1))
  PIL.Image.fromarray(img).save(tmp_path / 'x.png')
  out = tmp_path / 'pred.jsonl'
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'predict.py'),
                         f'--workdir={workdir}', f'--images={tmp_path / "x.png"}',
                         f'--output={out}', '--top_k=2'],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = json.loads(out.read_text())
  assert row['file'].endswith('x.png') and len(row['top_k']) == 2


def test_demo_glyph_boxes_hold_the_class_pattern():
  ink = np.array([20, 20, 30])
  for (img, label, _), (x0, y0, x1, y1) in zip(demo.generate_split('test', 12),
                                              demo.glyph_boxes('test', 12)):
    inner = img[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]   # Inside the border.
    cells = np.abs(inner.astype(int) - ink).sum(-1) < 5
    cell = demo.GLYPH_CELL
    np.testing.assert_array_equal(cells[cell // 2::cell, cell // 2::cell],
                                  demo.PATTERNS[label])


def test_localization_on_the_demo(trained_run):
  from fgjax import localization  # pylint: disable=g-import-not-at-top
  workdir, _ = trained_run
  run = inference.load_run(workdir)
  found = localization.localization(run)
  assert found['count'] == 37
  ranks = [found[f'rank_{r}'] for r in range(6)]
  assert found['top1'] == ranks[0]
  assert found['any'] >= found['any_top'] >= max(ranks[:4])
  assert found['ceiling'] >= found['any']
  assert all(0 <= v <= 1 for v in ranks)
  assert 1 / 37 <= found['same_top'] <= 1


def test_region_model_starts_from_another_runs_backbone(trained_run, tmp_path):
  from fgjax import checkpoint  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  workdir, _ = trained_run
  source = inference.load_run(workdir, 'latest')           # An fdl run.
  config = inference.load_config(workdir)
  config.unlock()
  config.model.name = 'nts'
  config.model.pretrained_path = workdir
  config.lock()
  model, _, tx = train.build_model_and_optimizer(config, 10, steps_per_epoch=1)
  fresh = ts.create_train_state(model, tx, jax.random.key(5), config.data.image_size)
  state = train._initial_state(config, checkpoint.Checkpointer(str(tmp_path), 1), fresh, None)
  for got, want in zip(jax.tree.leaves(state.params['backbone']),
                       jax.tree.leaves(source.state.params['backbone'])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(state.batch_stats['backbone']),
                       jax.tree.leaves(source.state.batch_stats['backbone'])):
    np.testing.assert_array_equal(got, want)   # Both runs keep image and part statistics.
  for got, want in zip(jax.tree.leaves(state.params['navigator']),
                       jax.tree.leaves(fresh.params['navigator'])):
    np.testing.assert_array_equal(got, want)
  config.unlock()
  config.model.pretrained_path = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='pretrained_path=.*missing'):
    train._initial_state(config, checkpoint.Checkpointer(str(tmp_path / 'w'), 1), fresh, None)
