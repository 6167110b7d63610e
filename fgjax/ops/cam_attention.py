"""Class activation attention (FDL, Feng et al., ICIP 2019, Eq. 2) and box scores on it.

Given image-level feature maps Z [h, w, n] and the image classifier's weights W [C, n]
(stored here as a flax Dense kernel, [n, C]), the class activation maps and the attention are

    M_k = sum_i W_ki Z_i                 (k = 1..C, each [h, w])       (FDL Eq. 2)
    M   = max_k M_k  (element-wise)      'max' mode: FDL's choice
    M   = M_c                            'single' mode: one class c per image (CAM, Zhou
                                         et al. 2016; FDL's ablation: ground truth in
                                         training, prediction at test)

followed by Gaussian smoothing. Eq. 2 has no bias term, and neither do these maps.

Smoothing (our reading; FDL gives no numbers): a separable, normalised Gaussian,
g(t) = exp(-t^2 / (2 sigma^2)) / sum_t g(t), t = -r..r, kernel_size = 2r + 1, applied on the
h x w map with half-sample symmetric borders (scipy's 'reflect': d c b a | a b c d), so the
border is not darkened. `sigma <= 0` switches it off.

Box scores (our reading of "each anchor is scored by M over its footprint"): the mean of M
inside the box, with M upsampled to the input size by replication (map cell (u, v) covers
[u H/h, (u+1) H/h) x [v W/w, (v+1) W/w)), and the box clipped to the image:

    score(box) = (1 / |box ∩ image|) * integral over box ∩ image of M_up(y, x) dy dx.

It is computed exactly, without upsampling, from a summed-area table of M: the integral of
the piecewise-constant M_up over [0, y) x [0, x) is the bilinear interpolation of the table
S[u, v] = sum_{u' < u, v' < v} M[u', v'] at (y h / H, x w / W), times the cell area; four
such corners give any box. For an integer box on an input divisible by the map, this is the
plain mean of the upsampled pixels inside the box.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def class_activation_maps(features: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """M_k = sum_i W_ki Z_i for every class.

  Args:
    features: Z, [B, h, w, n].
    kernel: W^T, [n, C] (flax Dense layout).

  Returns:
    [B, h, w, C] float32.
  """
  return jnp.einsum('bhwn,nc->bhwc', features.astype(jnp.float32),
                    kernel.astype(jnp.float32))


def attention_map(features: jnp.ndarray, kernel: jnp.ndarray, mode: str = 'max',
                  class_index: jnp.ndarray | None = None) -> jnp.ndarray:
  """FDL's attention M before smoothing.

  Args:
    features: Z, [B, h, w, n].
    kernel: [n, C].
    mode: 'max' (element-wise max over all C maps, FDL Eq. 2) or 'single' (the map of
      `class_index`).
    class_index: int [B], required for 'single'.

  Returns:
    [B, h, w] float32.
  """
  if mode == 'max':
    return jnp.max(class_activation_maps(features, kernel), axis=-1)
  if mode == 'single':
    if class_index is None:
      raise ValueError("mode='single' needs class_index.")
    weights = jnp.take(kernel.astype(jnp.float32), class_index, axis=1)  # [n, B]
    return jnp.einsum('bhwn,nb->bhw', features.astype(jnp.float32), weights)
  raise ValueError(f"Unknown mode {mode!r}; valid modes: 'max', 'single'.")


def gaussian_kernel_1d(sigma: float, kernel_size: int | None = None) -> np.ndarray:
  """Normalised 1-D Gaussian taps; kernel_size defaults to 2 * ceil(3 sigma) + 1."""
  if kernel_size is None:
    kernel_size = 2 * math.ceil(3 * sigma) + 1
  if kernel_size % 2 != 1:
    raise ValueError(f'kernel_size must be odd, got {kernel_size}.')
  t = np.arange(kernel_size, dtype=np.float64) - kernel_size // 2
  taps = np.exp(-t ** 2 / (2 * sigma ** 2))
  return taps / taps.sum()


def _reflect_index(j: int, n: int) -> int:
  """Half-sample symmetric reflection of index j into [0, n)."""
  j %= 2 * n
  return 2 * n - 1 - j if j >= n else j


def _smoothing_matrix(n: int, taps: np.ndarray) -> np.ndarray:
  """[n, n] matrix applying the 1-D filter with reflected borders; rows are outputs."""
  radius = len(taps) // 2
  mat = np.zeros((n, n), np.float64)
  for i in range(n):
    for t, tap in enumerate(taps):
      mat[i, _reflect_index(i + t - radius, n)] += tap
  return mat.astype(np.float32)


def gaussian_smooth(maps: jnp.ndarray, sigma: float = 1.0,
                    kernel_size: int | None = None) -> jnp.ndarray:
  """Separable Gaussian smoothing of [B, h, w] maps with reflected borders.

  The border handling is folded into two small matrices built at trace time, so the
  smoothing is G_h @ M @ G_w^T per map; sigma <= 0 returns the maps unchanged.
  """
  if sigma <= 0:
    return maps
  taps = gaussian_kernel_1d(sigma, kernel_size)
  g_h = jnp.asarray(_smoothing_matrix(maps.shape[1], taps))
  g_w = jnp.asarray(_smoothing_matrix(maps.shape[2], taps))
  return jnp.einsum('ij,bjk,lk->bil', g_h, maps.astype(jnp.float32), g_w)


def _interp_table(table: jnp.ndarray, u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Bilinear interpolation of table [h+1, w+1] at u in [0, h], v in [0, w] (same shape)."""
  h, w = table.shape[0] - 1, table.shape[1] - 1
  u0 = jnp.clip(jnp.floor(u), 0, max(h - 1, 0)).astype(jnp.int32)
  v0 = jnp.clip(jnp.floor(v), 0, max(w - 1, 0)).astype(jnp.int32)
  fu, fv = u - u0, v - v0
  top = table[u0, v0] * (1 - fv) + table[u0, v0 + 1] * fv
  bottom = table[u0 + 1, v0] * (1 - fv) + table[u0 + 1, v0 + 1] * fv
  return top * (1 - fu) + bottom * fu


def box_mean_scores(maps: jnp.ndarray, boxes: jnp.ndarray, image_size) -> jnp.ndarray:
  """Mean of each map, upsampled to the image by replication, inside each box.

  Args:
    maps: [B, h, w].
    boxes: [A, 4] shared by the batch, or [B, A, 4]; (y0, x0, y1, x1) in input pixels.
    image_size: (H, W) of the input the boxes refer to.

  Returns:
    [B, A] float32; 0 for a box with no area inside the image.
  """
  height, width = image_size
  batch, h, w = maps.shape
  table = jnp.cumsum(jnp.cumsum(maps.astype(jnp.float32), axis=1), axis=2)
  table = jnp.pad(table, ((0, 0), (1, 0), (1, 0)))              # [B, h+1, w+1]
  if boxes.ndim == 2:
    boxes = jnp.broadcast_to(boxes, (batch,) + boxes.shape)
  boxes = boxes.astype(jnp.float32)
  u0 = jnp.clip(boxes[..., 0] * (h / height), 0, h)             # in map cells
  v0 = jnp.clip(boxes[..., 1] * (w / width), 0, w)
  u1 = jnp.clip(boxes[..., 2] * (h / height), 0, h)
  v1 = jnp.clip(boxes[..., 3] * (w / width), 0, w)

  def integral(tab, a0, b0, a1, b1):
    return (_interp_table(tab, a1, b1) - _interp_table(tab, a0, b1)
            - _interp_table(tab, a1, b0) + _interp_table(tab, a0, b0))

  total = jax.vmap(integral)(table, u0, v0, u1, v1)
  area = (u1 - u0) * (v1 - v0)
  return jnp.where(area > 0, total / jnp.where(area > 0, area, 1), 0.0)
