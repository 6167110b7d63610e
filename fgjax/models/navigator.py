"""NTS-Net's navigator: informativeness scores for every anchor.

On the stride-32 feature map (2048 channels for ResNet-50):

    d1 = relu(conv3x3(128, stride 1)(x))     -> head conv1x1, 6 outputs  (level stride 32)
    d2 = relu(conv3x3(128, stride 2)(d1))    -> head conv1x1, 6 outputs  (level stride 64)
    d3 = relu(conv3x3(128, stride 2)(d2))    -> head conv1x1, 9 outputs  (level stride 128)

The 3x3 convolutions pad one pixel on every side, as the reference's `padding=1` (flax's
'SAME' would pad (0, 1) for a stride of 2 and shift the grid by one input cell); a side of n
becomes ceil(n / 2), which is `anchors.grid_sizes`. The head widths follow the anchor levels,
and the score maps are flattened in the anchors' order (`flatten_level_scores`).

With the 'scaled' anchor grid (fgjax.ops.anchors) the first level has NTS-Net's 14 x 14
cells on a square input of any size; the feature map is resized bilinearly to that grid
first (`grid=(gh, gw)`; nothing happens where it already has that shape, e.g. at 448).

The navigator reads a gradient-stopped feature map: it learns only from the ranking loss,
and the ranking loss does not reach the backbone.

Precision: with a bfloat16 `dtype` the 3x3 convolutions run in bfloat16 and the 1x1 heads
in float32 (float32 weights and inputs, float32 accumulation). NMS orders anchors by exact
score and the ranking loss compares them; with heads in bfloat16 the 1614 anchors of an image
at 448 had about 930 distinct scores (resnet_tiny), so the tie order, not the navigator,
chose between equal ones.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fgjax.ops import anchors as anchors_lib


class Navigator(nn.Module):
  """Anchor scores from a stride-32 feature map.

  Attributes:
    levels: anchor levels; one stride-2 step per level after the first.
    width: channels of the 3x3 convolutions (128 in NTS-Net).
    dtype: computation dtype of the 3x3 convolutions; the 1x1 scoring heads compute in
      float32 (module docstring), so the scores are float32 values, not rounded ones.
    grid: (gh, gw) of the first level; the feature map is resized to it. None keeps the
      map's own grid (the 'feature' anchor grid).
  """
  levels: Sequence[anchors_lib.AnchorLevel] = anchors_lib.NTS_LEVELS
  width: int = 128
  dtype: Any = jnp.float32
  grid: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
    """Scores [B, A] for features [B, h, w, C] (gradient stopped here)."""
    x = lax.stop_gradient(features).astype(self.dtype)
    if self.grid is not None and tuple(x.shape[1:3]) != tuple(self.grid):
      x = jax.image.resize(x, (x.shape[0], *self.grid, x.shape[3]), 'bilinear')
    maps = []
    for level, spec in enumerate(self.levels):
      x = nn.Conv(self.width, (3, 3), strides=1 if level == 0 else 2,
                  padding=((1, 1), (1, 1)), dtype=self.dtype, name=f'down{level + 1}')(x)
      x = nn.relu(x)
      # The scoring head runs in float32 even in a bfloat16 model: NMS and the ranking
      # loss order these scores, and bfloat16's 8-bit mantissa ties many of them.
      score = nn.Conv(spec.boxes_per_cell, (1, 1), dtype=jnp.float32,
                      name=f'tidy{level + 1}')(x.astype(jnp.float32))
      maps.append(score)
    return anchors_lib.flatten_level_scores(maps)
