"""Supervised contrastive loss against a float64 double loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.ops import contrastive


def _loop(features, labels, temperature, valid):
  """Khosla et al.'s L_out per anchor, written out with plain loops in float64."""
  z = np.asarray(features, np.float64)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  n = len(z)
  loss, has = np.zeros(n), np.zeros(n, bool)
  for i in range(n):
    if not valid[i]:
      continue
    others = [a for a in range(n) if a != i and valid[a]]
    positives = [p for p in others if labels[p] == labels[i]]
    if not positives:
      continue
    denominator = sum(np.exp(z[i] @ z[a] / temperature) for a in others)
    loss[i] = -np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denominator)
                        for p in positives])
    has[i] = True
  return loss, has


@pytest.mark.parametrize('case', ['mixed', 'one_class', 'singletons', 'padding'])
def test_matches_a_double_loop(case):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(8, 5))
  labels = {'mixed': [0, 0, 1, 1, 1, 2, 3, 3],     # Class 2 has a single sample.
            'one_class': [4] * 8,
            'singletons': list(range(8)),
            'padding': [0, 0, 1, 1, 1, 2, 3, 3]}[case]
  valid = np.ones(8, bool)
  if case == 'padding':
    valid[[1, 6]] = False  # Class 0 and class 3 left with one valid sample each.
  labels = np.array(labels)
  for temperature in (0.1, 1.0):
    loss, has = contrastive.supervised_contrastive(
        jnp.asarray(features, jnp.float32), jnp.asarray(labels), temperature,
        jnp.asarray(valid))
    want_loss, want_has = _loop(features, labels, temperature, valid)
    np.testing.assert_array_equal(np.asarray(has), want_has)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-5, atol=1e-6)
  if case == 'singletons':
    assert not np.asarray(has).any()


def test_pulls_same_class_together():
  """Turning a sample towards its class (away from the other) lowers its loss; turning it
  towards the other class raises it."""
  base = np.array([[1.0, 0.0], [0.8, -0.6], [0.0, 1.0], [-0.6, 0.8]])
  labels = jnp.array([0, 0, 1, 1])
  loss = lambda f: float(contrastive.supervised_contrastive(jnp.asarray(f), labels, 0.5)[0][0])
  closer, farther = base.copy(), base.copy()
  closer[0], farther[0] = [0.95, -0.31], [0.6, 0.8]
  assert loss(closer) < loss(base) < loss(farther)


def test_temperature_must_be_positive():
  with pytest.raises(ValueError, match='temperature'):
    contrastive.supervised_contrastive(jnp.ones((2, 3)), jnp.array([0, 0]), 0.0)
