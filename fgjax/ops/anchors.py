"""Multi-scale anchor boxes in NTS-Net's layout, and the flattening that matches it.

NTS-Net (Yang et al., ECCV 2018) scores a fixed set of boxes on three levels. Level `l`
has a grid of ceil(H / stride_l) x ceil(W / stride_l) cells; cell (y, x) is centred at

    (cy, cx) = (stride/2 + y * stride, stride/2 + x * stride)

(NTS-Net's layout; `AnchorLevel.centre_offset` can move the first centre, which FDL's
one-box-per-map-cell regions do, while NTS_LEVELS keep stride/2).

and carries one box per (scale s, aspect ratio r) of height and width

    h = size * s / sqrt(r),    w = size * s * sqrt(r),

given as (y0, x0, y1, x1) = (cy - h/2, cx - w/2, cy + h/2, cx + w/2). The boxes are
ordered per level, then channel-major with channel = scale_idx * len(ratios) + ratio_idx,
then y, then x: the order of a PyTorch NCHW score map flattened per level. At 448 x 448
this gives 14*14*6 + 7*7*6 + 4*4*9 = 1614 boxes, exactly NTS-Net's.

Other input sizes (our reading): box sizes are scaled by `min(H, W) / 448`, so that a box
covers the same fraction of the image as in NTS-Net, and the padding (224 at 448) scales the
same way. Two grids (`grid=`; at 448 both are NTS-Net's):

- 'feature' (default): the strides stay 32/64/128, the strides of the backbone map and the
  navigator's two stride-2 convolutions, so each score belongs to one map cell. On small
  inputs the grid is coarse while the boxes shrink: at 64 x 64, 39 boxes of 7-53 px on a
  32-px grid leave gaps between them.
- 'scaled': the strides scale too, so the whole layout is NTS-Net's 448 layout shrunk or
  stretched to the input: 14 x 14 / 7 x 7 / 4 x 4 cells and 1614 boxes on a square input
  of any size; the navigator resizes its feature map to the first grid. Every small detail
  then lies in some box, but the navigator must choose among 1614 boxes from a map that
  may be much coarser than the grid.

Everything here runs in NumPy at trace time: the boxes depend on static shapes only.
"""

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

REFERENCE_SIZE = 448  # NTS-Net's input size: the one at which every pixel quantity is given.
NTS_ASPECT_RATIOS = (0.667, 1.0, 1.5)  # height/width = 1/r; NTS-Net writes 0.667, not 2/3.


@dataclasses.dataclass(frozen=True)
class AnchorLevel:
  """One pyramid level of anchors.

  Attributes:
    stride: pixels between neighbouring cell centres (the score map's stride).
    size: base box side in pixels at REFERENCE_SIZE.
    scales: multipliers on `size`.
    aspect_ratios: r in w = size*s*sqrt(r), h = size*s/sqrt(r).
    centre_offset: centre of cell 0 in input pixels, not scaled with the input; None for
      NTS-Net's stride/2. FDL's one-box-per-map-cell regions use 0.5 (the centre of pixel 0,
      where a ResNet's stage4 cell 0 is centred; fgjax.ops.cam_attention).
  """
  stride: int
  size: float
  scales: tuple[float, ...]
  aspect_ratios: tuple[float, ...] = NTS_ASPECT_RATIOS
  centre_offset: float | None = None

  @property
  def boxes_per_cell(self) -> int:
    return len(self.scales) * len(self.aspect_ratios)


NTS_LEVELS = (
    AnchorLevel(stride=32, size=48, scales=(2 ** (1 / 3), 2 ** (2 / 3))),
    AnchorLevel(stride=64, size=96, scales=(2 ** (1 / 3), 2 ** (2 / 3))),
    AnchorLevel(stride=128, size=192, scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3))),
)


def _as_hw(image_size) -> tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  height, width = image_size
  return int(height), int(width)


def scale_to_input(pixels: float, image_size, reference_size: int = REFERENCE_SIZE) -> int:
  """A pixel quantity given at `reference_size`, scaled to `image_size` and rounded.

  The rule used for the padding and the part size: `round(pixels * min(H, W) / reference)`,
  at least 1 for a positive quantity. At 448 the NTS-Net values (224 padding, 224 part
  size) come back unchanged.
  """
  height, width = _as_hw(image_size)
  scaled = int(round(pixels * min(height, width) / reference_size))
  return max(1, scaled) if pixels > 0 else 0


GRIDS = ('scaled', 'feature')


def _check_grid(grid: str) -> None:
  if grid not in GRIDS:
    raise ValueError(f'Unknown anchor grid {grid!r}; valid: {", ".join(map(repr, GRIDS))}.')


def grid_sizes(image_size, levels: Sequence[AnchorLevel] = NTS_LEVELS, grid: str = 'feature',
               reference_size: int = REFERENCE_SIZE) -> list[tuple[int, int]]:
  """Cells per level: (ceil(H / stride), ceil(W / stride)).

  With grid='scaled' the stride is `stride * min(H, W) / reference_size` (computed in
  integers, so a square input always gets the reference grid).
  """
  _check_grid(grid)
  height, width = _as_hw(image_size)
  # ceil(n / (stride * m / ref)) = ceil(n * ref / (stride * m)), exact in integers.
  num, den = (reference_size, min(height, width)) if grid == 'scaled' else (1, 1)
  return [(-(-height * num // (lv.stride * den)), -(-width * num // (lv.stride * den)))
          for lv in levels]


def num_anchors(image_size, levels: Sequence[AnchorLevel] = NTS_LEVELS, grid: str = 'feature',
                reference_size: int = REFERENCE_SIZE) -> int:
  """Total number of boxes; 1614 at 448 with NTS_LEVELS (at any size with grid='scaled')."""
  return sum(gh * gw * lv.boxes_per_cell
             for (gh, gw), lv in zip(grid_sizes(image_size, levels, grid, reference_size), levels))


def anchor_boxes(image_size,
                 levels: Sequence[AnchorLevel] = NTS_LEVELS,
                 size_scale: float | None = None,
                 shift: float = 0.0,
                 reference_size: int = REFERENCE_SIZE,
                 grid: str = 'feature') -> np.ndarray:
  """All anchors of an image, in NTS-Net's order.

  Args:
    image_size: H, or (H, W), of the (unpadded) input.
    levels: the pyramid levels.
    size_scale: multiplier on every box size; None means min(H, W) / reference_size
      (1 at 448).
    shift: added to every coordinate, e.g. the padding, to address a padded image.
    reference_size: the input size at which `levels` are specified.
    grid: 'feature' (strides as given) or 'scaled' (strides scaled like the sizes by
      min(H, W) / reference_size; module docstring).

  Returns:
    float32 [A, 4] boxes (y0, x0, y1, x1) in pixels. Computed in float32 like the
    reference, so that flooring them gives the reference's integer boxes.
  """
  height, width = _as_hw(image_size)
  if size_scale is None:
    size_scale = min(height, width) / reference_size
  stride_scale = min(height, width) / reference_size if grid == 'scaled' else 1.0
  out = []
  for (gh, gw), lv in zip(grid_sizes((height, width), levels, grid, reference_size), levels):
    stride = lv.stride * stride_scale
    first = stride / 2 if lv.centre_offset is None else lv.centre_offset
    cy = (first + stride * np.arange(gh)).astype(np.float32)
    cx = (first + stride * np.arange(gw)).astype(np.float32)
    cy, cx = np.meshgrid(cy, cx, indexing='ij')  # [gh, gw], y-major
    for scale in lv.scales:
      for ratio in lv.aspect_ratios:
        half_h = np.float32(lv.size * size_scale * scale / ratio ** 0.5) / np.float32(2)
        half_w = np.float32(lv.size * size_scale * scale * ratio ** 0.5) / np.float32(2)
        boxes = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
        out.append(boxes.reshape(-1, 4))
  boxes = np.concatenate(out, axis=0).astype(np.float32)
  return boxes + np.float32(shift)


def integer_padded_anchors(image_size, pad: int, **kwargs) -> np.ndarray:
  """Anchors shifted by `pad` and floored to integers, as NTS-Net's `astype(int)`.

  NTS-Net runs NMS on, and crops with, `(edge_anchors + 224).astype(int)`; every value is
  positive there, so the truncation is a floor. Returns float32 [A, 4] integral values in the
  padded image's pixel coordinates; subtract `pad` for input-image coordinates.
  """
  return np.floor(anchor_boxes(image_size, shift=pad, **kwargs)).astype(np.float32)


def flatten_level_scores(score_maps: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Flattens NHWC per-level score maps into the anchor order of `anchor_boxes`.

  Args:
    score_maps: per level, [B, gh, gw, boxes_per_cell] with channel
      c = scale_idx * len(ratios) + ratio_idx.

  Returns:
    [B, A]: per level, channel-major, then y, then x (NCHW flattening).
  """
  flat = [jnp.transpose(m, (0, 3, 1, 2)).reshape(m.shape[0], -1) for m in score_maps]
  return jnp.concatenate(flat, axis=1)


def region_anchors(image_size, pad: int = 224,
                   levels: Sequence[AnchorLevel] = NTS_LEVELS,
                   reference_size: int = REFERENCE_SIZE,
                   grid: str = 'feature') -> tuple[np.ndarray, int]:
  """The candidate regions of NTS-Net-style models at any input size.

  Args:
    image_size: H or (H, W) of the model input.
    pad: padding at `reference_size` (224 in NTS-Net); scaled with `scale_to_input`.
    levels: anchor levels; sizes given at `reference_size`.
    reference_size: 448.
    grid: 'feature' or 'scaled' (module docstring).

  Returns:
    boxes: float32 [A, 4], integral, in input-image coordinates (may reach up to `pad_px`
      past the border): NTS-Net's `(edge_anchors + 224).astype(int)` minus the padding.
    pad_px: the padding in pixels at this input size (224 at 448).
  """
  pad_px = scale_to_input(pad, image_size, reference_size)
  boxes = integer_padded_anchors(image_size, pad_px, levels=levels,
                                 reference_size=reference_size, grid=grid)
  return boxes - np.float32(pad_px), pad_px
