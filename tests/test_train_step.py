"""Per-core train step under pmap and shard_map; optimiser and schedule."""

import functools

import chex
import flax.linen as nn
import jax.numpy as jnp
import jax
import numpy as np
import pytest

from fgjax import train_step as ts
from fgjax.models import classifier
from fgjax.models import resnet

NUM_CLASSES = 5


def _setup(backbone_lr_mult=1.0, weight_decay=5e-4, bn_axis_name=ts.AXIS):
  model = classifier.Classifier(num_classes=NUM_CLASSES, backbone='resnet_tiny',
                                bn_axis_name=bn_axis_name)
  schedule = ts.lr_schedule(0.1, steps_per_epoch=2, decay_epochs=1, decay_factor=0.1,
                            total_epochs=3)
  tx = ts.make_optimizer(schedule, momentum=0.9, weight_decay=weight_decay,
                         backbone_lr_mult=backbone_lr_mult)
  state = ts.create_train_state(model, tx, jax.random.key(0), image_size=32)
  return model, schedule, tx, state


def _batch(num_devices, global_batch=16, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(global_batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, size=(global_batch,)).astype(np.int32)
  return {'image': images.reshape((num_devices, -1, 32, 32, 3)),
          'label': labels.reshape((num_devices, -1)),
          'mask': np.ones((num_devices, global_batch // num_devices), np.float32)}


def _run(mode, devices, steps=2):
  model, schedule, tx, state = _setup()
  parallel = ts.Parallel(mode, devices)
  step = parallel.map(functools.partial(ts.train_step, model=model, tx=tx, schedule=schedule,
                                        rng=jax.random.key(1)), donate_state=True)
  state = parallel.replicate(state)
  metrics = None
  for i in range(steps):
    state, metrics = step(state, parallel.shard_batch(_batch(len(devices), seed=i)))
  return parallel.to_host(state), parallel.to_host(metrics)


def test_eight_devices_equal_one_device_on_the_same_global_batch():
  # BatchNorm averages its statistics over the 'batch' axis, so 8 x 2 examples
  # see exactly the statistics of 1 x 16: parameters must agree.
  state8, metrics8 = _run('pmap', jax.devices()[:8])
  state1, metrics1 = _run('pmap', jax.devices()[:1])
  chex.assert_trees_all_close(state8.params, state1.params, rtol=2e-5, atol=2e-6)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(metrics8['loss'], metrics1['loss'], rtol=1e-5)
  assert int(state8.step) == 2


def test_step_moves_running_statistics_towards_the_global_batch():
  """After one step on 8 devices, the stem's running averages are momentum x the initial
  ones + (1 - momentum) x the mean and variance of the stem convolution's output over
  the whole global batch (a convolution computed here, outside the model)."""
  _, _, _, initial = _setup()
  state, _ = _run('pmap', jax.devices()[:8], steps=1)
  images = ts.normalise(_batch(1, seed=0)['image'][0])
  kernel = initial.params['backbone']['stem_conv']['kernel']
  conv = np.asarray(jax.lax.conv_general_dilated(
      images, kernel, (2, 2), [(3, 3), (3, 3)], dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest'), np.float64)
  momentum = resnet.BN_MOMENTUM
  stats = state.batch_stats['backbone']['stem_bn']
  np.testing.assert_allclose(stats['mean'], (1 - momentum) * conv.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], momentum + (1 - momentum) * conv.var((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_shard_map_agrees_with_pmap():
  state_p, metrics_p = _run('pmap', jax.devices()[:8])
  state_s, metrics_s = _run('shard_map', jax.devices()[:8])
  chex.assert_trees_all_close(state_p.params, state_s.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics_p['accuracy'], metrics_s['accuracy'])


def test_train_step_traces_once():
  model, schedule, tx, state = _setup()
  parallel = ts.Parallel('pmap', jax.devices()[:8])

  @chex.assert_max_traces(n=1)
  def per_core(state, batch):
    return ts.train_step(state, batch, model=model, tx=tx, schedule=schedule,
                         rng=jax.random.key(1))

  step = parallel.map(per_core, donate_state=True)
  state = parallel.replicate(state)
  for i in range(3):
    state, _ = step(state, _batch(8, seed=i))
  assert int(parallel.to_host(state).step) == 3


def test_normalise_uses_the_imagenet_statistics_torchvision_weights_expect():
  images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  np.testing.assert_allclose(ts.normalise(images), (images - mean) / std, rtol=1e-6, atol=1e-6)


def test_lr_schedule_steps_down_every_decay_epochs():
  schedule = ts.lr_schedule(0.01, steps_per_epoch=10, decay_epochs=40, decay_factor=0.1,
                            total_epochs=100)
  for step in [0, 399, 400, 799, 800, 999]:
    expected = 0.01 * 0.1 ** (step // 400)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_lr_warmup_is_linear_then_follows_the_decay():
  schedule = ts.lr_schedule(0.1, steps_per_epoch=10, decay_epochs=4, decay_factor=0.1,
                            total_epochs=8, warmup_epochs=2)
  for step in [0, 9, 19, 20, 39, 40, 79]:
    expected = min(1.0, (step + 1) / 20) * 0.1 * 0.1 ** (step // 40)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_first_sgd_step_matches_pytorch_formula_with_backbone_multiplier():
  # PyTorch SGD, first step (momentum buffer = gradient): p <- p - lr * mult * (g + wd * p).
  model, schedule, tx, state = _setup(backbone_lr_mult=0.1, weight_decay=5e-4,
                                      bn_axis_name=None)
  images = _batch(1)['image'][0]
  labels = _batch(1)['label'][0]

  def loss(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': state.batch_stats},
                             ts.normalise(images), train=True, mutable=['batch_stats'])
    return classifier.Classifier.per_example_losses(outputs, labels)['loss'].mean()

  grads = jax.jit(jax.grad(loss))(state.params)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  for group, mult in [('backbone', 0.1), ('head', 1.0)]:
    for g, p, u in zip(jax.tree.leaves(grads[group]), jax.tree.leaves(state.params[group]),
                       jax.tree.leaves(updates[group])):
      expected = -0.1 * mult * (np.float64(g) + 5e-4 * np.float64(p))
      np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-9)


def test_sgd_steps_follow_pytorch_with_decay_before_momentum():
  """Five steps across an lr decay against a float64 loop of torch.optim.SGD's rule:
  d = g + wd p; buf = d on the first step, else momentum buf + d; p -= lr(step) mult buf.
  After the first step the momentum buffer is no longer the gradient, so the order of
  weight decay and momentum shows."""
  schedule = ts.lr_schedule(0.1, steps_per_epoch=2, decay_epochs=1, decay_factor=0.1,
                            total_epochs=3)
  tx = ts.make_optimizer(schedule, momentum=0.9, weight_decay=0.05, backbone_lr_mult=0.1)
  rng = np.random.default_rng(3)
  params = {'backbone': {'w': rng.normal(size=(3, 2)).astype(np.float32)},
            'head': {'w': rng.normal(size=(4,)).astype(np.float32)}}
  want = {k: np.float64(v['w']) for k, v in params.items()}
  buffers = {k: None for k in params}
  mults = {'backbone': 0.1, 'head': 1.0}
  opt_state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(5):
    grads = {k: {'w': rng.normal(size=v['w'].shape).astype(np.float32)}
             for k, v in params.items()}
    updates, opt_state = update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    lr = 0.1 * 0.1 ** (step // 2)
    for k in want:
      d = np.float64(grads[k]['w']) + 0.05 * want[k]
      buffers[k] = d if buffers[k] is None else 0.9 * buffers[k] + d
      want[k] = want[k] - lr * mults[k] * buffers[k]
    for k in want:
      np.testing.assert_allclose(np.asarray(params[k]['w']), want[k], rtol=1e-5, atol=1e-6)


def test_gradient_clipping_scales_the_whole_gradient_before_decay():
  rng = np.random.default_rng(3)
  params = {'backbone': {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
            'fc': {'b': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
  grads = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), params)
  norm = np.sqrt(8 * 100.0)  # Eight entries of 10.
  for clip, factor in [(1.0, 1.0 / norm), (1000.0, 1.0), (0.0, 1.0)]:
    tx = ts.make_optimizer(lambda step: 0.1, momentum=0.9, weight_decay=5e-4,
                           backbone_lr_mult=0.1, grad_clip_norm=clip)
    updates, _ = tx.update(grads, tx.init(params), params)
    for group, mult in [('backbone', 0.1), ('fc', 1.0)]:
      for g, p, u in zip(jax.tree.leaves(grads[group]), jax.tree.leaves(params[group]),
                         jax.tree.leaves(updates[group])):
        expected = -0.1 * mult * (factor * np.float64(g) + 5e-4 * np.float64(p))
        np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-9)


def test_eval_step_masks_padding():
  model, _, _, state = _setup()
  parallel = ts.Parallel('pmap', jax.devices()[:8])
  p_eval = parallel.map(functools.partial(ts.eval_step, model=model))
  batch = _batch(8)
  batch['mask'][:, 1] = 0.0  # Half of the examples are padding.
  sums = parallel.to_host(p_eval(parallel.replicate(state), batch))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  logits = model.apply(variables, ts.normalise(batch['image'].reshape(-1, 32, 32, 3)))['logits']
  logits = np.asarray(logits, np.float64).reshape(8, 2, NUM_CLASSES)
  keep = batch['mask'] > 0
  correct = (logits.argmax(-1) == batch['label'])[keep].sum()
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, batch['label'][..., None], -1)[..., 0][keep].sum()
  assert float(sums['count']) == 8
  assert float(sums['correct']) == correct
  np.testing.assert_allclose(float(sums['loss']), nll, rtol=1e-5)


def test_head_correct_scores_every_head_against_argmax():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=6)
  outputs = {'logits': rng.normal(size=(6, 4)), 'global_logits': rng.normal(size=(6, 4)),
             'part_logits': rng.normal(size=(6, 3, 4)), 'boxes': rng.normal(size=(6, 3, 4))}
  got = ts.head_correct({k: jnp.asarray(v) for k, v in outputs.items()}, jnp.asarray(labels))
  assert set(got) == {'correct', 'correct_global', 'correct_part_top1'}
  for key, logits in [('correct', outputs['logits']), ('correct_global', outputs['global_logits']),
                      ('correct_part_top1', outputs['part_logits'][:, 0])]:
    expected = [float(np.argmax(row) == y) for row, y in zip(logits, labels)]
    np.testing.assert_array_equal(np.asarray(got[key]), expected)


class _DropoutProbe(nn.Module):
  """Its loss is -sum(dropout(1) * w): the gradient of w is minus the (scaled) dropout
  mask, so the SGD update of w shows the masks the step drew."""

  @nn.compact
  def __call__(self, images, labels=None, train=False):
    w = self.param('w', nn.initializers.zeros, (64,))
    kept = nn.Dropout(0.5, deterministic=not train)(jnp.ones((images.shape[0], 64)))
    return {'logits': jnp.zeros((images.shape[0], 2)), 'loss': -jnp.sum(kept * w, axis=1)}

  @staticmethod
  def per_example_losses(outputs, labels):
    return {'loss': outputs['loss']}


def test_dropout_masks_differ_across_steps_and_devices():
  model = _DropoutProbe()
  tx = ts.make_optimizer(lambda step: 1.0, momentum=0.0, weight_decay=0.0, backbone_lr_mult=1.0)
  state = ts.create_train_state(model, tx, jax.random.key(0), image_size=4)
  parallel = ts.Parallel('pmap', jax.devices()[:8])
  step = parallel.map(functools.partial(ts.train_step, model=model, tx=tx,
                                        schedule=lambda s: 1.0, rng=jax.random.key(1)))
  batch = {'image': np.zeros((8, 1, 4, 4, 3), np.uint8), 'label': np.zeros((8, 1), np.int32)}
  state = parallel.replicate(state)
  updates, previous = [], np.zeros(64)
  for _ in range(3):
    state, _ = step(state, batch)
    w = np.asarray(parallel.to_host(state).params['w'], np.float64)
    updates.append(w - previous)   # The mean over the 8 devices of their masks / 0.5.
    previous = w
  for update in updates:
    # Each device keeps about half: mean of 8 x 64 draws of {0, 2}.
    assert abs(update.mean() - 1.0) < 0.25
    # The same mask on every device would give only 0 or 2 (chance 2^-7 per entry).
    assert np.mean((update > 0.01) & (update < 1.99)) > 0.5
  # Another step, other masks.
  assert not np.allclose(updates[0], updates[1]) and not np.allclose(updates[1], updates[2])


def test_parallel_rejects_unknown_mode():
  with pytest.raises(ValueError, match='pmap'):
    ts.Parallel('pjit')
