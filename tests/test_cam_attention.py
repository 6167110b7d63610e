"""CAM attention (FDL Eq. 2), smoothing and box scores against float64 loops."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.ops import cam_attention


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


def test_box_means_equal_pixel_means_of_replicated_map():
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


def test_box_means_fractional_boxes_per_image():
  rng = np.random.default_rng(3)
  maps = rng.normal(size=(2, 5, 3)).astype(np.float32)
  height, width = 35.0, 27.0  # Cells of 7 x 9 pixels.
  boxes = rng.uniform(-10, 40, size=(2, 8, 4)).astype(np.float32)
  boxes[..., 2:] = boxes[..., :2] + rng.uniform(1, 20, size=(2, 8, 2))
  boxes[0, 0] = [-30, -30, -20, -20]  # Entirely outside: scored 0.
  got = np.asarray(cam_attention.box_mean_scores(jnp.asarray(maps), jnp.asarray(boxes),
                                                 (height, width)))
  want = np.zeros((2, 8))
  for b in range(2):
    for a in range(8):
      y0, x0, y1, x1 = [float(v) for v in boxes[b, a]]
      y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
      total = 0.0
      for u in range(5):
        for v in range(3):
          oy = max(0.0, min(y1, (u + 1) * 7) - max(y0, u * 7))
          ox = max(0.0, min(x1, (v + 1) * 9) - max(x0, v * 9))
          total += maps[b, u, v] * oy * ox
      area = max(y1 - y0, 0) * max(x1 - x0, 0)
      want[b, a] = total / area if area > 0 else 0.0
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got[0, 0] == 0.0
