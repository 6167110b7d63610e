"""Max-pool morphology against scipy.ndimage (mode='reflect', the default there)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from fgjax.ops import morphology

CASES = [(7, 6, 1), (7, 6, 2), (8, 5, 3), (6, 9, 4), (5, 5, 5)]  # (H, W, k), odd and even k.

PAIRS = [
    (morphology.grey_dilation, ndimage.grey_dilation),
    (morphology.grey_erosion, ndimage.grey_erosion),
    (morphology.grey_opening, ndimage.grey_opening),
    (morphology.grey_closing, ndimage.grey_closing),
]


@pytest.mark.parametrize('h,w,k', CASES)
def test_matches_scipy_on_masks(h, w, k):
  x = np.random.default_rng(h * w + k).normal(size=(2, h, w)).astype(np.float32)
  for ours, theirs in PAIRS:
    got = jax.jit(ours, static_argnums=1)(jnp.asarray(x), k)
    expected = np.stack([theirs(x[b].astype(np.float64), size=(k, k)) for b in range(2)])
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=ours.__name__)


def test_matches_scipy_on_channels_last_feature_maps():
  x = np.random.default_rng(0).normal(size=(2, 6, 7, 3)).astype(np.float32)
  for ours, theirs in PAIRS:
    got = ours(jnp.asarray(x), 3, axes=(1, 2))
    expected = theirs(x.astype(np.float64), size=(1, 3, 3, 1))
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=ours.__name__)


def test_binary_opening_removes_speck_and_closing_fills_hole():
  mask = np.zeros((1, 9, 9), np.float32)
  mask[0, 2:7, 2:7] = 1.0
  mask[0, 4, 4] = 0.0  # a one-pixel hole
  mask[0, 0, 8] = 1.0  # a one-pixel speck
  opened = np.asarray(morphology.grey_opening(jnp.asarray(mask), 3))
  closed = np.asarray(morphology.grey_closing(jnp.asarray(mask), 3))
  assert opened[0, 0, 8] == 0.0
  assert closed[0, 4, 4] == 1.0


def test_gradient_flows_through_dilation():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5, 5)), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(morphology.grey_closing(x, 3)))(x)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0
