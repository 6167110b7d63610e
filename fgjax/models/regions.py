"""The step every region model shares: keep the best boxes, zoom in, describe them.

NTS-Net, FDL and SSANet differ in how they score candidate boxes; from the scores on
they do the same thing, written once here.
"""

import jax.numpy as jnp

from fgjax.ops import crop
from fgjax.ops import nms


def zoom_and_describe(backbone, images, boxes, scores, *, num: int, iou: float, pad_px: int,
                      part_px: int, train: bool):
  """Greedy NMS keeps `num` boxes per image; each is zoomed in and fed to `backbone`.

  Args:
    backbone: the model's shared ResNet module (called on the parts).
    images: [B, H, W, 3] normalised images.
    boxes: [A, 4] candidate boxes (y0, x0, y1, x1) in input pixels.
    scores: [B, A] candidate scores.
    num: boxes kept per image (m).
    iou: NMS threshold.
    pad_px: zero padding around each image before cropping (pixels).
    part_px: side of a zoomed part.
    train: BatchNorm in training mode for the parts.

  Returns:
    indices [B, m] into the candidates, valid [B, m] (False where NMS ran out of
    boxes), the selected boxes [B, m, 4], and their pooled features [B, m, D].
  """
  boxes = jnp.asarray(boxes)
  indices, valid = nms.batched_greedy_nms(boxes, scores, num, iou)
  selected = boxes[indices]                                               # [B, m, 4]
  parts = crop.zoom_into_regions(images, selected, pad_px, part_px)       # [B*m, S, S, 3]
  features = backbone(parts, train)['pooled']
  return indices, valid, selected, features.reshape(images.shape[0], num, -1)
