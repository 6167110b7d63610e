"""Supervised contrastive loss (Khosla et al., NeurIPS 2020, the L_out form).

For L2-normalised features z_1..z_N with labels y and temperature t, each anchor i with
positives P(i) = {p != i : y_p = y_i} and others A(i) = {a != i} has

  L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t) ).

An anchor without positives (its class appears once in the batch) has no term: L_i = 0
and it is not counted ('has_positive' False). Features of the padding (`valid` False) are
neither anchors nor candidates.
"""

import jax
import jax.numpy as jnp


def supervised_contrastive(features: jnp.ndarray, labels: jnp.ndarray, temperature: float,
                           valid: jnp.ndarray | None = None):
  """Per-anchor supervised contrastive loss.

  Args:
    features: [N, D]; normalised here (a zero vector stays zero).
    labels: int [N].
    temperature: t > 0.
    valid: bool [N], or None for all.

  Returns:
    (loss [N] float32, has_positive [N] bool).
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be positive, got {temperature}.')
  z = features.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n = z.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
  logits = z @ z.T / temperature
  others = ~jnp.eye(n, dtype=bool) & valid[None, :] & valid[:, None]
  positives = others & (labels[:, None] == labels[None, :])
  # log softmax over the others of each anchor (the anchor itself excluded).
  masked = jnp.where(others, logits, -jnp.inf)
  log_denominator = jax.nn.logsumexp(masked, axis=1, keepdims=True)
  log_prob = jnp.where(others, logits - log_denominator, 0.0)
  count = jnp.sum(positives, axis=1)
  has_positive = count > 0
  loss = -jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1) / jnp.maximum(count, 1)
  return jnp.where(has_positive, loss, 0.0), has_positive
