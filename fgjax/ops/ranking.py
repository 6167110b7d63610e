"""Per-example cross-entropy and NTS-Net's pairwise ranking loss.

Every function returns per-example values so that the caller can mask and average
(padded evaluation batches, the train loop's mask).
"""

import jax
import jax.numpy as jnp
from jax import lax


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax cross-entropy, -log softmax(logits)[label].

  Args:
    logits: [..., C].
    labels: int [...], class indices.

  Returns:
    [...] float32.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def part_cross_entropy(part_logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Cross-entropy of every part against its image's label.

  Args:
    part_logits: [B, P, C].
    labels: int [B].

  Returns:
    [B, P] float32.
  """
  return cross_entropy(part_logits, jnp.broadcast_to(labels[:, None], part_logits.shape[:2]))


def ranking_loss(scores: jnp.ndarray, part_losses: jnp.ndarray,
                 margin: float = 1.0) -> jnp.ndarray:
  """NTS-Net's pairwise ranking (hinge) loss, per image.

      L_b = sum_{i, j : CE_bj > CE_bi} max(0, margin - s_bi + s_bj)

  A part with a lower cross-entropy (more informative) should score at least `margin` above
  every part with a higher one. NTS-Net sums L_b over the batch and divides by the batch
  size, i.e. the batch mean of these values. The cross-entropies only decide which pairs
  count: no gradient flows into them.

  Args:
    scores: navigator scores s of the selected parts, [B, P].
    part_losses: their cross-entropies CE, [B, P].
    margin: 1 in NTS-Net.

  Returns:
    [B] float32.
  """
  part_losses = lax.stop_gradient(part_losses)
  scores = scores.astype(jnp.float32)
  # [B, i, j]: pair (i, j) counts when CE_j > CE_i.
  counts = part_losses[:, None, :] > part_losses[:, :, None]
  hinge = jax.nn.relu(margin - scores[:, :, None] + scores[:, None, :])
  return jnp.sum(jnp.where(counts, hinge, 0.0), axis=(1, 2))
