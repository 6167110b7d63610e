"""Grey-scale morphology with a flat k x k square window, via max-pooling.

  dilation(x)[i, j] = max over the window at (i, j) of x,
  erosion(x)        = -dilation'(-x)   (dilation' with the reflected window),
  opening(x)        = dilation(erosion(x)),
  closing(x)        = erosion(dilation(x)).

Borders and windows follow `scipy.ndimage.grey_dilation` / `grey_erosion`
with `size=(k, k)` and their default mode='reflect' (a b c | c b a: the edge
sample repeated, `jnp.pad(..., mode='symmetric')`). For even k the window is
not centred: erosion covers offsets [-(k // 2), k - 1 - k // 2] and dilation
the reflected range [-(k - 1 - k // 2), k // 2] (scipy reflects the
structuring element for dilation), so that opening and closing are the
proper adjunctions. For odd k both cover [-(k // 2), k // 2].

The window runs over two spatial axes, by default the last two ([..., H, W],
e.g. masks [B, H, W]); pass `axes=(1, 2)` for feature maps [B, H, W, C].
Differentiable (max-pool's gradient routes to the arg-max).
"""

from typing import Sequence

import jax.numpy as jnp
from jax import lax


def _max_filter(x: jnp.ndarray, size: int, before: int, axes: Sequence[int]) -> jnp.ndarray:
  """Window max over `axes`, covering offsets [-before, size - 1 - before], reflect borders."""
  axes = [a % x.ndim for a in axes]
  pad = [(0, 0)] * x.ndim
  window = [1] * x.ndim
  for a in axes:
    pad[a] = (before, size - 1 - before)
    window[a] = size
  padded = jnp.pad(x, pad, mode='symmetric')
  return lax.reduce_window(padded, jnp.array(-jnp.inf, x.dtype), lax.max, window,
                           (1,) * x.ndim, 'VALID')


def grey_dilation(x: jnp.ndarray, size: int, axes: Sequence[int] = (-2, -1)) -> jnp.ndarray:
  """Flat square dilation; equals scipy.ndimage.grey_dilation(x, size=(k, k))."""
  return _max_filter(x, size, (size - 1) - size // 2, axes)


def grey_erosion(x: jnp.ndarray, size: int, axes: Sequence[int] = (-2, -1)) -> jnp.ndarray:
  """Flat square erosion -maxpool(-x); equals scipy.ndimage.grey_erosion(x, size=(k, k))."""
  return -_max_filter(-x, size, size // 2, axes)


def grey_opening(x: jnp.ndarray, size: int, axes: Sequence[int] = (-2, -1)) -> jnp.ndarray:
  """Erosion then dilation: removes bright specks smaller than the window."""
  return grey_dilation(grey_erosion(x, size, axes), size, axes)


def grey_closing(x: jnp.ndarray, size: int, axes: Sequence[int] = (-2, -1)) -> jnp.ndarray:
  """Dilation then erosion: fills dark holes smaller than the window."""
  return grey_erosion(grey_dilation(x, size, axes), size, axes)
