"""A non-finite loss: the default stops before saving it; train.skip_nonfinite_steps rides
through a rare spike (the update skipped on every device) and stops after N in a row."""

import functools
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax import inference
from fgjax import train
from fgjax import train_step as ts


class _SpikeProbe(nn.Module):
  """Least squares of w against the image's channel means, with a running mean of them;
  an example labelled 1 has a NaN loss (a spike)."""

  @nn.compact
  def __call__(self, images, labels=None, train=False):
    w = self.param('w', nn.initializers.zeros, (3,))
    running = self.variable('batch_stats', 'mean', jnp.zeros, (3,))
    x = jnp.mean(images, axis=(1, 2))
    if train and not self.is_initializing():
      running.value = 0.5 * running.value + 0.5 * jnp.mean(x, axis=0)
    loss = jnp.sum((x - w) ** 2, axis=1)
    if labels is not None:
      loss = loss * jnp.where(labels == 1, jnp.nan, 1.0)   # NaN loss and gradient.
    return {'logits': jnp.zeros((images.shape[0], 2)), 'loss': loss}

  @staticmethod
  def per_example_losses(outputs, labels):
    return {'loss': outputs['loss']}


def _run(batches, skip):
  model = _SpikeProbe()
  tx = ts.make_optimizer(lambda step: 0.1, momentum=0.9, weight_decay=0.0,
                         backbone_lr_mult=1.0)
  parallel = ts.Parallel('pmap', jax.devices()[:8])
  step = parallel.map(functools.partial(ts.train_step, model=model, tx=tx,
                                        schedule=lambda s: 0.1, rng=jax.random.key(1),
                                        skip_nonfinite=skip))
  state = parallel.replicate(ts.create_train_state(model, tx, jax.random.key(0), 4))
  skipped = []
  for batch in batches:
    state, metrics = step(state, batch)
    skipped.append(float(parallel.to_host(metrics).get('skipped', np.nan)))
  return parallel.to_host(state), skipped


def _batch(seed, spike_device=None):
  rng = np.random.default_rng(seed)
  labels = np.zeros((8, 1), np.int32)
  if spike_device is not None:
    labels[spike_device] = 1
  return {'image': rng.integers(0, 256, (8, 1, 4, 4, 3), dtype=np.uint8), 'label': labels}


def test_a_spike_on_one_device_skips_the_whole_update():
  a, spike, b = _batch(0), _batch(1, spike_device=3), _batch(2)
  with_spike, skipped = _run([a, spike, b], skip=True)
  without, _ = _run([a, b], skip=True)
  assert skipped == [0.0, 1.0, 0.0]
  assert int(with_spike.step) == 3 and int(without.step) == 2
  # Constant lr: skipping the spike leaves params, momentum and running statistics as if
  # the spike batch had never come.
  chex.assert_trees_all_equal(with_spike.params, without.params)
  chex.assert_trees_all_equal(with_spike.opt_state, without.opt_state)
  chex.assert_trees_all_equal(with_spike.batch_stats, without.batch_stats)
  assert np.all(np.isfinite(with_spike.params['w']))
  # Without skipping, the spike's NaN reaches the parameters (what the option prevents).
  plain, _ = _run([a, spike, b], skip=False)
  assert np.all(np.isnan(plain.params['w']))


@pytest.fixture
def diverging(tiny_config):
  """lr 1e9: the loss becomes non-finite within the first epoch (checked below). Logs only
  at the end: the steps are checked because a checkpoint is saved after every one."""
  tiny_config.train.base_lr = 1e9
  tiny_config.train.log_every_steps = 100
  tiny_config.train.checkpoint_every_steps = 1
  tiny_config.train.keep_checkpoints = 20
  return tiny_config


def _saved(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                if s.isdigit())


def test_default_stops_at_the_first_non_finite_step_and_keeps_the_good_checkpoints(
    diverging, tmp_path):
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError, match=r'at step (\d+)') as error:
    train.train_and_evaluate(diverging, workdir)
  bad_step = int(str(error.value).split('at step ')[1].split(':')[0])
  saved = _saved(workdir)
  # Every step before the bad one was saved, the bad one was not.
  assert saved == list(range(1, bad_step))
  state = inference.load_run(workdir, 'latest').state   # What a rerun restores.
  assert int(state.step) == bad_step - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_skipping_stops_after_n_in_a_row_with_the_last_good_parameters(diverging, tmp_path):
  diverging.train.skip_nonfinite_steps = 3
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError, match='3 steps in a row up to step'):
    train.train_and_evaluate(diverging, workdir)
  state = inference.load_run(workdir, 'latest').state
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
