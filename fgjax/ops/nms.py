"""Greedy hard non-maximum suppression with a fixed number of outputs.

IoU without the +1 pixel convention (as NTS-Net):

    inter = max(0, min(y1, y1') - max(y0, y0')) * max(0, min(x1, x1') - max(x0, x0'))
    IoU   = inter / (area + area' - inter),    area = (y1 - y0) * (x1 - x0),

and IoU = 0 when the union is not positive (degenerate boxes).

Greedy NMS visits boxes by descending score and keeps a box iff its IoU with every box
kept so far is < `iou_threshold`, stopping after `max_outputs` kept boxes. The next kept box
is therefore always the first box, in visiting order, that no kept box suppresses; the loop
below runs `max_outputs` times over that rule instead of once per box, so its cost is
O(max_outputs * N) and it stays on the device (`lax.fori_loop`, no host round trip).

Our reading of the cases the reference leaves open:
- Ties: boxes with equal scores are visited in increasing index order (a stable sort on
  the negated scores). Scores must be float32 or wider: a score rounded to bfloat16 or
  float16 ties with many others (about 930 distinct values among NTS-Net's 1614 anchors
  at bfloat16), so the tie order, not the model, would choose the boxes; such scores are
  refused at trace time (compute the scoring layer in float32).
- Fewer than `max_outputs` survivors: the remaining slots take the boxes that were
  suppressed, in the same visiting order (highest score first), and are marked
  `valid = False`; if there are fewer than `max_outputs` boxes at all, the leftover slots
  repeat the highest-scoring box, also invalid. The output always holds `max_outputs`
  real box indices, distinct whenever N >= max_outputs, so crops and losses downstream keep
  a fixed shape; a caller that wants only kept boxes masks with `valid`. (The reference would
  fail on a ragged array; with 1614 anchors at 448 it never happens there.)
"""

import jax
import jax.numpy as jnp
from jax import lax


def box_iou(box: jnp.ndarray, boxes: jnp.ndarray) -> jnp.ndarray:
  """IoU of one box [4] against boxes [N, 4] (y0, x0, y1, x1), no +1; returns [N]."""
  inter_h = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0)
  inter_w = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0)
  inter = inter_h * inter_w
  area = (box[2] - box[0]) * (box[3] - box[1])
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  union = area + areas - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0.0)


def check_score_precision(scores: jnp.ndarray) -> None:
  """Raises for floating scores narrower than float32 (module docstring, ties)."""
  dtype = jnp.dtype(scores.dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    raise ValueError(f'NMS needs float32 scores, got {dtype}: low-precision scores tie, and '
                     'the tie order would pick the boxes. Compute the scoring layer in float32.')


def greedy_nms(boxes: jnp.ndarray, scores: jnp.ndarray, max_outputs: int,
               iou_threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy hard NMS of one image, fixed output size.

  Args:
    boxes: [N, 4] (y0, x0, y1, x1).
    scores: [N] float32 (or wider); higher is better.
    max_outputs: m, the number of indices returned.
    iou_threshold: a box is suppressed by a kept box when their IoU is >= this.

  Returns:
    indices: int32 [m] into `boxes`, kept boxes first in the order they were kept.
    valid: bool [m], True for boxes kept by NMS, False for fill-ins (see module docstring).
  """
  check_score_precision(scores)
  num_boxes = boxes.shape[0]
  order = jnp.argsort(-lax.stop_gradient(scores), stable=True)
  sorted_boxes = boxes[order]

  def body(slot, carry):
    indices, valid, alive, unused = carry
    any_alive = jnp.any(alive)
    any_unused = jnp.any(unused)
    # argmax returns the first True: the highest-scoring candidate in visiting order.
    pick = jnp.where(any_alive, jnp.argmax(alive),
                     jnp.where(any_unused, jnp.argmax(unused), 0))
    suppressed = box_iou(sorted_boxes[pick], sorted_boxes) >= iou_threshold
    alive = alive & ~suppressed & (jnp.arange(num_boxes) != pick)
    unused = unused.at[pick].set(False)
    indices = indices.at[slot].set(order[pick].astype(jnp.int32))
    valid = valid.at[slot].set(any_alive)
    return indices, valid, alive, unused

  init = (jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), bool),
          jnp.ones((num_boxes,), bool), jnp.ones((num_boxes,), bool))
  indices, valid, _, _ = lax.fori_loop(0, max_outputs, body, init)
  return indices, valid


def batched_greedy_nms(boxes: jnp.ndarray, scores: jnp.ndarray, max_outputs: int,
                       iou_threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`greedy_nms` over a batch.

  Args:
    boxes: [N, 4] shared by all images (anchors), or [B, N, 4].
    scores: [B, N].
    max_outputs: m.
    iou_threshold: suppression threshold.

  Returns:
    indices int32 [B, m] and valid bool [B, m].
  """
  box_axis = None if boxes.ndim == 2 else 0
  fn = lambda b, s: greedy_nms(b, s, max_outputs, iou_threshold)
  return jax.vmap(fn, in_axes=(box_axis, 0))(boxes, scores)
