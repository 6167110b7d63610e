"""CAM attention (FDL Eq. 2), smoothing and box scores against float64 loops.

The box-score mapping is checked against the backbone's measured receptive fields in
tests/test_registration.py."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.ops import cam_attention
from fgjax.ops import nms


def cams_loop(features, kernel):
  """M_k[b, y, x] = sum_i W_ki Z_i[b, y, x], kernel = W^T."""
  batch, h, w, n = features.shape
  classes = kernel.shape[1]
  out = np.zeros((batch, h, w, classes))
  for b in range(batch):
    for y in range(h):
      for x in range(w):
        for k in range(classes):
          out[b, y, x, k] = sum(float(kernel[i, k]) * float(features[b, y, x, i])
                                for i in range(n))
  return out


def test_attention_max_and_single_match_eq2():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  kernel = rng.normal(size=(5, 7)).astype(np.float32)
  cams = cams_loop(features, kernel)
  np.testing.assert_allclose(np.asarray(cam_attention.class_activation_maps(features, kernel)),
                             cams, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cam_attention.attention_map(features, kernel, 'max')),
                             cams.max(axis=-1), atol=1e-5)
  single = cam_attention.attention_map(features, kernel, 'single', jnp.array([6, 2]))
  np.testing.assert_allclose(np.asarray(single), np.stack([cams[0, ..., 6], cams[1, ..., 2]]),
                             atol=1e-5)
  with pytest.raises(ValueError):
    cam_attention.attention_map(features, kernel, 'single')


def smooth_loop(maps, sigma, kernel_size):
  """2-D Gaussian (outer product of normalised taps) on a 'symmetric'-padded map."""
  r = kernel_size // 2
  t = np.arange(-r, r + 1)
  g = np.exp(-t ** 2 / (2 * sigma ** 2))
  g2 = np.outer(g, g) / np.outer(g, g).sum()
  out = np.zeros(maps.shape)
  for b in range(maps.shape[0]):
    padded = np.pad(np.asarray(maps[b], np.float64), r, mode='symmetric')
    for y in range(maps.shape[1]):
      for x in range(maps.shape[2]):
        out[b, y, x] = np.sum(g2 * padded[y:y + kernel_size, x:x + kernel_size])
  return out


@pytest.mark.parametrize('shape,sigma,kernel_size', [((2, 6, 5), 1.0, None),
                                                     ((1, 14, 14), 1.5, 5),
                                                     ((1, 3, 2), 0.8, 5),
                                                     ((2, 2, 2), 1.0, None)])
def test_gaussian_smoothing_matches_loop(shape, sigma, kernel_size):
  maps = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  size = kernel_size or 2 * math.ceil(3 * sigma) + 1
  got = cam_attention.gaussian_smooth(jnp.asarray(maps), sigma, kernel_size)
  np.testing.assert_allclose(np.asarray(got), smooth_loop(maps, sigma, size), atol=1e-5)


def test_smoothing_keeps_constants_and_can_be_off():
  maps = jnp.full((1, 4, 4), 3.0)
  np.testing.assert_allclose(np.asarray(cam_attention.gaussian_smooth(maps, 2.0)), 3.0,
                             rtol=1e-6)
  assert cam_attention.gaussian_smooth(maps, 0.0) is maps


def test_box_means_original_rule_equal_pixel_means_of_replicated_map():
  """The defaults (alignment='top_left', padding='inside'): cell u covers [4u, 4u+4)."""
  rng = np.random.default_rng(2)
  maps = rng.normal(size=(2, 3, 4)).astype(np.float32)
  height, width = 12, 16  # 4 x 4 pixels per cell.
  up = np.repeat(np.repeat(maps.astype(np.float64), 4, axis=1), 4, axis=2)
  boxes = np.array([[0, 0, 12, 16], [1, 2, 5, 7], [-5, -3, 4, 6], [9, 14, 20, 30],
                    [4, 4, 8, 8], [3, 0, 4, 1]], np.float32)
  got = np.asarray(cam_attention.box_mean_scores(jnp.asarray(maps), jnp.asarray(boxes),
                                                 (height, width)))
  want = np.zeros((2, len(boxes)))
  for b in range(2):
    for a, (y0, x0, y1, x1) in enumerate(boxes.astype(int)):
      y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
      want[b, a] = up[b, y0:y1, x0:x1].mean()
  np.testing.assert_allclose(got, want, atol=1e-5)
  explicit = cam_attention.box_mean_scores(jnp.asarray(maps), jnp.asarray(boxes),
                                           (height, width), alignment='top_left',
                                           padding='inside')
  np.testing.assert_array_equal(np.asarray(explicit), got)


def nearest_centre_means(maps, boxes, image_hw, stride, padding, samples=2):
  """Float64 brute force over `samples` x `samples` points per pixel (box corners on that
  lattice): a point inside the image takes the value of the cell whose receptive-field
  centre (pixel u * stride, i.e. u * stride + 0.5) is nearest; a point outside takes min M
  ('min') or is left out ('inside'). Returns [B, A]."""
  height, width = image_hw
  out = np.zeros((maps.shape[0], len(boxes)))
  for b, m in enumerate(np.asarray(maps, np.float64)):
    centres_y = np.arange(m.shape[0]) * stride + 0.5
    centres_x = np.arange(m.shape[1]) * stride + 0.5
    for a, (y0, x0, y1, x1) in enumerate(np.asarray(boxes, np.float64)):
      values = []
      for y in (np.arange(round(y0 * samples), round(y1 * samples)) + 0.5) / samples:
        for x in (np.arange(round(x0 * samples), round(x1 * samples)) + 0.5) / samples:
          if 0 <= y < height and 0 <= x < width:
            values.append(m[np.argmin(np.abs(y - centres_y)), np.argmin(np.abs(x - centres_x))])
          elif padding == 'min':
            values.append(m.min())
      out[b, a] = np.mean(values) if values else (m.min() if padding == 'min' else 0.0)
  return out


BOXES = np.array([[0, 0, 12, 16],        # the whole image
                  [1, 2, 5, 7], [4, 4, 8, 8], [3, 0, 4, 1], [2.5, 6.5, 6.5, 10.5],
                  [-5, -3, 4, 6],        # corner, partly outside
                  [9, 14, 20, 30],       # the other corner, mostly outside
                  [-4, -2, 16, 20],      # the image and a frame of padding
                  [-10, -10, -2, -2],    # wholly outside
                  [5.5, 3, 5.5, 9]],     # no area
                 np.float32)


@pytest.mark.parametrize('image_hw,map_hw,stride', [((12, 16), (3, 4), None),   # H / h = 4
                                                    ((10, 13), (3, 4), 4)])     # ceil(H / 4)
@pytest.mark.parametrize('padding', ['min', 'inside'])
def test_receptive_field_box_means_match_brute_force(image_hw, map_hw, stride, padding):
  maps = np.random.default_rng(4).normal(size=(2,) + map_hw).astype(np.float32)
  got = cam_attention.box_mean_scores(jnp.asarray(maps), jnp.asarray(BOXES), image_hw,
                                      alignment='receptive_field', padding=padding,
                                      stride=stride)
  want = nearest_centre_means(maps, BOXES, image_hw, stride or 4, padding)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def cell_spans_loop(num_cells, extent, stride, alignment):
  """[(start, end)] per cell: 'receptive_field' splits the image midway between the
  centres u * stride + 0.5; 'top_left' cuts it every stride pixels."""
  if alignment == 'top_left':
    return [(min(u * stride, extent), min((u + 1) * stride, extent)) for u in range(num_cells)]
  centres = [u * stride + 0.5 for u in range(num_cells)]
  cuts = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [extent]
  return list(zip(cuts, cuts[1:]))


@pytest.mark.parametrize('alignment', ['receptive_field', 'top_left'])
@pytest.mark.parametrize('padding', ['min', 'inside'])
def test_box_means_fractional_boxes_per_image(alignment, padding):
  rng = np.random.default_rng(3)
  maps = rng.normal(size=(2, 5, 3)).astype(np.float32)
  height, width = 35.0, 27.0  # Cells of 7 x 9 pixels.
  boxes = rng.uniform(-10, 40, size=(2, 8, 4)).astype(np.float32)
  boxes[..., 2:] = boxes[..., :2] + rng.uniform(1, 20, size=(2, 8, 2))
  boxes[0, 0] = [-30, -30, -20, -20]  # Entirely outside.
  got = np.asarray(cam_attention.box_mean_scores(jnp.asarray(maps), jnp.asarray(boxes),
                                                 (height, width), alignment=alignment,
                                                 padding=padding))
  spans_y = cell_spans_loop(5, height, 7.0, alignment)
  spans_x = cell_spans_loop(3, width, 9.0, alignment)
  want = np.zeros((2, 8))
  for b in range(2):
    low = float(maps[b].min())
    for a in range(8):
      y0, x0, y1, x1 = [float(v) for v in boxes[b, a]]
      total = 0.0
      for u, (sy0, sy1) in enumerate(spans_y):
        for v, (sx0, sx1) in enumerate(spans_x):
          oy = max(0.0, min(y1, sy1) - max(y0, sy0))
          ox = max(0.0, min(x1, sx1) - max(x0, sx0))
          total += maps[b, u, v] * oy * ox
      inside = (max(0.0, min(y1, height) - max(y0, 0.0))
                * max(0.0, min(x1, width) - max(x0, 0.0)))
      if padding == 'inside':
        want[b, a] = total / inside if inside > 0 else 0.0
      else:
        area = (y1 - y0) * (x1 - x0)
        want[b, a] = (total + low * (area - inside)) / area
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got[0, 0] == (maps[0].min() if padding == 'min' else 0.0)


def test_mostly_padding_box_scores_towards_the_minimum():
  """Issue 9's demo case: a corner box of 73 % padding no longer scores like its cell."""
  maps = jnp.asarray([[[3.0, 1.0], [1.0, 0.0]]])  # 64 x 64 input, stride 32.
  boxes = jnp.asarray([[-13.0, -13.0, 14.0, 14.0],   # 27 % image (cell (0, 0)), 73 % padding
                       [2.0, 2.0, 14.0, 14.0]])      # all of it is cell (0, 0)
  score = lambda padding: np.asarray(cam_attention.box_mean_scores(
      maps, boxes, (64, 64), alignment='receptive_field', padding=padding, stride=32))[0]
  np.testing.assert_array_equal(score('inside'), [3.0, 3.0])  # The padding did not count.
  np.testing.assert_allclose(score('min'), [3.0 * 14 * 14 / 27 ** 2, 3.0], rtol=1e-6)


def test_equivalent_boxes_score_bit_identical_and_ties_prefer_the_image():
  maps = np.zeros((1, 3, 3), np.float32)
  maps[0, 1:, 1:] = [[5.0, 1.0], [2.0, 3.0]]
  maps += np.float32(0.1)  # m = float32(0.1): sums of shares times m would round.
  boxes = np.array([[-4, -4, 2, 2],       # padding + cell (0, 0): only least attended
                    [0, 0, 2, 6],         # cells (0, 0), (0, 1): only least attended
                    [0, -20, 2, 2],       # more padding, same
                    [3, 3, 6, 6],         # inside cell (1, 1) (spans [2.5, 6.5))
                    [2.5, 2.5, 6.5, 6.5]], np.float32)  # all of cell (1, 1)
  scores = np.asarray(cam_attention.box_mean_scores(
      jnp.asarray(maps), jnp.asarray(boxes), (12, 12), alignment='receptive_field',
      padding='min', stride=4))[0]
  assert scores[0] == scores[1] == scores[2] == np.float32(0.1)
  assert scores[3] == scores[4]
  # Equal scores: the box with the most image first, then index order; NMS keeps that order.
  order = cam_attention.tie_break_order(boxes, (12, 12))
  np.testing.assert_array_equal(order, [4, 1, 3, 0, 2])  # Areas 16, 12, 9, 4, 4.
  kept, _ = nms.greedy_nms(jnp.asarray(boxes[order]), jnp.asarray(scores[order]), 3, 0.99)
  np.testing.assert_array_equal(order[np.asarray(kept)], [4, 3, 1])


def test_unknown_alignment_or_padding_raises():
  maps, boxes = jnp.zeros((1, 2, 2)), jnp.zeros((1, 4))
  with pytest.raises(ValueError, match='receptive_field'):
    cam_attention.box_mean_scores(maps, boxes, (64, 64), alignment='centre')
  with pytest.raises(ValueError, match='inside'):
    cam_attention.box_mean_scores(maps, boxes, (64, 64), padding='zero')
