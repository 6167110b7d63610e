"""Every registered model: its train step traces once and runs pmapped on 8 devices."""


import chex
import jax
import numpy as np
import pytest

from configs import demo
from fgjax import models
from fgjax import train
from fgjax import train_step as ts

IMAGE = 64


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_train_step_traces_once_and_runs_pmapped(name):
  chex.clear_trace_counter()  # The counter is keyed by code, shared across parameters.
  config = demo.get_config()
  config.model.name = name
  config.model.backbone = 'resnet_tiny'
  model, schedule, tx = train.build_model_and_optimizer(config, num_classes=10,
                                                        steps_per_epoch=10)
  state = ts.create_train_state(model, tx, jax.random.key(0), IMAGE)
  parallel = ts.Parallel('pmap', jax.devices()[:8])

  @chex.assert_max_traces(n=1)
  def per_core(state, batch):
    return ts.train_step(state, batch, model=model, tx=tx, schedule=schedule,
                         rng=jax.random.key(1))

  step = parallel.map(per_core, donate_state=True)
  replicated = parallel.replicate(state)
  rng = np.random.default_rng(0)
  for _ in range(2):
    batch = {'image': rng.integers(0, 256, (8, 2, IMAGE, IMAGE, 3), dtype=np.uint8),
             'label': rng.integers(0, 10, (8, 2)).astype(np.int32),
             'mask': np.ones((8, 2), np.float32)}
    replicated, metrics = step(replicated, batch)
  metrics = parallel.to_host(metrics)
  assert np.isfinite(metrics['loss']) and 'accuracy' in metrics
  new = parallel.to_host(replicated)
  assert int(new.step) == 2
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params, new.params)
  assert any(jax.tree.leaves(changed))
  # Replicas stay identical: gradients and BatchNorm statistics are averaged.
  leaves = jax.tree.leaves(replicated.params)
  for leaf in leaves[:5]:
    np.testing.assert_array_equal(np.asarray(leaf[0]), np.asarray(leaf[7]))
