"""Oriented pooling against explicit rotation with scipy.ndimage.map_coordinates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fgjax.ops import oriented_pooling


def reference_rotation(image, angle):
  """image [H, W] sampled on the rotated grid, float64, plus the in-image weight."""
  h, w = image.shape
  t = np.deg2rad(angle)
  # Rotating the image's unit axes counter-clockwise (rows point down).
  rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  offsets = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1) - centre
  source = centre + offsets @ rotation.T  # [H, W, 2] (row, col).
  coords = [source[..., 0], source[..., 1]]
  values = ndimage.map_coordinates(image, coords, order=1, mode='grid-constant', cval=0.0)
  inside = ndimage.map_coordinates(np.ones_like(image), coords, order=1,
                                   mode='grid-constant', cval=0.0)
  return values, inside


def reference_pool(x, angles, num_bins):
  """Explicit loops: per orientation, per band, the mean over the in-image part."""
  b, h, w, c = x.shape
  out = np.zeros((b, len(angles), num_bins, c))
  for k, angle in enumerate(angles):
    for n in range(b):
      for ch in range(c):
        values, inside = reference_rotation(x[n, :, :, ch], angle)
        for p in range(num_bins):
          lo, hi = p * h / num_bins, (p + 1) * h / num_bins
          overlap = np.array([max(0.0, min(i + 1, hi) - max(i, lo)) for i in range(h)])
          out[n, k, p, ch] = (overlap @ values.sum(1)) / (overlap @ inside.sum(1))
  return out


@pytest.mark.parametrize('h,w,angle', [(5, 5, 0), (5, 5, 30), (6, 6, 45), (4, 7, 135), (6, 5, 90)])
def test_rotate_feature_map_matches_map_coordinates(h, w, angle):
  x = np.random.default_rng(h * w).normal(size=(2, h, w, 3))
  got = oriented_pooling.rotate_feature_map(jnp.asarray(x, jnp.float32), angle)
  for n in range(2):
    for ch in range(3):
      expected, _ = reference_rotation(x[n, :, :, ch], angle)
      np.testing.assert_allclose(got[n, :, :, ch], expected, atol=1e-5)


def test_rotation_by_90_is_rot90_and_0_is_identity():
  x = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32)
  np.testing.assert_allclose(oriented_pooling.rotate_feature_map(jnp.asarray(x), 0.0), x,
                             atol=1e-6)
  np.testing.assert_allclose(oriented_pooling.rotate_feature_map(jnp.asarray(x), 90.0),
                             np.rot90(x, -1, axes=(1, 2)), atol=1e-6)


@pytest.mark.parametrize('h,w,bins', [(6, 6, 3), (5, 5, 2), (7, 4, 3)])
def test_oriented_pool_matches_explicit_reference(h, w, bins):
  x = np.random.default_rng(bins).normal(size=(2, h, w, 3))
  angles = oriented_pooling.DEFAULT_ANGLES
  got = jax.jit(oriented_pooling.oriented_pool, static_argnums=(1, 2))(
      jnp.asarray(x, jnp.float32), angles, bins)
  assert got.shape == (2, 4, bins, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, reference_pool(x, angles, bins), atol=1e-5)


@pytest.mark.parametrize('size,bins', [(6, 3), (5, 2)])
def test_rotating_input_by_90_permutes_orientations(size, bins):
  """d'(theta) = d(theta - 90); a 180-degree turn reverses the bins."""
  x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
  pool = jax.jit(oriented_pooling.oriented_pool, static_argnums=(1, 2))
  d = np.asarray(pool(jnp.asarray(x), (0.0, 45.0, 90.0, 135.0), bins))
  d_rot = np.asarray(pool(jnp.asarray(np.rot90(x, 1, axes=(1, 2)).copy()),
                          (0.0, 45.0, 90.0, 135.0), bins))
  np.testing.assert_allclose(d_rot[:, 2], d[:, 0], atol=1e-5)
  np.testing.assert_allclose(d_rot[:, 3], d[:, 1], atol=1e-5)
  np.testing.assert_allclose(d_rot[:, 0], d[:, 2, ::-1], atol=1e-5)
  np.testing.assert_allclose(d_rot[:, 1], d[:, 3, ::-1], atol=1e-5)
  # The orientations are distinct descriptors of the same map.
  assert np.abs(d[:, 0] - d[:, 2]).max() > 1e-2
  assert np.abs(d[:, 1] - d[:, 3]).max() > 1e-2


def test_oriented_pool_of_constant_map_is_constant():
  """The in-image normaliser: lost corners must not dilute a constant map."""
  x = jnp.full((1, 5, 5, 2), 3.0, jnp.bfloat16)
  got = oriented_pooling.oriented_pool(x, (0.0, 30.0, 45.0), 3)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, 3.0, atol=1e-5)
