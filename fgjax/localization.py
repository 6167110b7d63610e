"""Do a region model's boxes find the detail that decides the class?

Only the synthetic data sets know where that detail is: the parts benchmark stores it
(`detail_bbox`, fgjax/data/parts.py) and the demo regenerates its glyph positions from
the seed (fgjax/data/demo.py). A detail counts as found by a box when at least `inside`
(90 %) of its area lies in the box. For N images with m ranked boxes each:

  top1      = (1/N) sum_n hit(n, rank 0)
  any_top   = (1/N) sum_n OR_{r < k} hit(n, r),  k = model.regions.cat_num, the boxes the
              prediction uses
  any       = the same over all m kept boxes
  same_top  = (largest number of images sharing one identical top box) / N: 1.0 means the
              model zooms into one fixed box whatever the image
  ceiling   = the share of images in which SOME candidate box holds the detail (the most
              the candidate layout allows)
"""

import os

import numpy as np

from fgjax import config_lib
from fgjax import inference
from fgjax.data import pipeline


def detail_hits(boxes, details, inside: float = 0.9) -> np.ndarray:
  """bool [N, m]: at least `inside` of detail n's area lies in box (n, r).

  boxes [N, m, 4] and details [N, 4], both (y0, x0, y1, x1) in the same pixels.
  """
  b = np.asarray(boxes, np.float64)
  g = np.asarray(details, np.float64)[:, None]
  hy = np.clip(np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]), 0, None)
  hx = np.clip(np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]), 0, None)
  return hy * hx >= inside * (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])


def box_metrics(boxes, details, num_top: int, inside: float = 0.9) -> dict:
  """The module docstring's figures (but the ceiling) for boxes [N, m, 4], details [N, 4]."""
  boxes = np.asarray(boxes)
  hits = detail_hits(boxes, details, inside)
  _, counts = np.unique(boxes[:, 0], axis=0, return_counts=True)
  out = {f'rank_{r}': float(hits[:, r].mean()) for r in range(hits.shape[1])}
  out.update(top1=float(hits[:, 0].mean()), any_top=float(hits[:, :num_top].any(1).mean()),
             any=float(hits.any(1).mean()), same_top=float(counts.max() / len(boxes)),
             distinct_top=int(len(counts)), count=int(len(boxes)))
  return out


def _stored_details(config, split: str):
  """(encoded images, detail boxes (x0, y0, x1, y1) normalised) of a split, record order."""
  source = pipeline.TfdsSource(config.data.name, os.path.expanduser(config.data.data_dir), split,
                               config.data.builder_config)
  records = [source._open()[i] for i in range(len(source))]  # pylint: disable=protected-access
  images = [r['image'] for r in records]
  if config.data.name == 'parts':
    ymin, xmin, ymax, xmax = np.asarray([r['detail_bbox'] for r in records], np.float64).T
    return images, np.stack([xmin, ymin, xmax, ymax], 1)
  if config.data.name == 'demo':
    from fgjax.data import demo  # pylint: disable=g-import-not-at-top
    glyphs = demo.glyph_boxes(split, len(records))[[int(r['image_id']) - 1 for r in records]]
    return images, glyphs / demo.IMAGE_SIZE
  raise ValueError(f'Data set {config.data.name!r} does not know where its details are; '
                   "localization needs 'parts' or 'demo'.")


def to_model_input(details_normalised, spec: pipeline.ImageSpec) -> np.ndarray:
  """Normalised (x0, y0, x1, y1) -> (y0, x0, y1, x1) pixels of the eval input.

  Evaluation resizes the whole image to resize_size x resize_size and takes the
  centre image_size crop (fgjax.data.pipeline.eval_transform).
  """
  off = (spec.resize_size - spec.image_size) // 2
  return np.asarray(details_normalised, np.float64)[:, [1, 0, 3, 2]] * spec.resize_size - off


def candidate_boxes(config) -> np.ndarray:
  """The candidate boxes [A, 4] (input pixels) a region model chooses from."""
  from fgjax.models import fdl  # pylint: disable=g-import-not-at-top
  from fgjax.ops import anchors as anchors_lib  # pylint: disable=g-import-not-at-top
  settings = config.model.regions
  if config.model.name == 'fdl' and config.model.fdl.region_size is not None:
    size = config.data.image_size
    return fdl.cell_region_boxes((size, size), config.model.fdl.region_size, settings.pad,
                                 settings.reference_size, config.model.fdl.map_alignment)[0]
  boxes, _ = anchors_lib.region_anchors(config.data.image_size, settings.pad,
                                        reference_size=settings.reference_size,
                                        grid=settings.anchor_grid)
  return boxes


class NoBoxesError(ValueError):
  """The model (a region method with its regions switched off) returns no boxes."""


def localization(run: inference.Run, split: str = 'test', inside: float = 0.9) -> dict:
  """`box_metrics` of a loaded region model on `split`, plus 'ceiling'."""
  method = run.config.model.name
  if method not in config_lib.REGION_METHODS:
    raise ValueError(f'Model {method!r} has no regions to localize with.')
  encoded, details = _stored_details(run.config, split)
  transform = pipeline.eval_transform(run.spec)
  images = np.stack([transform({'image': e, 'label': 0, 'crop_bottom': 0})['image']
                     for e in encoded])
  details = to_model_input(details, run.spec)
  _, boxes = run.predict(images)
  if boxes is None:
    raise NoBoxesError(f'This {method} model returns no boxes (an ablation without regions, '
                       'e.g. fdl.image_level_only or scrim.use_fpl=False): nothing to localize.')
  out = box_metrics(boxes, details, run.config.model.regions.cat_num, inside)
  candidates = candidate_boxes(run.config)
  every = detail_hits(np.broadcast_to(candidates, (len(details),) + candidates.shape), details,
                      inside)
  out['ceiling'] = float(every.any(1).mean())
  return out
