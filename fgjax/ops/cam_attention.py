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

Box scores (our reading of "each anchor is scored by M over its footprint"): the mean over
the box of M_up, the map read as a piecewise-constant function of input coordinates, where
pixel p spans [p, p+1) (the convention of boxes and crops, fgjax.ops.crop). Per axis, with
stride s (default H/h; the backbone's 32 for fgjax.models.resnet), map cell u covers

  'receptive_field' (FDL's default `map_alignment`): [c_u - s/2, c_u + s/2) with
      c_u = u s + 1/2, the centre of input pixel u s. A torchvision-layout ResNet (7x7/2
      pad-3 stem, 3x3/2 pad-1 max pool, 3x3/2 pad-1 convolutions) centres stage4 cell u's
      receptive field on pixel 32u at any input size (tests/test_registration.py measures
      the centre of input-gradient mass of resnet_tiny with random weights: within 3 px
      of 32u at 224 and 300). The first and last cells extend to the
      image border (edge replication): every pixel is scored, by the cell whose
      receptive-field centre is nearest.
  'top_left' (the original rule; box_mean_scores' default, which SSANet's object mask
      uses): [u s, (u+1) s), replication aligned to the top-left. On a ResNet map it puts
      every cell half a cell (16 px at stride 32) down-right of where the backbone saw it.

Outside the image (`padding`; boxes reach into NTS-Net's zero padding):

  'min' (FDL's default `padding_score`): the part of a box outside the image counts as the
      least attended value, m = min_{u,v} M[u, v] of the image:
        score = (1 / |box|) * integral over box of M_ext,  M_ext = M_up inside, m outside;
      a box made mostly of padding scores towards m instead of like the cells it clips,
      and a box wholly outside scores m.
  'inside' (the original rule; box_mean_scores' default): the mean over box ∩ image
      only; 0 when that is empty.

Computation: exact and separable. Per axis, f_y[a, u] = |[y0, y1) ∩ cell u| / L_y is box a's
share in cell u (L_y = y1 - y0 for 'min', |[y0, y1) ∩ [0, H)| for 'inside'); then

    'min':     score = m + sum_{u,v} f_y[a, u] (M[u, v] - m) f_x[a, v]
    'inside':  score =     sum_{u,v} f_y[a, u]  M[u, v]      f_x[a, v],

a [A, h] x [h, w] x [w] contraction per image (no upsampling, no summed-area cancellation).
Written so that equivalent boxes give bit-identical scores, since NMS orders by exact score:
a box inside one cell has shares of exactly 1; the outside part adds exactly 0 to M - m, so
every box that sees only least-attended cells and padding scores exactly m; boxes with the
same shares compute the same floats (for integral boxes such as the anchors, L is exact).

Ties (our reading): `tie_break_order` orders candidates by decreasing area inside the image,
then by index; greedy NMS visits equal scores in index order (fgjax.ops.nms), so among tied
boxes the one with more image in it wins.
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
  return jnp.einsum('ij,bjk,lk->bil', g_h, maps.astype(jnp.float32), g_w,
                    precision=jax.lax.Precision.HIGHEST)


ALIGNMENTS = ('receptive_field', 'top_left')
PADDING_SCORES = ('min', 'inside')
# Continuous coordinate of cell 0's receptive-field centre: the centre of input pixel 0.
RECEPTIVE_FIELD_CENTRE = 0.5


def _check_choice(name: str, value: str, valid) -> None:
  if value not in valid:
    raise ValueError(f'Unknown {name} {value!r}; valid: {", ".join(map(repr, valid))}.')


def cell_spans(num_cells: int, extent: float, stride: float | None = None,
               alignment: str = 'top_left') -> tuple[np.ndarray, np.ndarray]:
  """Where each map cell lies along one axis of the image (module docstring).

  Args:
    num_cells: h, cells along the axis.
    extent: H, the image's extent along the axis in pixels.
    stride: s, input pixels per cell; None for H / h.
    alignment: 'receptive_field' or 'top_left'.

  Returns:
    starts, ends: float64 [h], cell u covers [starts[u], ends[u]) ∩ [0, H); in
    'receptive_field' the outer cells reach the image border.
  """
  _check_choice('alignment', alignment, ALIGNMENTS)
  if stride is None:
    stride = extent / num_cells
  inner = np.arange(1, num_cells, dtype=np.float64) * stride
  if alignment == 'receptive_field':
    inner += RECEPTIVE_FIELD_CENTRE - stride / 2  # Midway between neighbouring centres.
  edges = np.clip(np.concatenate([[0.0], inner, [extent]]), 0.0, extent)
  return edges[:-1], edges[1:]


def _axis_shares(lo, hi, spans, extent: float, padding: str) -> jnp.ndarray:
  """Share of each interval [lo, hi) ([B, A]) in each cell: [B, A, h] float32.

  The denominator is the interval's length ('min') or its part inside [0, extent)
  ('inside'); an empty denominator gives shares of 0. `min(hi, end) - max(lo, start)` is
  the same float expression as `hi - lo` for an interval inside one cell, so that share is
  exactly 1.
  """
  starts, ends = (jnp.asarray(e, jnp.float32) for e in spans)
  overlap = jnp.maximum(jnp.minimum(hi[..., None], ends) - jnp.maximum(lo[..., None], starts),
                        0.0)
  if padding == 'min':
    length = hi - lo
  else:
    length = jnp.minimum(hi, extent) - jnp.maximum(lo, 0.0)
  positive = (length > 0)[..., None]
  return jnp.where(positive, overlap / jnp.where(positive, length[..., None], 1.0), 0.0)


def box_mean_scores(maps: jnp.ndarray, boxes: jnp.ndarray, image_size, *,
                    alignment: str = 'top_left', padding: str = 'inside',
                    stride: float | None = None) -> jnp.ndarray:
  """Mean of each map, read as a function of input coordinates, over each box.

  The defaults are the original rule, which fgjax.models.ssanet's object mask relies on;
  FDL passes its `map_alignment` and `padding_score` (module docstring for both).

  Args:
    maps: M, [B, h, w].
    boxes: [A, 4] shared by the batch, or [B, A, 4]; (y0, x0, y1, x1) in input pixels.
    image_size: (H, W) of the input the boxes refer to.
    alignment: 'receptive_field' (cell u centred on input pixel u * stride) or 'top_left'
      (cell u covers [u * stride, (u+1) * stride)).
    padding: 'min' (outside the image counts as min M) or 'inside' (box ∩ image only).
    stride: input pixels per map cell; None for H / h and W / w. A backbone whose map has
      ceil(H / 32) cells needs 32 here when H is not a multiple of 32.

  Returns:
    [B, A] float32. 'inside': 0 for a box with no area inside the image; 'min': m for a box
    with no area at all or none inside the image.
  """
  _check_choice('padding', padding, PADDING_SCORES)
  height, width = image_size
  batch, h, w = maps.shape
  maps = maps.astype(jnp.float32)
  if boxes.ndim == 2:
    boxes = jnp.broadcast_to(boxes, (batch,) + boxes.shape)
  boxes = boxes.astype(jnp.float32)
  share_y = _axis_shares(boxes[..., 0], boxes[..., 2],
                         cell_spans(h, height, stride, alignment), height, padding)
  share_x = _axis_shares(boxes[..., 1], boxes[..., 3],
                         cell_spans(w, width, stride, alignment), width, padding)
  floor = jnp.min(maps, axis=(1, 2)) if padding == 'min' else jnp.zeros((batch,), jnp.float32)
  # HIGHEST: no TF32 / bf16 passes on accelerators, so scores stay float32-exact.
  rows = jnp.einsum('bau,buv->bav', share_y, maps - floor[:, None, None],
                    precision=jax.lax.Precision.HIGHEST)
  return floor[:, None] + jnp.sum(rows * share_x, axis=-1)


def tie_break_order(boxes: np.ndarray, image_size) -> np.ndarray:
  """Permutation of candidate boxes [A, 4]: decreasing area inside the image, then index.

  Candidates reordered by it and passed to greedy NMS (which visits equal scores in index
  order) make a tie go to the box with more image in it, e.g. a box inside the image over
  one that also covers padding when both see only least-attended cells. Static (NumPy).
  """
  height, width = image_size
  boxes = np.asarray(boxes, np.float64)
  inside_h = np.maximum(np.minimum(boxes[:, 2], height) - np.maximum(boxes[:, 0], 0), 0)
  inside_w = np.maximum(np.minimum(boxes[:, 3], width) - np.maximum(boxes[:, 1], 0), 0)
  return np.argsort(-(inside_h * inside_w), kind='stable')
