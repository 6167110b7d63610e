"""Ranking loss and cross-entropies against float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.ops import ranking


def log_softmax64(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def ranking_loop(scores, ces, margin=1.0):
  out = np.zeros(scores.shape[0])
  for b in range(scores.shape[0]):
    for i in range(scores.shape[1]):
      for j in range(scores.shape[1]):
        if ces[b, j] > ces[b, i]:
          out[b] += max(0.0, margin - float(scores[b, i]) + float(scores[b, j]))
  return out


def test_cross_entropies_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32) * 3
  labels = np.array([0, 4, 2])
  want = -np.take_along_axis(log_softmax64(logits), labels[:, None, None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(ranking.part_cross_entropy(logits, labels)), want,
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ranking.cross_entropy(logits[:, 0], labels)),
                             want[:, 0], rtol=1e-5)


def test_ranking_loss_matches_double_loop():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(4, 6)).astype(np.float32)
  ces = rng.uniform(0, 3, size=(4, 6)).astype(np.float32)
  ces[0, 1] = ces[0, 2]  # A tie: neither pair counts.
  ces[3] = 1.0           # All tied: zero loss.
  got = np.asarray(ranking.ranking_loss(jnp.asarray(scores), jnp.asarray(ces)))
  want = ranking_loop(scores, ces)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[3] == 0.0
  np.testing.assert_allclose(np.asarray(ranking.ranking_loss(scores, ces, margin=0.3)),
                             ranking_loop(scores, ces, 0.3), rtol=1e-5, atol=1e-6)


def test_ranking_loss_is_zero_when_ordered_and_does_not_differentiate_ces():
  ces = jnp.array([[0.1, 0.5, 0.9]])
  ordered = jnp.array([[5.0, 3.0, 1.0]])  # Lower CE scores >= 1 higher: no loss.
  assert float(ranking.ranking_loss(ordered, ces)[0]) == 0.0
  grads = jax.grad(lambda s, c: jnp.sum(ranking.ranking_loss(s, c)), argnums=(0, 1))(
      jnp.zeros((1, 3)), ces)
  # Zero scores: each of the 3 ordered pairs adds 1 - s_i + s_j.
  np.testing.assert_allclose(np.asarray(grads[0]), [[-2.0, 0.0, 2.0]])
  assert not np.any(np.asarray(grads[1]))
