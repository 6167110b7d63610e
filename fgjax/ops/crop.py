"""Crop-and-zoom: cut boxes out of images and resize them bilinearly (align_corners=True).

A box (y0, x0, y1, x1) is read the way NTS-Net slices it, `image[y0:y1, x0:x1]` (end
exclusive), and the slice is resized to S x S with PyTorch's bilinear, align_corners=True
rule: the corner output pixels sit on the corner input pixels. Output pixel (i, j) samples
the image at

    y_i = y0 + i * (y1 - 1 - y0) / (S - 1),    x_j = x0 + j * (x1 - 1 - x0) / (S - 1)

(y_i = y0 when S = 1) with bilinear weights

    out[i, j] = sum over (a, b) in {0,1}^2 of
                (1 - |y_i - (y'+a)|)(1 - |x_j - (x'+b)|) I[y'+a, x'+b],  y' = floor(y_i), ...

For integer boxes this is exactly NTS-Net's `F.interpolate(x_pad[..., y0:y1, x0:x1],
(S, S), mode='bilinear', align_corners=True)`; the formula extends to fractional boxes.
Samples that fall outside the image are clamped to its border (only boxes that leave the
image can reach there; NTS-Net pads the image so that none does).

No gradient flows through a crop, to the image or to the boxes: as in NTS-Net, where the
crops come from integer boxes and the part images are detached.

The resize is separable and gather-based: two row gathers blended by the row weights, then
two column gathers blended by the column weights, O(S * W + S * S) per box and channel.
"""

import jax
import jax.numpy as jnp
from jax import lax


def _sample_positions(start, end, size: int):
  """Positions, lower indices and weights along one axis for an end-exclusive span."""
  step = (end - 1 - start) / max(size - 1, 1)
  pos = start + step * jnp.arange(size, dtype=jnp.float32)
  lower = jnp.floor(pos)
  frac = pos - lower
  return lower.astype(jnp.int32), frac


def crop_and_zoom_one(image: jnp.ndarray, box: jnp.ndarray, out_size: int) -> jnp.ndarray:
  """One box of one image.

  Args:
    image: [H, W, C].
    box: [4] (y0, x0, y1, x1), end-exclusive pixel bounds.
    out_size: S.

  Returns:
    [S, S, C] in the image's dtype.
  """
  height, width = image.shape[:2]
  box = box.astype(jnp.float32)
  y_low, y_frac = _sample_positions(box[0], box[2], out_size)
  x_low, x_frac = _sample_positions(box[1], box[3], out_size)
  y_hi = jnp.clip(y_low + 1, 0, height - 1)
  x_hi = jnp.clip(x_low + 1, 0, width - 1)
  y_low = jnp.clip(y_low, 0, height - 1)
  x_low = jnp.clip(x_low, 0, width - 1)
  img = image.astype(jnp.float32)
  rows = (img[y_low] * (1 - y_frac)[:, None, None] +
          img[y_hi] * y_frac[:, None, None])                      # [S, W, C]
  out = (rows[:, x_low] * (1 - x_frac)[None, :, None] +
         rows[:, x_hi] * x_frac[None, :, None])                   # [S, S, C]
  return out.astype(image.dtype)


def crop_and_zoom(images: jnp.ndarray, boxes: jnp.ndarray, out_size: int = 224) -> jnp.ndarray:
  """Crops `m` boxes from each image and zooms them to out_size x out_size.

  Args:
    images: [B, H, W, C].
    boxes: [B, m, 4] (y0, x0, y1, x1) in the images' pixel coordinates, end exclusive.
    out_size: S, 224 in NTS-Net and FDL.

  Returns:
    [B, m, S, S, C], gradient-stopped.
  """
  images = lax.stop_gradient(images)
  boxes = lax.stop_gradient(boxes)
  per_image = jax.vmap(crop_and_zoom_one, in_axes=(None, 0, None))
  return jax.vmap(per_image, in_axes=(0, 0, None))(images, boxes, out_size)


def zoom_into_regions(images: jnp.ndarray, boxes: jnp.ndarray, pad: int,
                      out_size: int) -> jnp.ndarray:
  """NTS-Net's part images: zero-pad the images by `pad`, crop `boxes + pad`, zoom.

  Args:
    images: [B, H, W, C], normalised (padding with 0 pads with the mean colour).
    boxes: [B, m, 4] in input-image coordinates; they may extend up to `pad` past the border.
    pad: pixels of zero padding on every side.
    out_size: S.

  Returns:
    [B * m, S, S, C], gradient-stopped, ready for the backbone.
  """
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  parts = crop_and_zoom(padded, boxes + pad, out_size)
  return parts.reshape((-1,) + parts.shape[2:])
