"""Greedy NMS against a plain Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.ops import nms


def iou_loop(a, b):
  """IoU of two boxes in float64, no +1; 0 for a non-positive union."""
  ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ih * iw
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def greedy_loop(boxes, scores, m, thresh):
  """Textbook greedy NMS, then the documented fill rule."""
  boxes = np.asarray(boxes, np.float64)
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if len(kept) == m:
      break
    if all(iou_loop(boxes[i], boxes[k]) < thresh for k in kept):
      kept.append(i)
  valid = [True] * len(kept)
  for i in order:  # Fill with suppressed boxes, best first.
    if len(kept) == m:
      break
    if i not in kept:
      kept.append(i)
      valid.append(False)
  while len(kept) < m:  # Fewer boxes than slots: repeat the best.
    kept.append(order[0])
    valid.append(False)
  return np.array(kept), np.array(valid)


def random_boxes(rng, n, size=100.0):
  y0, x0 = rng.uniform(0, size, n), rng.uniform(0, size, n)
  h, w = rng.uniform(5, 40, n), rng.uniform(5, 40, n)
  return np.stack([y0, x0, y0 + h, x0 + w], axis=1).astype(np.float32)


nms_jit = jax.jit(nms.greedy_nms, static_argnums=2)


@pytest.mark.parametrize('seed,thresh', [(0, 0.25), (1, 0.25), (2, 0.5), (3, 0.1)])
def test_matches_loop_on_random_boxes(seed, thresh):
  rng = np.random.default_rng(seed)
  boxes, scores = random_boxes(rng, 60), rng.normal(size=60).astype(np.float32)
  idx, valid = nms_jit(jnp.asarray(boxes), jnp.asarray(scores), 6, thresh)
  want_idx, want_valid = greedy_loop(boxes, scores, 6, thresh)
  np.testing.assert_array_equal(np.asarray(idx), want_idx)
  np.testing.assert_array_equal(np.asarray(valid), want_valid)


def test_ties_break_by_index():
  rng = np.random.default_rng(7)
  boxes = random_boxes(rng, 40)
  scores = rng.integers(0, 3, 40).astype(np.float32)  # Many equal scores.
  idx, valid = nms_jit(jnp.asarray(boxes), jnp.asarray(scores), 8, 0.25)
  want_idx, want_valid = greedy_loop(boxes, scores, 8, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), want_idx)
  np.testing.assert_array_equal(np.asarray(valid), want_valid)
  # Equal scores, disjoint boxes: plain index order.
  disjoint = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(5)], np.float32)
  idx, _ = nms_jit(jnp.asarray(disjoint), jnp.zeros(5), 3, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), [0, 1, 2])


def test_all_suppressed_fills_with_suppressed_boxes():
  boxes = jnp.tile(jnp.array([[0.0, 0.0, 10.0, 10.0]]), (5, 1))
  scores = jnp.array([0.1, 0.5, 0.3, 0.5, 0.2])
  idx, valid = nms_jit(boxes, scores, 4, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), [1, 3, 2, 4])
  np.testing.assert_array_equal(np.asarray(valid), [True, False, False, False])


def test_fewer_boxes_than_slots():
  boxes = jnp.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
  idx, valid = nms_jit(boxes, jnp.array([0.2, 0.9]), 4, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), [1, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(valid), [True, True, False, False])


def test_threshold_is_strict_and_iou_has_no_plus_one():
  # IoU of these two is exactly 50 / 150 = 1/3 without the +1 convention.
  boxes = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0]])
  np.testing.assert_allclose(np.asarray(nms.box_iou(boxes[0], boxes)), [1.0, 1 / 3], rtol=1e-6)
  idx, valid = nms_jit(boxes, jnp.array([1.0, 0.5]), 2, 1 / 3 + 1e-6)
  assert np.asarray(valid).all()
  idx, valid = nms_jit(boxes, jnp.array([1.0, 0.5]), 2, 1 / 3 - 1e-6)
  np.testing.assert_array_equal(np.asarray(valid), [True, False])


def test_iou_equal_to_the_threshold_suppresses():
  # 40 / 160 = 0.25 exactly in float32: NTS-Net's threshold, where `>` and `>=` part ways
  # (728 anchor pairs at 448 have an IoU of exactly 0.25).
  boxes = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 6.0, 10.0, 16.0], [20.0, 0.0, 30.0, 10.0]])
  assert iou_loop(np.asarray(boxes[0]), np.asarray(boxes[1])) == 0.25
  assert float(nms.box_iou(boxes[0], boxes)[1]) == 0.25
  scores = jnp.array([1.0, 0.9, 0.5])
  idx, valid = nms_jit(boxes, scores, 2, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), [0, 2])
  np.testing.assert_array_equal(np.asarray(valid), [True, True])
  want_idx, want_valid = greedy_loop(np.asarray(boxes), [1.0, 0.9, 0.5], 2, 0.25)
  np.testing.assert_array_equal(np.asarray(idx), want_idx)
  batched, _ = nms.batched_greedy_nms(boxes, scores[None], 2, 0.25)
  np.testing.assert_array_equal(np.asarray(batched)[0], want_idx)


def test_batched_shared_and_per_image_boxes():
  rng = np.random.default_rng(3)
  boxes = random_boxes(rng, 30)
  scores = rng.normal(size=(4, 30)).astype(np.float32)
  fn = jax.jit(nms.batched_greedy_nms, static_argnums=2)
  idx, valid = fn(jnp.asarray(boxes), jnp.asarray(scores), 5, 0.25)
  assert idx.shape == valid.shape == (4, 5) and idx.dtype == jnp.int32
  per_image = np.stack([random_boxes(rng, 30) for _ in range(4)])
  idx2, _ = fn(jnp.asarray(per_image), jnp.asarray(scores), 5, 0.25)
  for b in range(4):
    np.testing.assert_array_equal(np.asarray(idx[b]), greedy_loop(boxes, scores[b], 5, 0.25)[0])
    np.testing.assert_array_equal(np.asarray(idx2[b]),
                                  greedy_loop(per_image[b], scores[b], 5, 0.25)[0])
