"""DSM against an explicit float64 circulant ridge regression in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from fgjax.ops import scale_mining

SIZES = [(1, 1), (2, 3), (3, 1), (4, 2), (5, 3), (8, 4), (9, 2)]  # (S, C): odd and even S.


def reference_ridge(x, y, lam):
  """Stacks C(x_c) for every channel and solves the ridge regression in float64."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  s, c = x.shape
  design = np.concatenate([scipy.linalg.circulant(x[:, i]) for i in range(c)], axis=0)
  targets = np.tile(y, c)
  return np.linalg.solve(design.T @ design + lam * np.eye(s), design.T @ targets)


def reference_response(w, z):
  return sum(scipy.linalg.circulant(z[:, i]) @ w for i in range(z.shape[1]))


@pytest.mark.parametrize('s,c', SIZES)
def test_fft_solution_equals_circulant_ridge_float64(s, c):
  rng = np.random.default_rng(s * 10 + c)
  x = rng.normal(size=(3, s, c))
  y = rng.normal(size=(3, s))
  lam = 0.1
  expected = np.stack([reference_ridge(x[i], y[i], lam) for i in range(3)])
  with jax.enable_x64(True):
    fft = np.asarray(jax.jit(scale_mining.ridge_filter_fft)(jnp.asarray(x), jnp.asarray(y), lam))
  assert fft.dtype == np.float64
  np.testing.assert_allclose(fft, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('s,c', [(4, 2), (5, 3)])
def test_dense_solution_equals_circulant_ridge_float64(s, c):
  rng = np.random.default_rng(s * 10 + c)
  x = rng.normal(size=(2, s, c))
  y = rng.normal(size=(s,))
  expected = np.stack([reference_ridge(x[i], y, 0.1) for i in range(2)])
  with jax.enable_x64(True):
    dense = jax.jit(scale_mining.ridge_filter_dense)(jnp.asarray(x), jnp.asarray(y), 0.1)
  np.testing.assert_allclose(dense, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('s,c', [(4, 3), (5, 2)])
def test_fft_solution_float32_and_bfloat16_inputs(s, c):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(s, c)).astype(np.float32)
  y = rng.normal(size=(s,)).astype(np.float32)
  expected = reference_ridge(x, y, 0.5)
  w32 = scale_mining.ridge_filter_fft(jnp.asarray(x), jnp.asarray(y), 0.5)
  assert w32.dtype == jnp.float32
  np.testing.assert_allclose(w32, expected, atol=1e-4, rtol=1e-4)
  w16 = scale_mining.ridge_filter_fft(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y), 0.5)
  assert w16.dtype == jnp.float32  # FFTs never run in bfloat16.


def test_circulant_convention_and_diagonalisation():
  """C(x)[i, j] = x[(i - j) mod S] and C(x) = F^H diag(fft(x)) F with unitary F."""
  x = np.random.default_rng(1).normal(size=6)
  matrix = np.asarray(scale_mining.circulant(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(matrix, scipy.linalg.circulant(x), atol=1e-6)
  f = np.fft.fft(np.eye(6)) / np.sqrt(6)
  np.testing.assert_allclose(f.conj().T @ np.diag(np.fft.fft(x)) @ f,
                             scipy.linalg.circulant(x), atol=1e-10)


@pytest.mark.parametrize('s,c', [(3, 2), (4, 1), (7, 3)])
def test_response_equals_explicit_circulant(s, c):
  rng = np.random.default_rng(2)
  w = rng.normal(size=(s,))
  z = rng.normal(size=(2, s, c))
  expected = np.stack([reference_response(w, z[i]) for i in range(2)])
  with jax.enable_x64(True):
    fft = jax.jit(scale_mining.filter_response)(jnp.asarray(w), jnp.asarray(z))
    dense = jax.jit(scale_mining.filter_response_dense)(jnp.asarray(w), jnp.asarray(z))
  np.testing.assert_allclose(fft, expected, atol=1e-9)
  np.testing.assert_allclose(dense, expected, atol=1e-9)


@pytest.mark.parametrize('shift', [0, 1, 3])
def test_response_peaks_at_the_shift_of_the_template(shift):
  rng = np.random.default_rng(3)
  template = rng.normal(size=(5, 8)).astype(np.float32)
  target = scale_mining.gaussian_shift_target(5, sigma=0.7)
  descriptors = np.roll(template, shift, axis=0)[None]
  align = jax.jit(scale_mining.scale_alignment, static_argnums=(3, 4))
  probs, response = align(jnp.asarray(descriptors), jnp.asarray(template), target, 1e-3, 0.05)
  assert int(jnp.argmax(response[0])) == shift
  np.testing.assert_allclose(jnp.sum(probs, axis=-1), 1.0, atol=1e-6)
  # Undoing the shift maps the pyramid back onto the template's order.
  one_hot = jax.nn.one_hot(jnp.array([shift]), 5)
  aligned = scale_mining.soft_cyclic_shift(jnp.asarray(descriptors), one_hot)
  np.testing.assert_allclose(aligned[0], template, atol=1e-6)


def test_soft_cyclic_shift_matches_explicit_sum():
  rng = np.random.default_rng(4)
  pyramid = rng.normal(size=(2, 4, 3, 3, 2)).astype(np.float32)
  probs = rng.dirichlet(np.ones(4), size=2).astype(np.float32)
  expected = np.zeros_like(pyramid)
  for b in range(2):
    for s in range(4):
      for k in range(4):
        expected[b, s] += probs[b, k] * pyramid[b, (s + k) % 4]
  got = scale_mining.soft_cyclic_shift(jnp.asarray(pyramid), jnp.asarray(probs))
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_gradients_are_finite_and_match_dense():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  y = jnp.asarray(scale_mining.gaussian_shift_target(4, 1.0))
  z = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)

  def loss(solver, x):
    return jnp.sum(scale_mining.filter_response(solver(x, y, 0.1), z) ** 2)

  grad_fft = jax.jit(jax.grad(lambda x: loss(scale_mining.ridge_filter_fft, x)))(x)
  grad_dense = jax.jit(jax.grad(lambda x: loss(scale_mining.ridge_filter_dense, x)))(x)
  assert np.all(np.isfinite(grad_fft))
  np.testing.assert_allclose(grad_fft, grad_dense, rtol=1e-3, atol=1e-4)
