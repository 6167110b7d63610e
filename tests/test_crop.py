"""Crop-and-zoom against a direct bilinear (align_corners=True) formula in loops."""

import jax
import jax.numpy as jnp
import numpy as np

from fgjax.ops import crop


def bilinear_loop(image, box, size):
  """out[i, j] = bilinear sample of `image` at the align_corners positions, float64."""
  image = np.asarray(image, np.float64)
  height, width, channels = image.shape
  y0, x0, y1, x1 = [float(v) for v in box]
  out = np.zeros((size, size, channels))
  denom = max(size - 1, 1)
  for i in range(size):
    y = y0 + i * (y1 - 1 - y0) / denom
    for j in range(size):
      x = x0 + j * (x1 - 1 - x0) / denom
      fy, fx = int(np.floor(y)), int(np.floor(x))
      for a in (0, 1):
        for b in (0, 1):
          wy = 1 - abs(y - (fy + a))
          wx = 1 - abs(x - (fx + b))
          yy = min(max(fy + a, 0), height - 1)
          xx = min(max(fx + b, 0), width - 1)
          out[i, j] += wy * wx * image[yy, xx]
  return out


def test_matches_loop_integer_and_fractional_boxes():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 20, 24, 3)).astype(np.float32)
  boxes = np.array([[[0, 0, 20, 24], [3, 5, 11, 19], [2.5, 1.25, 17.75, 9.5]],
                    [[10, 12, 20, 24], [0, 0, 2, 2], [4.2, 6.6, 8.1, 23.9]]], np.float32)
  got = np.asarray(jax.jit(crop.crop_and_zoom, static_argnums=2)(images, boxes, 7))
  assert got.shape == (2, 3, 7, 7, 3)
  for b in range(2):
    for r in range(3):
      np.testing.assert_allclose(got[b, r], bilinear_loop(images[b], boxes[b, r], 7),
                                 atol=1e-5, rtol=1e-5)


def test_whole_image_at_its_own_size_is_identity():
  image = np.random.default_rng(1).normal(size=(1, 9, 9, 2)).astype(np.float32)
  got = crop.crop_and_zoom(image, np.array([[[0, 0, 9, 9]]], np.float32), 9)
  np.testing.assert_allclose(np.asarray(got[0, 0]), image[0], atol=1e-6)


def test_single_pixel_output_and_no_gradient():
  image = jnp.arange(16.0).reshape(1, 4, 4, 1)
  box = jnp.array([[[1.0, 2.0, 3.0, 4.0]]])
  np.testing.assert_allclose(np.asarray(crop.crop_and_zoom(image, box, 1))[0, 0, 0, 0, 0],
                             image[0, 1, 2, 0])
  grads = jax.grad(lambda im, bx: jnp.sum(crop.crop_and_zoom(im, bx, 3)), argnums=(0, 1))(
      image, box)
  assert not np.any(np.asarray(grads[0])) and not np.any(np.asarray(grads[1]))


def test_zoom_into_regions_pads_with_zeros():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  boxes = np.array([[[-4, -4, 4, 4], [2, 3, 12, 12]], [[0, 0, 8, 8], [-4, 5, 3, 12]]],
                   np.float32)
  got = np.asarray(crop.zoom_into_regions(images, boxes, 4, 5))
  assert got.shape == (4, 5, 5, 3)
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for b in range(2):
    for r in range(2):
      np.testing.assert_allclose(got[b * 2 + r], bilinear_loop(padded[b], boxes[b, r] + 4, 5),
                                 atol=1e-5, rtol=1e-5)
