"""fgjax.evaluation: top-5, per-class accuracy, confusion matrix, TTA, reports."""

import csv
import functools
import io
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest

from fgjax import checkpoint
from fgjax import evaluation
from fgjax import inference
from fgjax import train
from fgjax import train_step as ts
from fgjax.data import demo
from fgjax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TEST = demo.SPLIT_SIZES['tiny']['test']  # 37: batches of 16 leave a padded last one.
NUM_OUT = 12  # Two more outputs than the demo's 10 classes: classes without a test image.


class _Linear(nn.Module):
  """logits = flatten(normalised image) @ W + b: mirroring the image changes them."""
  num_classes: int

  @nn.compact
  def __call__(self, images, labels=None, train=False):
    del labels, train
    return {'logits': nn.Dense(self.num_classes, name='dense')(
        images.reshape(images.shape[0], -1))}

  @staticmethod
  def per_example_losses(outputs, labels):
    return {'loss': optax.softmax_cross_entropy_with_integer_labels(outputs['logits'], labels)}


@pytest.fixture
def linear_run(tiny_config):
  """A hand-set linear model on the tiny demo's 32 px eval inputs, as an inference.Run."""
  rng = np.random.default_rng(3)
  w = rng.normal(size=(32 * 32 * 3, NUM_OUT)) * 0.05
  b = rng.normal(size=(NUM_OUT,))
  params = {'dense': {'kernel': jnp.asarray(w, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}}
  state = ts.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                        opt_state=())
  tiny_config.lock()
  names = [f'class_{c}' for c in range(NUM_OUT)]
  return inference.Run(tiny_config, _Linear(NUM_OUT), state, names, 'hand/best/7'), (w, b)


def _examples(config):
  source = pipeline.TfdsSource('demo', config.data.data_dir, 'test', 'tiny')
  return [source[i] for i in range(len(source))]


def _resized(example, resize_size):
  """The reference resize: PIL bilinear on the decoded image (no banner in the demo)."""
  assert example['crop_bottom'] == 0
  with PIL.Image.open(io.BytesIO(example['image'])) as img:
    return np.asarray(img.convert('RGB').resize((resize_size, resize_size),
                                                PIL.Image.BILINEAR))


def _reference_views(example, spec):
  """uint8 [10, S, S, 3] by NumPy slicing: eval_transform's centre, the four corners of
  the resized image (top-left, top-right, bottom-left, bottom-right), then all mirrored."""
  full, s, d = _resized(example, spec.resize_size), spec.image_size, spec.resize_size - spec.image_size
  centre = pipeline.eval_transform(spec)(example)['image']
  crops = [centre, full[:s, :s], full[:s, d:], full[d:, :s], full[d:, d:]]
  return np.stack(crops + [np.flip(c, axis=1) for c in crops])


def _logits64(images, w, b):
  """float64 logits [..., C] of uint8 images [..., S, S, 3] under the linear model."""
  x = (images.astype(np.float64) - np.float64(ts.MEAN_RGB)) / np.float64(ts.STDDEV_RGB)
  return x.reshape(x.shape[:-3] + (-1,)) @ w + b


def _softmax64(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _top_k_reference(scores, labels, k):
  """Sort-based: the label among the first k of a stable descending sort (ties: lower
  index first, as argmax)."""
  order = np.argsort(-np.asarray(scores, np.float64), axis=-1, kind='stable')[:, :k]
  return np.array([y in row for row, y in zip(order, labels)], np.float64)


def _confusion_loop(predictions, labels, num_classes):
  table = [[0] * num_classes for _ in range(num_classes)]
  for p, y in zip(predictions, labels):
    table[y][p] += 1
  return np.array(table)


def test_parse_tta():
  assert evaluation.parse_tta('') == () and evaluation.parse_tta(None) == ()
  assert evaluation.parse_tta('multicrop, flip') == ('flip', 'multicrop')
  assert evaluation.parse_tta('flip') == ('flip',)
  for bad in ('flips', 'flip,flip', 'flip;multicrop'):
    with pytest.raises(ValueError, match='flip,multicrop'):
      evaluation.parse_tta(bad)


@pytest.mark.parametrize('sizes', [(32, 36), (24, 37)])  # (24, 37): an odd margin of 13.
def test_views_are_crops_of_the_resized_image(demo_data_dir, sizes):
  source = pipeline.TfdsSource('demo', demo_data_dir, 'test', 'tiny')
  spec = pipeline.ImageSpec(*sizes)
  for i in (0, 5):
    example = source[i]
    want = _reference_views(example, spec)
    views = evaluation.view_images(example, spec, ('flip', 'multicrop'))
    assert views.shape == (10, spec.image_size, spec.image_size, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, want)
    # The centre is eval_transform's own image: the resized image's centre crop up to the
    # +-1 of PIL's fixed-point rounding (pipeline.decode_resize_crop).
    off = (spec.resize_size - spec.image_size) // 2
    sliced = _resized(example, spec.resize_size)[off:off + spec.image_size,
                                                 off:off + spec.image_size]
    assert np.abs(views[0].astype(int) - sliced).max() <= 1
    np.testing.assert_array_equal(evaluation.view_images(example, spec, ('flip',)),
                                  want[[0, 5]])
    np.testing.assert_array_equal(evaluation.view_images(example, spec, ('multicrop',)),
                                  want[:5])
    np.testing.assert_array_equal(evaluation.view_images(example, spec), want[:1])
  assert [evaluation.num_views(t) for t in ((), ('flip',), ('multicrop',),
                                            ('flip', 'multicrop'))] == [1, 2, 5, 10]


@pytest.mark.parametrize('num_classes', [3, 5, 8, 40])
def test_top_k_correct_against_a_sort_with_ties(num_classes):
  rng = np.random.default_rng(num_classes)
  logits = rng.integers(0, 3, size=(300, num_classes)).astype(np.float32)  # Many ties.
  labels = rng.integers(0, num_classes, size=300)
  for k in (1, 2, 5):
    got = np.asarray(ts.top_k_correct(jnp.asarray(logits), jnp.asarray(labels), k))
    np.testing.assert_array_equal(got, _top_k_reference(logits, labels, k))
  # k = 1 is argmax == label, ties included; k >= C counts every example.
  np.testing.assert_array_equal(np.asarray(ts.top_k_correct(logits, labels, 1)),
                                np.argmax(logits, -1) == labels)
  if num_classes <= 5:
    assert np.all(np.asarray(ts.top_k_correct(logits, labels, 5)) == 1.0)


def test_tta_softmax_average_against_float64(linear_run):
  run, (w, b) = linear_run
  spec = run.spec
  examples = _examples(run.config)[:6]
  views = np.stack([_reference_views(e, spec) for e in examples])  # [6, 10, S, S, 3]
  logits64 = _logits64(views, w, b)                                  # [6, 10, C]
  # Mirroring changes the logits (the model and the images are not symmetric).
  assert np.abs(logits64[:, 5] - logits64[:, 0]).min(-1).max() > 0.1
  assert np.abs(logits64[:, 5] - logits64[:, 0]).max() > 1.0
  fn = jax.jit(lambda s, x: evaluation.mean_view_probs(
      evaluation.view_outputs(s, x, model=run.model)['logits']))
  want = _softmax64(logits64).mean(1)
  np.testing.assert_allclose(np.asarray(fn(run.state, views)), want, rtol=2e-5, atol=1e-6)
  # Not the softmax of the mean logits, nor of view 0 alone.
  assert np.abs(_softmax64(logits64.mean(1)) - want).max() > 1e-3
  assert np.abs(_softmax64(logits64[:, 0]) - want).max() > 1e-3


def test_evaluate_with_tta_against_references(linear_run, tmp_path):
  run, (w, b) = linear_run
  before = run.config.to_dict()
  result = evaluation.evaluate_loaded(run, split='test', batch_size=16, tta='flip,multicrop')
  assert run.config.to_dict() == before  # The run's config is not changed.
  examples = _examples(run.config)
  labels = np.array([int(e['label']) for e in examples])
  views = np.stack([_reference_views(e, run.spec) for e in examples])
  logits = _logits64(views[:, 0], w, b)
  probs = _softmax64(_logits64(views, w, b)).mean(1)
  for scores in (logits, probs):  # No near-tie that float32 could turn round.
    top2 = np.sort(scores, -1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4 * np.abs(top2).max()
  plain, tta = np.argmax(logits, -1), np.argmax(probs, -1)
  assert (plain != tta).any()  # TTA changes some predictions.
  assert result['count'] == NUM_TEST and NUM_TEST % 16 and result['num_classes'] == NUM_OUT
  assert result['views'] == 10 and result['tta'] == ['flip', 'multicrop']
  for prefix, pred, scores in (('', plain, logits), ('tta_', tta, probs)):
    confusion = _confusion_loop(pred.tolist(), labels.tolist(), NUM_OUT)
    np.testing.assert_array_equal(result[prefix + 'confusion'], confusion)
    assert result[prefix + 'accuracy'] == pytest.approx(np.mean(pred == labels))
    assert result[prefix + 'accuracy_top5'] == pytest.approx(
        _top_k_reference(scores, labels, 5).mean())
    per_class_acc = [confusion[c][c] / sum(confusion[c]) for c in range(NUM_OUT)
                     if sum(confusion[c])]
    assert result[prefix + 'mean_class_accuracy'] == pytest.approx(np.mean(per_class_acc))
  assert set(labels) == set(range(10))  # Classes 10 and 11 have no test image ...
  assert (plain >= 10).any()            # ... but get predictions.
  nll = -np.log(_softmax64(logits)[np.arange(NUM_TEST), labels])
  assert result['loss'] == pytest.approx(nll.mean(), rel=1e-5)

  dirs = evaluation.write_reports(result, str(tmp_path))
  assert dirs == [str(tmp_path / 'eval' / 'best-7_test'),
                  str(tmp_path / 'eval' / 'best-7_test_tta-flip-multicrop')]
  for prefix, out_dir in zip(('', 'tta_'), dirs):
    _check_report(result, prefix, out_dir)


def _check_report(result, prefix, out_dir):
  """The CSVs read back to the result's numbers; the PNG opens; summary.json agrees."""
  confusion = result[prefix + 'confusion']
  with open(os.path.join(out_dir, 'per_class.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert [int(r['class']) for r in rows] == list(range(NUM_OUT))
  assert [r['name'] for r in rows] == result['class_names']
  for c, row in enumerate(rows):
    assert int(row['count']) == confusion[c].sum() and int(row['correct']) == confusion[c, c]
    if confusion[c].sum():
      assert float(row['accuracy']) == confusion[c, c] / confusion[c].sum()
    else:
      assert np.isnan(float(row['accuracy']))
  with open(os.path.join(out_dir, 'confusion.csv'), newline='') as f:
    table = list(csv.reader(f))
  assert table[0][1:] == result['class_names'] and [r[0] for r in table[1:]] == table[0][1:]
  np.testing.assert_array_equal(np.array([r[1:] for r in table[1:]], int), confusion)
  with open(os.path.join(out_dir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['predictions'] == ('tta' if prefix else 'plain')
  for key in ('accuracy', 'accuracy_top5', 'tta_accuracy', 'count', 'checkpoint', 'split'):
    assert summary[key] == result[key], key
  with PIL.Image.open(os.path.join(out_dir, 'confusion.png')) as img:
    assert img.format == 'PNG' and min(img.size) >= 500


def test_confusion_png_stays_readable_with_many_classes(tmp_path):
  rng = np.random.default_rng(0)
  for c in (4, 300):
    confusion = np.diag(rng.integers(0, 20, size=c))
    confusion[rng.integers(0, c, 3 * c), rng.integers(0, c, 3 * c)] += 1
    names = [f'n{i}' for i in range(c)]
    fig = evaluation.confusion_figure(confusion, names, 'title')
    ax = fig.axes[0]
    if c == 4:   # Few classes: every non-zero count written, names on the axes.
      assert sorted(t.get_text() for t in ax.texts) == sorted(
          str(n) for n in confusion.ravel() if n)
      assert [t.get_text() for t in ax.get_yticklabels()] == [f'{i} n{i}' for i in range(c)]
    else:        # Hundreds: no cell text, index ticks, at least 6 px per class.
      assert not ax.texts
      assert not any(t.get_text().startswith('n') for t in ax.get_xticklabels())
      path = str(tmp_path / 'big.png')
      fig.savefig(path)
      with PIL.Image.open(path) as img:
        assert min(img.size) >= 6 * c


def test_plain_evaluation_equals_training_eval_for_every_head(tiny_config):
  """No TTA: the same numbers as train.evaluate (fdl: three heads, four loss terms); with
  TTA the heads are still reported, for view 0."""
  tiny_config.model.name = 'fdl'
  tiny_config.lock()
  model, _, tx = train.build_model_and_optimizer(tiny_config, 10, steps_per_epoch=1)
  state = ts.create_train_state(model, tx, jax.random.key(1), tiny_config.data.image_size)
  run = inference.Run(tiny_config, model, state, list(demo.class_names()), 'r/checkpoints/3')
  parallel = ts.Parallel('pmap')
  source = pipeline.TfdsSource('demo', tiny_config.data.data_dir, 'test', 'tiny')
  want = train.evaluate(parallel, parallel.map(functools.partial(ts.eval_step, model=model)),
                        parallel.replicate(state), source, run.spec, tiny_config)
  got = evaluation.evaluate_loaded(run)
  assert {'accuracy_image', 'accuracy_region_top1', 'accuracy_top5', 'loss_region'} <= set(want)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-6), key
  assert got['confusion'].sum() == NUM_TEST and np.trace(got['confusion']) == round(
      want['accuracy'] * NUM_TEST)
  flipped = evaluation.evaluate_loaded(run, tta='flip')
  assert set(want) <= set(flipped) and 'tta_accuracy' in flipped
  assert flipped['accuracy'] == pytest.approx(want['accuracy'], abs=1.5 / NUM_TEST)


def test_evaluate_command_line(tiny_config, tmp_path):
  """A workdir with a config.json and an untrained best/ checkpoint -> printed summary and
  report files, with and without TTA in one call."""
  tiny_config.lock()
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(tiny_config.to_json_best_effort(indent=2))
  model, _, tx = train.build_model_and_optimizer(tiny_config, 10, steps_per_epoch=1)
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  ckpt.save_best(4, ts.create_train_state(model, tx, jax.random.key(0), 32), accuracy=0.5)
  ckpt.wait()
  ckpt.close()
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'evaluate.py'),
                         f'--workdir={workdir}', '--tta=flip', '--batch_size=8'],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'XLA_FLAGS': ''})
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = os.path.join(workdir, 'eval', 'best-4_test')
  with open(os.path.join(report, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['count'] == NUM_TEST and summary['tta'] == ['flip']
  assert f'top-1 {summary["accuracy"]:.4f}' in proc.stdout
  assert f'top-1 {summary["tta_accuracy"]:.4f}' in proc.stdout
  for name in ('summary.json', 'per_class.csv', 'confusion.csv', 'confusion.png'):
    assert os.path.exists(os.path.join(report + '_tta-flip', name)), name
  bad = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'evaluate.py'),
                        f'--workdir={workdir}', '--tta=mirror'],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'XLA_FLAGS': ''})
  assert bad.returncode != 0 and 'mirror' in bad.stderr
