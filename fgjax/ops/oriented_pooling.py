"""Oriented pooling (OP): pool a feature map along K pre-defined orientations.

Rotated grid. For orientation theta (degrees, counter-clockwise as seen on the
image, rows pointing down), the rotated map has the input's size H x W and
samples the input, by bilinear interpolation, at

  source(i, j) = centre + (i - ci) e_row(theta) + (j - cj) e_col(theta),
  e_row = (cos theta, sin theta),  e_col = (-sin theta, cos theta)  [(row, col)],

with centre (ci, cj) = ((H - 1) / 2, (W - 1) / 2). theta = 0 is the identity;
theta = 90 is `np.rot90(x, -1)` on a square map. Samples outside the map read
zeros (bilinear taps outside [0, H-1] x [0, W-1] get weight zero, as
`scipy.ndimage.map_coordinates(..., order=1, mode='grid-constant')`).

Pooling (our reading; the abstract only says "performs the pooling operation
in several pre-defined orientations"). Global average or max pooling of a
rotated map barely depends on theta (for 90 degrees not at all), so it cannot
tell orientations apart. We pool along the lines of direction e_col(theta) and
keep the profile across them in P bins: the rows of the rotated map are split
into P equal bands (area-weighted where a band boundary cuts a row), and

  d[theta, p, c] = sum_{i,j} b[p, i] R_theta[i, j, c] / sum_{i,j} b[p, i] V_theta[i, j],

with R_theta the rotated map, V_theta the rotated all-ones map (the bilinear
weight that fell inside the image) and b[p, i] the overlap of row i's extent
[i, i + 1) with band p's [p H / P, (p + 1) H / P). The normaliser makes d the
mean over the part of band p that lies in the image, so the corners a 45
degree grid loses do not dilute it. For theta = 0 the bands are horizontal
stripes (top to bottom), for 90 vertical stripes: each orientation is one
"spatial alignment" of the parts of the object along a direction.

Rotating the input by +90 degrees maps orientation theta onto theta - 90:
d'(90) = d(0), d'(135) = d(45), and d'(0), d'(45) are d(90), d(135) with the
bin order reversed (the direction turned by 180 degrees).

The learned gate (softmax over K, from the image's pooled feature) that picks
the orientation per image lives in `fgjax.models.ssanet`.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

DEFAULT_ANGLES = (0.0, 45.0, 90.0, 135.0)


def rotated_grid(height: int, width: int, angle: float) -> np.ndarray:
  """Source coordinates of the rotated grid; see the module docstring.

  Returns:
    [H, W, 2] float64 (row, col) coordinates in the input map.
  """
  theta = np.deg2rad(angle)
  # Rounded so that 90 degrees lands exactly on the pixel lattice.
  cos, sin = np.round(np.cos(theta), 12), np.round(np.sin(theta), 12)
  ci, cj = (height - 1) / 2.0, (width - 1) / 2.0
  di, dj = np.meshgrid(np.arange(height) - ci, np.arange(width) - cj, indexing='ij')
  rows = ci + di * cos - dj * sin
  cols = cj + di * sin + dj * cos
  return np.stack([rows, cols], axis=-1)


def _bilinear_taps(coords: np.ndarray, height: int, width: int):
  """Flat indices and weights of the four bilinear taps, zero weight outside.

  Args:
    coords: [..., 2] (row, col) sampling positions.

  Returns:
    (index [4, ...] int32 into the flattened H * W map, weight [4, ...] float32).
  """
  rows, cols = coords[..., 0], coords[..., 1]
  r0, c0 = np.floor(rows), np.floor(cols)
  fr, fc = rows - r0, cols - c0
  indices, weights = [], []
  for dr, wr in ((0, 1.0 - fr), (1, fr)):
    for dc, wc in ((0, 1.0 - fc), (1, fc)):
      r, c = r0 + dr, c0 + dc
      inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
      indices.append(np.clip(r, 0, height - 1) * width + np.clip(c, 0, width - 1))
      weights.append(wr * wc * inside)
  return np.stack(indices).astype(np.int32), np.stack(weights).astype(np.float32)


def _sample(x: jnp.ndarray, index: np.ndarray, weight: np.ndarray) -> jnp.ndarray:
  """sum_t weight[t] * x[index[t]] for x [B, H, W, C]; returns [B, ..., C]."""
  b, h, w, c = x.shape
  flat = x.reshape(b, h * w, c)
  taps = flat[:, index]  # [B, 4, ..., C]
  return jnp.sum(taps * jnp.asarray(weight, x.dtype)[None, ..., None], axis=1)


def rotate_feature_map(x: jnp.ndarray, angle: float) -> jnp.ndarray:
  """Samples x [B, H, W, C] on the grid rotated by `angle` degrees (bilinear, zeros outside).

  Returns:
    [B, H, W, C], x's dtype.
  """
  _, h, w, _ = x.shape
  index, weight = _bilinear_taps(rotated_grid(h, w, angle), h, w)
  return _sample(x, index, weight)


def band_weights(length: int, num_bins: int) -> np.ndarray:
  """b[p, i] = |[i, i + 1) intersected with [p L / P, (p + 1) L / P)|; [P, L] float64."""
  edges = np.arange(num_bins + 1) * (length / num_bins)
  lo = np.maximum(np.arange(length)[None, :], edges[:-1, None])
  hi = np.minimum(np.arange(length)[None, :] + 1, edges[1:, None])
  return np.maximum(hi - lo, 0.0)


def pooling_operator(height: int, width: int, angles: Sequence[float],
                     num_bins: int) -> np.ndarray:
  """The whole of oriented pooling as one static linear map; [K, P, H * W] float64.

  op[k, p, n] = sum_{i,j} band[p, i] (bilinear weight of input pixel n at rotated
  grid point (i, j) of orientation k) / norm[k, p], with norm[k, p] the same sum
  over all n (the in-image weight of band p). Built in NumPy at trace time: it
  depends on static shapes only.
  """
  grids = np.stack([rotated_grid(height, width, a) for a in angles])  # [K, H, W, 2]
  index, weight = _bilinear_taps(grids, height, width)  # [4, K, H, W]
  bands = band_weights(height, num_bins)  # [P, H]
  # contribution[t, k, p, i, j] = band[p, i] weight[t, k, i, j], for pixel index[t, k, i, j].
  contribution = bands[None, None, :, :, None] * weight.astype(np.float64)[:, :, None]
  k_idx, p_idx = np.meshgrid(np.arange(len(angles)), np.arange(num_bins), indexing='ij')
  shape = contribution.shape
  operator = np.zeros((len(angles), num_bins, height * width), np.float64)
  np.add.at(operator, (np.broadcast_to(k_idx[None, :, :, None, None], shape),
                       np.broadcast_to(p_idx[None, :, :, None, None], shape),
                       np.broadcast_to(index[:, :, None], shape)), contribution)
  return operator / np.maximum(operator.sum(axis=-1, keepdims=True), 1e-12)


def oriented_pool(x: jnp.ndarray, angles: Sequence[float] = DEFAULT_ANGLES,
                  num_bins: int = 3) -> jnp.ndarray:
  """Banded average pooling of x along each orientation.

  d[b, k, p, c] = sum_{i,j} band[p, i] R_k[b, i, j, c] / sum_{i,j} band[p, i] V_k[i, j]
  (module docstring). Sampling, banding and normalising are all linear in x with
  static coefficients, so they are folded into `pooling_operator` and applied as
  one contraction over the H * W pixels (no gather, cheap to compile and
  differentiate).

  Args:
    x: [B, H, W, C] feature map (any float dtype).
    angles: K orientations in degrees.
    num_bins: P bands across each orientation.

  Returns:
    [B, K, P, C] float32 (float64 for float64 inputs).
  """
  b, h, w, c = x.shape
  dtype = jnp.result_type(x.dtype, jnp.float32)
  operator = jnp.asarray(pooling_operator(h, w, tuple(angles), num_bins), dtype)
  return jnp.einsum('kpn,bnc->bkpc', operator, x.reshape(b, h * w, c).astype(dtype),
                    precision='highest')
