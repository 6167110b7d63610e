"""Heat maps of what a region model ranks its candidate regions by, on its input image.

Pure NumPy functions of a model's maps (train_step.predict_step's 'maps', one image's
slice), usable from a notebook:

  out = run.predict_outputs(images, with_maps=True)
  maps = {k: v[0] for k, v in out['maps'].items()}
  for title, heat in heatmaps.ranking_heatmaps(run.model, maps, images.shape[1:3]):
    PIL.Image.fromarray(heatmaps.overlay(images[0], heat)).show()

The maps, per method (all at the model's input resolution, pixel p spanning [p, p + 1),
the convention of boxes and crops, fgjax.ops.crop):

- FDL: its smoothed class activation attention M [h, w] (fgjax.models.fdl), laid on the
  input the way FDL's box scores read it (`cell_map_to_pixels`, the model's
  `map_alignment`): each pixel is the area-weighted mean of the cells it overlaps.
- NTS-Net, SSANet, SCRIM: the scores NMS ordered the anchors by (the navigator's, plus the
  navigator guide's or the CPL's prior where the model adds one), spread over the anchors'
  boxes by `anchor_score_map`: each pixel is the mean score of the anchors covering it.
  SCRIM has one map per FPL, the one its top box comes from (the last stage's) first.
- ResNet: none (it ranks no regions).

Display: `normalise` scales a map to [0, 1] over the image (pixels that no anchor covers
stay NaN), `colourise` applies a colour map whose lightness rises with the value
(matplotlib's 'inferno'), and `overlay` blends it over the image.
"""

import numpy as np

from fgjax.models import regions
from fgjax.ops import cam_attention

HEAT_COLOURMAP = 'inferno'  # Perceptually uniform; lightness increases with the value.


def _pixel_overlaps(lo: np.ndarray, hi: np.ndarray, extent: int) -> np.ndarray:
  """|[lo_a, hi_a) ∩ [p, p + 1)| for every interval a and pixel p: float64 [A, extent]."""
  pixels = np.arange(extent, dtype=np.float64)
  return np.maximum(np.minimum(hi[:, None], pixels + 1) - np.maximum(lo[:, None], pixels), 0.0)


def anchor_score_map(scores, anchors, image_hw) -> np.ndarray:
  """Anchor scores summed onto the image over their boxes, per pixel divided by how much
  box covers it: the mean score of the anchors covering a pixel.

      map[p, q] = sum_a s_a |a ∩ pixel(p, q)| / sum_a |a ∩ pixel(p, q)|

  For integral boxes |a ∩ pixel| is 0 or 1, so a pixel gets the plain mean of the scores of
  the boxes containing it. Why not the plain sum: central pixels lie in several times more
  anchors than border ones, so the sum would draw the anchor layout (equal scores would
  make a bright centre), and navigator scores are logits of either sign, so more coverage
  could darken a pixel as well as brighten it; divided by the coverage, equal scores give
  a flat map and only the scores shape it. A pixel that no box covers is NaN (NTS-Net's
  'feature' grid leaves gaps on small inputs, fgjax.ops.anchors). The parts of boxes
  outside the image are dropped.

  Args:
    scores: [A] one image's anchor scores.
    anchors: [A, 4] boxes (y0, x0, y1, x1) in input pixels.
    image_hw: (H, W) of the input.

  Returns:
    float64 [H, W].
  """
  scores = np.asarray(scores, np.float64)
  boxes = np.asarray(anchors, np.float64)
  if scores.shape != boxes.shape[:1]:
    raise ValueError(f'{scores.shape[0]} scores for {boxes.shape[0]} anchors.')
  rows = _pixel_overlaps(boxes[:, 0], boxes[:, 2], int(image_hw[0]))    # [A, H]
  cols = _pixel_overlaps(boxes[:, 1], boxes[:, 3], int(image_hw[1]))    # [A, W]
  weighted = (rows * scores[:, None]).T @ cols
  coverage = rows.T @ cols
  covered = coverage > 0
  return np.where(covered, weighted / np.where(covered, coverage, 1.0), np.nan)


def cell_map_to_pixels(cell_map, image_hw, stride: float | None = None,
                       alignment: str = 'top_left') -> np.ndarray:
  """A map [h, w] of cells read on the input as fgjax.ops.cam_attention reads it.

  Cell u covers `cam_attention.cell_spans(h, H, stride, alignment)[u]` ('receptive_field':
  centred on input pixel u * stride, the outer cells reaching the border; 'top_left':
  [u s, (u + 1) s)); each pixel is the area-weighted mean of the cells it overlaps, so the
  mean of this map over a box inside the image is the box's `box_mean_scores` score.

  Returns:
    float64 [H, W].
  """
  cell_map = np.asarray(cell_map, np.float64)
  shares = []
  for cells, extent in zip(cell_map.shape, image_hw):
    starts, ends = cam_attention.cell_spans(cells, extent, stride, alignment)
    shares.append(_pixel_overlaps(starts, ends, int(extent)))           # [cells, extent]
  return shares[0].T @ cell_map @ shares[1]


def normalise(heat: np.ndarray) -> np.ndarray:
  """Scaled to [0, 1] by the finite minimum and maximum (0 where all are equal); NaN stays."""
  heat = np.asarray(heat, np.float64)
  finite = np.isfinite(heat)
  if not finite.any():
    return heat
  lo, hi = heat[finite].min(), heat[finite].max()
  return (heat - lo) / (hi - lo) if hi > lo else np.where(finite, 0.0, np.nan)


def colourise(heat01: np.ndarray, colourmap: str = HEAT_COLOURMAP) -> np.ndarray:
  """[H, W] values in [0, 1] -> uint8 [H, W, 3] colours (NaN -> black)."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  heat01 = np.asarray(heat01, np.float64)
  rgb = colormaps[colourmap](np.clip(np.nan_to_num(heat01, nan=0.0), 0.0, 1.0))[..., :3]
  rgb[~np.isfinite(heat01)] = 0.0
  return np.round(rgb * 255).astype(np.uint8)


def overlay(image_uint8: np.ndarray, heat01: np.ndarray, alpha: float = 0.6,
            colourmap: str = HEAT_COLOURMAP) -> np.ndarray:
  """The heat map's colours blended over the image: (1 - alpha) image + alpha colour.

  Where the heat is NaN (no anchor covers the pixel) the image is shown at (1 - alpha)
  brightness with no colour. Returns uint8 [H, W, 3].
  """
  image = np.asarray(image_uint8, np.float64)
  blended = (1 - alpha) * image + alpha * colourise(heat01, colourmap).astype(np.float64)
  return np.round(np.clip(blended, 0, 255)).astype(np.uint8)


def _navigator_title(model, key: str) -> str:
  prefix = key[:-len('selection_scores')]
  if prefix:  # SCRIM: 'fpl_stage4_' -> 'stage4 FPL'.
    stage = prefix[len('fpl_'):-1]
    prior = ' + CPL prior' if getattr(model, 'cpl_guide_weight', 0) else ''
    return f'{stage} FPL: navigator{prior}'
  prior = ' + guide prior' if getattr(model, 'navigator_guide', 'none') == 'always' else ''
  return f'navigator{prior}'


def ranking_heatmaps(model, maps: dict, image_hw) -> list[tuple[str, np.ndarray]]:
  """(title, heat [H, W] in [0, 1], NaN where no anchor lies) for each map a model ranks its
  regions by (module docstring); empty for a model that ranks none.

  Args:
    model: the run's model (its anchor and map geometry: pad, reference_size, anchor_grid,
      map_alignment).
    maps: one image's predict_step maps (no batch axis).
    image_hw: (H, W) of the model input.
  """
  panels = []
  if 'attention' in maps:
    alignment = getattr(model, 'map_alignment', 'receptive_field')
    # As FDL's box scores: the backbone's stride for 'receptive_field', H / h otherwise.
    stride = regions.FEATURE_STRIDE if alignment == 'receptive_field' else None
    heat = cell_map_to_pixels(maps['attention'], image_hw, stride, alignment)
    panels.append(('FDL attention (smoothed CAM)', normalise(heat)))
  keys = sorted((k for k in maps if k.endswith('selection_scores')), reverse=True)
  if keys:  # reverse: SCRIM's last stage (where its top box comes from) first.
    anchors = regions.anchors_and_sizes(tuple(image_hw), model.pad, model.part_size,
                                        model.reference_size, model.anchor_grid)[0]
    for key in keys:
      heat = anchor_score_map(maps[key], anchors, image_hw)
      panels.append((_navigator_title(model, key), normalise(heat)))
  return panels


def bar_groups(model, maps: dict) -> list[tuple[str, list[str], np.ndarray]]:
  """SSANet's per-image choices as (title, labels, weights summing to 1): the oriented
  pooling gate over its angles and the scale-shift probabilities of DSM (shift k: the
  pyramid read k levels on, fgjax.ops.scale_mining). Empty for other models."""
  groups = []
  if 'orientation_weights' in maps:
    angles = getattr(model, 'op_angles', ())
    weights = np.asarray(maps['orientation_weights'], np.float64)
    labels = ([f'{a:g} deg' for a in angles] if len(angles) == len(weights)
              else [str(i) for i in range(len(weights))])
    groups.append(('orientation gate', labels, weights))
  if 'shift_probs' in maps:
    weights = np.asarray(maps['shift_probs'], np.float64)
    groups.append(('scale shift (levels)', [f'+{k}' for k in range(len(weights))], weights))
  return groups
