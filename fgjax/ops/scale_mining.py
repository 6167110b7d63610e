"""Discriminative scale mining (DSM): a correlation filter along the scale axis.

A descriptor of an image at S pyramid levels is a matrix x [S, C] (scale by
channel). Its S cyclic shifts along the scale axis, channel c, form the
circulant matrix

  C(x_c)[i, j] = x_c[(i - j) mod S],

i.e. column j is x_c cyclically shifted down by j, so C(x_c) w is the cyclic
convolution x_c (*) w. With the unitary DFT matrix F, F[k, n] =
exp(-2 pi i k n / S) / sqrt(S), and x^ = sqrt(S) F x the unnormalised DFT
(`jnp.fft.fft`), the circulant diagonalises as

  C(x_c) = F^H diag(x^_c) F,

which is the form X = F' diag(x^) F'^H written with F' = F^H, the unitary
inverse DFT. One filter w [S], shared by all channels, solves the
multi-channel ridge regression over all shifts

  w = argmin_w  sum_c ||C(x_c) w - y||^2 + lambda ||w||^2,

for a desired response y [S] over shifts. The normal equations
(sum_c C(x_c)^T C(x_c) + lambda I) w = sum_c C(x_c)^T y are diagonal in the
Fourier basis, since C(x_c)^T = F^H diag(conj(x^_c)) F for real x_c, so

  w^ = sum_c conj(x^_c) y^ / (sum_c conj(x^_c) x^_c + lambda),

element-wise over frequencies: the multi-channel correlation filter, with the
channel sums in both numerator and denominator. The FFT route costs
O(C S log S); the explicit dense solve (`ridge_filter_dense`, kept for tests
and the benchmark) costs O(C S^2 + S^3).

The response of the filter to a descriptor z [S, C] over all scale shifts is

  r = sum_c C(z_c) w,   r^ = sum_c z^_c w^.

If z is the template x cyclically shifted down by k levels, r is the training
response y shifted down by k, so with y peaked at 0 the response peaks at the
shift k that maps the template onto z.

Our reading of how that becomes a scale alignment (the abstract only says that
DSM "exploits the feature pyramid via a circulant matrix, and provides the
Fourier solver for fast scale alignments"): a learned template x [S, C] and a
fixed Gaussian target y peaked at shift 0 give the filter w; an image's
pyramid descriptor z gives the response r over shifts; a softmax with
temperature tau turns r into shift probabilities p; the pyramid is then
re-ordered by the soft inverse cyclic shift

  aligned[s] = sum_k p[k] pyramid[(s + k) mod S],

which maps an image whose scale profile is the template's shifted by k back
onto the template's order. Cyclic shifts wrap the coarsest level round to the
finest, as the circulant model implies.

All FFTs run in float32 (float64 under x64), whatever the input dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np


def fft_real_dtype(dtype) -> jnp.dtype:
  """float32 for bfloat16/float16/float32 inputs, float64 for float64 inputs."""
  return jnp.result_type(dtype, jnp.float32)


def circulant(x: jnp.ndarray) -> jnp.ndarray:
  """Circulant matrix along the last axis: C(x)[..., i, j] = x[..., (i - j) mod S].

  Args:
    x: [..., S].

  Returns:
    [..., S, S]; column j is x cyclically shifted down by j (this is
    `scipy.linalg.circulant`'s convention).
  """
  s = x.shape[-1]
  index = (np.arange(s)[:, None] - np.arange(s)[None, :]) % s
  return x[..., index]


def ridge_filter_fft(x: jnp.ndarray, y: jnp.ndarray, lam: float) -> jnp.ndarray:
  """Multi-channel circulant ridge regression solved in the Fourier domain.

  w^ = sum_c conj(x^_c) y^ / (sum_c |x^_c|^2 + lam), with ^ the DFT along S.

  Args:
    x: [..., S, C] descriptors (scale by channel).
    y: [..., S] desired response over shifts, broadcastable against x's leading
      axes.
    lam: ridge weight lambda > 0.

  Returns:
    w: [..., S] real filter, in float32 (float64 for float64 inputs).
  """
  dtype = fft_real_dtype(jnp.result_type(x.dtype, y.dtype))
  s = x.shape[-2]
  x_hat = jnp.fft.rfft(x.astype(dtype), axis=-2)  # [..., S//2+1, C]
  y_hat = jnp.fft.rfft(y.astype(dtype), axis=-1)  # [..., S//2+1]
  numerator = jnp.sum(jnp.conj(x_hat), axis=-1) * y_hat
  denominator = jnp.sum(jnp.real(x_hat) ** 2 + jnp.imag(x_hat) ** 2, axis=-1) + lam
  return jnp.fft.irfft(numerator / denominator, n=s, axis=-1).astype(dtype)


def ridge_filter_dense(x: jnp.ndarray, y: jnp.ndarray, lam: float) -> jnp.ndarray:
  """The same regression as `ridge_filter_fft`, with explicit circulant matrices.

  Solves (sum_c C(x_c)^T C(x_c) + lam I) w = sum_c C(x_c)^T y with
  `jnp.linalg.solve`. O(C S^2 + S^3); for tests and the benchmark.

  Args:
    x: [..., S, C].
    y: [..., S], broadcastable against x's leading axes.
    lam: ridge weight.

  Returns:
    w: [..., S].
  """
  dtype = fft_real_dtype(jnp.result_type(x.dtype, y.dtype))
  x = x.astype(dtype)
  s = x.shape[-2]
  index = (np.arange(s)[:, None] - np.arange(s)[None, :]) % s
  design = x[..., index, :]  # [..., S, S, C]: design[..., i, j, c] = C(x_c)[i, j].
  gram = jnp.einsum('...ijc,...ikc->...jk', design, design) + lam * jnp.eye(s, dtype=dtype)
  rhs = jnp.einsum('...ijc,...i->...j', design, y.astype(dtype))
  gram, rhs = jnp.broadcast_arrays(gram, rhs[..., None])
  return jnp.linalg.solve(gram, rhs)[..., 0]


def filter_response(w: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
  """Response of filter w to descriptor z over all cyclic scale shifts.

  r = sum_c C(z_c) w, computed as r^ = sum_c z^_c w^.

  Args:
    w: [..., S] filter (e.g. from `ridge_filter_fft`).
    z: [..., S, C] descriptor, leading axes broadcastable against w's.

  Returns:
    r: [..., S], in the FFT dtype.
  """
  dtype = fft_real_dtype(jnp.result_type(w.dtype, z.dtype))
  s = z.shape[-2]
  z_hat = jnp.sum(jnp.fft.rfft(z.astype(dtype), axis=-2), axis=-1)
  w_hat = jnp.fft.rfft(w.astype(dtype), axis=-1)
  return jnp.fft.irfft(z_hat * w_hat, n=s, axis=-1).astype(dtype)


def filter_response_dense(w: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
  """`filter_response` with explicit circulant matrices: sum_c C(z_c) w."""
  dtype = fft_real_dtype(jnp.result_type(w.dtype, z.dtype))
  s = z.shape[-2]
  index = (np.arange(s)[:, None] - np.arange(s)[None, :]) % s
  design = z.astype(dtype)[..., index, :]  # [..., S, S, C]
  return jnp.einsum('...ijc,...j->...i', design, w.astype(dtype))


def gaussian_shift_target(num_scales: int, sigma: float) -> np.ndarray:
  """Desired response over shifts: y[s] = exp(-d(s, 0)^2 / (2 sigma^2)).

  d(s, 0) = min(s, S - s) is the cyclic distance to shift 0.

  Returns:
    [S] float32 NumPy array (a constant, not a parameter).
  """
  shifts = np.arange(num_scales)
  distance = np.minimum(shifts, num_scales - shifts)
  return np.exp(-distance ** 2 / (2.0 * sigma ** 2)).astype(np.float32)


def soft_cyclic_shift(pyramid: jnp.ndarray, shift_probs: jnp.ndarray) -> jnp.ndarray:
  """Soft inverse cyclic shift along the scale axis.

  aligned[b, s] = sum_k p[b, k] pyramid[b, (s + k) mod S].

  Args:
    pyramid: [B, S, ...] features per level.
    shift_probs: [B, S], rows summing to one (a one-hot p at k is the hard
      shift `jnp.roll(pyramid, -k, axis=1)`).

  Returns:
    [B, S, ...], pyramid's dtype.
  """
  s = pyramid.shape[1]
  # mixing[b, s, j] = p[b, (j - s) mod S]: the weight of level j in output s.
  index = (np.arange(s)[None, :] - np.arange(s)[:, None]) % s
  mixing = shift_probs[:, index].astype(pyramid.dtype)
  return jnp.einsum('bsj,bj...->bs...', mixing, pyramid)


def scale_alignment(descriptors: jnp.ndarray, template: jnp.ndarray, target: jnp.ndarray,
                    lam: float, temperature: float):
  """Shift probabilities that align each image's scale profile to the template.

  w = ridge_filter_fft(t / ||t||, y, lam);  r_b = filter_response(w, z_b / ||z_b||);
  p_b = softmax(r_b / temperature), with ||.|| the Frobenius norm over [S, C]
  (so that the temperature acts on a bounded response).

  Args:
    descriptors: [B, S, C] pyramid descriptors z_b (e.g. pooled levels).
    template: [S, C] learned template t.
    target: [S] desired response y.
    lam: ridge weight.
    temperature: softmax temperature tau > 0.

  Returns:
    (shift_probs [B, S], response [B, S]), both in the FFT dtype.
  """
  dtype = fft_real_dtype(descriptors.dtype)
  descriptors = descriptors.astype(dtype)
  template = template.astype(dtype)

  def unit(v):
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=(-2, -1), keepdims=True) + 1e-12)

  w = ridge_filter_fft(unit(template), jnp.asarray(target, dtype), lam)
  response = filter_response(w, unit(descriptors))
  return jax.nn.softmax(response / temperature, axis=-1), response
