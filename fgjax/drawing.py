"""Pictures of what a model looks at: its regions outlined on the input image.

Kept apart from inference so that training (region pictures for TensorBoard) and
the inference commands draw the same way.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw

# Colours of the top-1.. regions, as in FDL's figure 2 (red, green, blue, yellow, ...).
REGION_COLOURS = ['#ff0000', '#00c000', '#0060ff', '#ffd000', '#ff00ff', '#00e0e0']


def draw_regions(image_uint8: np.ndarray, boxes, caption: str, scale: int = 2) -> PIL.Image.Image:
  """The model input with its regions (y0, x0, y1, x1 pixels) outlined, top-1 first."""
  img = PIL.Image.fromarray(image_uint8).resize(
      (image_uint8.shape[1] * scale, image_uint8.shape[0] * scale), PIL.Image.NEAREST)
  draw = PIL.ImageDraw.Draw(img)
  for i, (y0, x0, y1, x1) in enumerate([] if boxes is None else boxes):
    draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale],
                   outline=REGION_COLOURS[i % len(REGION_COLOURS)], width=2)
  draw.rectangle([0, 0, img.size[0], 12], fill='black')
  draw.text((2, 0), caption, fill='white')
  return img
