"""Pictures of what a model looks at: its regions outlined on the input image, beside
them the maps it ranks regions by (fgjax.heatmaps) and SSANet's orientation and scale
choices as bars; and regions outlined on the user's own image, in its pixels.

Kept apart from inference so that training (region pictures for TensorBoard,
`draw_regions`) and the inference commands draw the same way.

A ranking figure (`draw_ranking_figure`) is a caption strip (the predicted class and its
probability) over a row of titled panels, each the model input itself (not a thumbnail of
the original) at `display_scale`, an integer upscaling with nearest-neighbour sampling so
that every input pixel stays a visible block:

  | input + regions | heat map overlay(s) | bars (SSANet) |

Regions are outlined top-1 first in red, green, blue, yellow, magenta, cyan.
"""

import numpy as np
import PIL.Image
import PIL.ImageDraw

from fgjax import heatmaps

# Colours of the top-1.. regions, as in FDL's figure 2 (red, green, blue, yellow, ...).
REGION_COLOURS = ['#ff0000', '#00c000', '#0060ff', '#ffd000', '#ff00ff', '#00e0e0']
CAPTION_HEIGHT = 13  # Pixels of the caption strip over a figure.
TITLE_HEIGHT = 13  # Pixels of the title strip over each panel.
PANEL_GAP = 4  # Pixels between panels.
FIGURE_SIDE = 448  # The side a panel is scaled up towards (never down).
BAR_COLOUR = '#ffb000'


def display_scale(size: int) -> int:
  """Integer upscaling of a panel towards FIGURE_SIDE, never below the input's own size:
  7 for a 64-px input, 2 for 224, 1 from 225 px up."""
  return max(1, FIGURE_SIDE // size)


def _upscaled(image_uint8: np.ndarray, scale: int) -> PIL.Image.Image:
  return PIL.Image.fromarray(np.asarray(image_uint8, np.uint8)).resize(
      (image_uint8.shape[1] * scale, image_uint8.shape[0] * scale), PIL.Image.NEAREST)


def outline_regions(img: PIL.Image.Image, boxes, scale: int, width: int = 2) -> None:
  """Outlines boxes (y0, x0, y1, x1 in input pixels) on `img` (the input at `scale`), each
  inside its box: box [y0, y1) covers picture rows y0 * scale .. y1 * scale - 1, and its
  outline is the outer `width` of them. Drawn last to first, so that the top-1 box lies on
  top where outlines cross. A box reaching into the zero padding is drawn clipped to the
  image, the part the model saw image in; one wholly in the padding is not drawn."""
  boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, np.float64)
  draw = PIL.ImageDraw.Draw(img)
  for i in reversed(range(len(boxes))):
    y0, x0, y1, x1 = np.round(boxes[i] * scale).astype(int)
    x0, x1 = max(x0, 0), min(x1, img.size[0])
    y0, y1 = max(y0, 0), min(y1, img.size[1])
    if x1 > x0 and y1 > y0:
      draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=REGION_COLOURS[i % len(REGION_COLOURS)],
                     width=width)


def draw_regions_on_original(image, boxes_xyxy, width: int | None = None) -> PIL.Image.Image:
  """An RGB copy of the user's own image (PIL, or a uint8 array [H, W(, C)]) with regions
  in its pixels (x0, y0, x1, y1: Run.predict_images' boxes_original, or a prediction row's
  'regions_original_xyxy') outlined inside each box, top-1 on top. `width`: the outline's,
  None for about 1/150 of the shorter side."""
  img = (image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(
      np.asarray(image, np.uint8).squeeze())).convert('RGB')
  width = width or max(2, round(min(img.size) / 150))
  draw = PIL.ImageDraw.Draw(img)
  boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
  for i in reversed(range(len(boxes))):
    x0, y0, x1, y1 = boxes[i]
    # Continuous [x0, x1) covers pixel columns floor(x0) .. ceil(x1) - 1.
    corners = [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1]
    if corners[2] >= corners[0] and corners[3] >= corners[1]:
      draw.rectangle(corners, outline=REGION_COLOURS[i % len(REGION_COLOURS)], width=width)
  return img


def draw_regions(image_uint8: np.ndarray, boxes, caption: str, scale: int = 2) -> PIL.Image.Image:
  """The model input at `scale` with its regions (y0, x0, y1, x1 pixels) outlined as
  `outline_regions` does (inside each box, top-1 on top), under a caption strip."""
  img = _upscaled(image_uint8, scale)
  outline_regions(img, boxes, scale)
  draw = PIL.ImageDraw.Draw(img)
  draw.rectangle([0, 0, img.size[0], 12], fill='black')
  draw.text((2, 0), caption, fill='white')
  return img


def draw_bars(groups, side: int) -> PIL.Image.Image:
  """A `side` x `side` panel of horizontal bars, one block per (title, labels, weights)
  group (fgjax.heatmaps.bar_groups): a bar's length is its weight (1 = the full width)."""
  img = PIL.Image.new('RGB', (side, side), 'black')
  draw = PIL.ImageDraw.Draw(img)
  line, label_width, value_width = 14, 48, 34
  top = 2
  for title, labels, weights in groups:
    draw.text((2, top), title, fill='white')
    top += line
    for label, weight in zip(labels, np.asarray(weights, np.float64)):
      span = max(side - label_width - value_width - 4, 1)
      draw.text((2, top), label, fill='white')
      draw.rectangle([label_width, top + 2, label_width + round(span * float(weight)),
                      top + line - 3], fill=BAR_COLOUR)
      draw.text((side - value_width, top), f'{weight:.2f}', fill='white')
      top += line
    top += line // 2
  return img


def panel_origin(index: int, panel_side: int) -> tuple[int, int]:
  """(left, top) pixel of panel `index`'s picture (below its title) in a ranking figure."""
  return index * (panel_side + PANEL_GAP), CAPTION_HEIGHT + TITLE_HEIGHT


def side_by_side(panels, caption: str) -> PIL.Image.Image:
  """Square panels [(title, PIL image)] of one side, in a row under a caption strip."""
  side = panels[0][1].size[0]
  width = len(panels) * side + (len(panels) - 1) * PANEL_GAP
  figure = PIL.Image.new('RGB', (width, CAPTION_HEIGHT + TITLE_HEIGHT + side), 'black')
  draw = PIL.ImageDraw.Draw(figure)
  draw.text((2, 0), caption, fill='white')
  for i, (title, panel) in enumerate(panels):
    left, top = panel_origin(i, side)
    draw.text((left + 2, CAPTION_HEIGHT), title, fill='#c0c0c0')
    figure.paste(panel, (left, top))
  return figure


def draw_ranking_figure(image_uint8: np.ndarray, boxes, heat_panels, bar_groups, caption: str,
                        scale: int | None = None) -> PIL.Image.Image:
  """The figure of one image (module docstring).

  Args:
    image_uint8: the model input [S, S, 3].
    boxes: [m, 4] regions (y0, x0, y1, x1, input pixels), top-1 first; None for none.
    heat_panels: [(title, heat [S, S] in [0, 1], NaN where no anchor lies)]
      (fgjax.heatmaps.ranking_heatmaps), each drawn over the image.
    bar_groups: fgjax.heatmaps.bar_groups; a bar panel when not empty.
    caption: the prediction (and the label, where known).
    scale: panel upscaling; None for `display_scale`.
  """
  scale = scale or display_scale(image_uint8.shape[0])
  picture = _upscaled(image_uint8, scale)
  outline_regions(picture, boxes, scale)
  title = 'input + regions' if boxes is not None else 'input (no regions)'
  panels = [(title, picture)]
  for name, heat in heat_panels:
    panels.append((name, _upscaled(heatmaps.overlay(image_uint8, heat), scale)))
  if bar_groups:
    panels.append(('SSANet choices', draw_bars(bar_groups, picture.size[0])))
  return side_by_side(panels, caption)
