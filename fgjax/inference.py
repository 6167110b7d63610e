"""Load a trained run and use it: predict files, draw the mined regions.

(Evaluating a run over a whole split: fgjax.evaluation.)

Everything here works from a run's workdir alone (config.json + checkpoints),
so a notebook can do:

  run = inference.load_run('runs/cub_fdl')
  probs, boxes = run.predict(inference.load_images(['bird.jpg'], run.spec))
"""

import dataclasses
import functools
import glob
import io
import os

from absl import logging
import jax
import ml_collections
import numpy as np
import PIL.Image

from fgjax import checkpoint
from fgjax import config_lib
from fgjax import drawing
from fgjax import heatmaps
from fgjax import train
from fgjax import train_step as ts
from fgjax.data import pipeline
from fgjax.data import registry

def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (its workdir's config.json), validated."""
  saved = config_lib.read_saved(workdir)
  if saved is None:
    path = os.path.join(os.path.expanduser(workdir), 'config.json')
    raise FileNotFoundError(f'{path} not found: is {workdir} a fgjax workdir?')
  config = config_lib.base_config()
  config.unlock()  # Older runs' moved keys are read under their new names.
  config.update_from_flattened_dict(config_lib.upgrade(saved))
  config.lock()
  config_lib.validate(config)
  return config


@dataclasses.dataclass
class Run:
  """A trained model ready for inference."""
  config: ml_collections.ConfigDict
  model: object
  state: ts.TrainState
  class_names: list[str]
  checkpoint_path: str

  @property
  def spec(self) -> pipeline.ImageSpec:
    return pipeline.ImageSpec(self.config.data.image_size, self.config.data.resize_size)

  @functools.cached_property
  def _predict_fn(self):
    return jax.jit(functools.partial(ts.predict_step, model=self.model))

  @functools.cached_property
  def _predict_maps_fn(self):
    return jax.jit(functools.partial(ts.predict_step, model=self.model, with_maps=True))

  def predict_outputs(self, images_uint8: np.ndarray, batch_size: int = 32,
                      with_maps: bool = False) -> dict:
    """uint8 [N, S, S, 3] (N >= 1) -> train_step.predict_step's outputs as NumPy, on one
    device: 'probs' [N, C]; for region models 'boxes' [N, m, 4] (y0, x0, y1, x1, model-input
    pixels) and 'box_valid' [N, m]; with `with_maps` the 'maps' (fgjax.heatmaps)."""
    if not len(images_uint8):
      raise ValueError('No images to predict.')
    fn = self._predict_maps_fn if with_maps else self._predict_fn
    parts = [jax.device_get(fn(self.state, {'image': images_uint8[i:i + batch_size]}))
             for i in range(0, len(images_uint8), batch_size)]
    return jax.tree.map(lambda *chunks: np.concatenate(chunks), *parts)

  def predict(self, images_uint8: np.ndarray, batch_size: int = 32):
    """uint8 [N, S, S, 3] -> (probs [N, C], boxes [N, m, 4] or None), on one device."""
    out = self.predict_outputs(images_uint8, batch_size)
    return out['probs'], out.get('boxes')


def load_run(workdir: str, which: str = 'best') -> Run:
  """Restores the 'best' (highest eval accuracy) or 'latest' checkpoint of a run."""
  if which not in ('best', 'latest'):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}.")
  config = load_config(workdir)
  builder = registry.require_prepared(config.data.name, os.path.expanduser(config.data.data_dir),
                                      config.data.builder_config or None)
  class_names = list(builder.info.features['label'].names)
  model, _, tx = train.build_model_and_optimizer(config, len(class_names), steps_per_epoch=1)
  fresh = jax.eval_shape(lambda: ts.create_train_state(model, tx, jax.random.key(0),
                                                       config.data.image_size))
  prefer = ('best', 'checkpoints') if which == 'best' else ('checkpoints', 'best')
  state, path = checkpoint.restore_state_only(workdir, fresh, prefer=prefer)
  return Run(config, model, state, class_names, path)


def with_navigator_guide(run: Run, guide: str) -> Run:
  """An nts / ssanet run trained with a navigator guide, evaluated with `guide`: 'train'
  (the navigator alone, as the papers' models) or 'always' (with the class activation
  prior, fgjax.models.regions). The weights are the same; only what NMS orders by changes."""
  method = run.config.model.name
  if getattr(run.model, 'navigator_guide', 'none') == 'none':
    raise ValueError(f'{run.checkpoint_path}: this {method} run was trained without a '
                     'navigator guide; choosing the guide at evaluation needs an nts or ssanet '
                     "run trained with model.regions.navigator_guide 'train' or 'always'.")
  if guide not in ('train', 'always'):
    raise ValueError(f"navigator guide {guide!r} at evaluation: expected 'train' or 'always'.")
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.model.regions.navigator_guide = guide
  config.lock()
  return dataclasses.replace(run, config=config, model=run.model.clone(navigator_guide=guide))


@dataclasses.dataclass
class LoadedImages:
  """Image files decoded as evaluation decodes them, and the files that could not be."""
  images: np.ndarray  # uint8 [N, S, S, 3]: the readable files, in the order given.
  paths: list[str]  # [N] their paths.
  positions: list[int]  # [N] their indices in the list of paths given.
  original_hw: np.ndarray  # int [N, 2]: each image's (height, width) in pixels.
  span_hw: np.ndarray  # float [N, 2]: the part of it evaluation resizes (original_extent).
  skipped: list[tuple[str, str]]  # (path, why) of each file that could not be read.


def original_extent(data: bytes, resize_size: int, crop_bottom: int = 0):
  """(size (H, W), span (H, W)) of an encoded image: its size in pixels, and the extent, in
  its pixels from the top-left corner, that evaluation resizes to `resize_size` square
  (pipeline.decode_resize_crop): the image less its `crop_bottom` banner rows. A JPEG over
  twice `resize_size` is decoded at 1/2, 1/4 or 1/8 scale (PIL's draft, as the pipeline
  does), and its last decoded column and row cover up to scale - 1 pixels past the image:
  the span is then the decoded size times the scale."""
  with PIL.Image.open(io.BytesIO(data)) as img:
    width, height = img.size
    drafted = img.draft('RGB', (resize_size, resize_size + crop_bottom))
    scale = 1 if drafted is None else round(width / drafted[1][2])
    decoded_w, decoded_h = img.size
  rows = int(round(crop_bottom * decoded_h / height)) if crop_bottom else 0
  return (height, width), ((decoded_h - rows) * scale, decoded_w * scale)


def _read_image(path: str, transform, resize_size: int):
  """(model input uint8 [S, S, 3], size (H, W), span (H, W)); ValueError saying why not."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f'cannot read the file ({type(e).__name__}: {e.strerror or e})') from e
  try:
    image = transform({'image': data, 'label': 0, 'crop_bottom': 0})['image']
    size, span = original_extent(data, resize_size)
  except Exception as e:  # PIL raises many types for broken files.
    raise ValueError(f'cannot decode the image ({type(e).__name__}: {e})') from e
  return image, size, span


def read_images(paths, spec: pipeline.ImageSpec) -> LoadedImages:
  """Image files -> LoadedImages, preprocessed exactly as evaluation does; an unreadable,
  truncated or non-image file is left out and listed in `skipped` with the reason."""
  transform = pipeline.eval_transform(spec)
  images, kept, positions, sizes, spans, skipped = [], [], [], [], [], []
  for position, path in enumerate(paths):
    try:
      image, size, span = _read_image(path, transform, spec.resize_size)
    except ValueError as e:
      skipped.append((path, str(e)))
      continue
    images.append(image)
    kept.append(path)
    positions.append(position)
    sizes.append(size)
    spans.append(span)
  empty = np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8)
  return LoadedImages(np.stack(images) if images else empty, kept, positions,
                      np.array(sizes, np.int64).reshape(-1, 2),
                      np.array(spans, np.float64).reshape(-1, 2), skipped)


def load_images(paths, spec: pipeline.ImageSpec) -> np.ndarray:
  """Image files -> uint8 [N, S, S, 3], preprocessed exactly as evaluation does; a file
  that cannot be read is an error naming it (read_images skips such files instead)."""
  loaded = read_images(paths, spec)
  if loaded.skipped:
    path, why = loaded.skipped[0]
    raise ValueError(f'{path}: {why}.')
  return loaded.images


def boxes_to_original(boxes, spec: pipeline.ImageSpec, span_hw, original_hw=None) -> np.ndarray:
  """Regions in model-input pixels -> the same regions in the original image's pixels.

  Evaluation resizes the image's span (original_extent) to resize_size square, then keeps
  the centre image_size square, from o = (resize_size - image_size) // 2
  (pipeline.eval_transform). Both are linear in continuous pixel coordinates (pixel p
  spans [p, p + 1), as boxes and crops read them), so model-input coordinate u lies at

      y = (o + u) * span_h / resize_size,   x = (o + u) * span_w / resize_size

  in the original. Boxes are first clipped to the model input [0, image_size], since past
  it the model saw zero padding, not the image (region boxes may reach up to the padding
  into it, fgjax.ops.crop.zoom_into_regions), then mapped, then clipped to the image.

  Args:
    boxes: [..., 4] (y0, x0, y1, x1) in model-input pixels.
    spec: the run's ImageSpec.
    span_hw: (H, W) span of the image (original_extent).
    original_hw: (H, W) of the image to clip to; None for the span.

  Returns:
    float64 [..., 4] (x0, y0, x1, y1): x first, in original pixels.
  """
  boxes = np.clip(np.asarray(boxes, np.float64), 0.0, spec.image_size)
  offset = (spec.resize_size - spec.image_size) // 2
  span_h, span_w = (float(v) for v in span_hw)
  height, width = (float(v) for v in (span_hw if original_hw is None else original_hw))
  y = np.clip((offset + boxes[..., 0::2]) * span_h / spec.resize_size, 0.0, height)
  x = np.clip((offset + boxes[..., 1::2]) * span_w / spec.resize_size, 0.0, width)
  return np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def expand_paths(spec: str) -> list[str]:
  """Comma-separated paths/globs -> sorted files; a pattern with no match is an error."""
  paths = []
  for part in filter(None, (p.strip() for p in spec.split(','))):
    matches = sorted(glob.glob(os.path.expanduser(part)))
    if not matches:
      raise FileNotFoundError(f'No file matches {part!r}.')
    paths.extend(matches)
  return paths


def _prediction_row(run: Run, path: str, out: dict, i: int, top_k: int, size, span) -> dict:
  """predict_files' row for image i of the outputs `out` of Run.predict_outputs."""
  probs = out['probs'][i]
  order = np.argsort(-probs)[:top_k]
  row = {'file': path,
         'top_k': [{'class': int(c), 'name': run.class_names[c], 'prob': float(probs[c])}
                   for c in order],
         'original_size_hw': [int(v) for v in size], 'input_size': run.spec.image_size}
  if 'boxes' in out:
    boxes = np.asarray(out['boxes'][i], np.float64)
    row['regions_input_yxyx'] = boxes.round(1).tolist()
    row['regions_original_xyxy'] = boxes_to_original(boxes, run.spec, span, size).round(1).tolist()
  if 'box_valid' in out:
    row['regions_valid'] = [bool(v) for v in out['box_valid'][i]]
  return row


def iter_predictions(run: Run, paths, top_k: int = 5, batch_size: int = 32):
  """Yields predict_files' rows one per path, in order, reading `batch_size` files at a
  time (memory stays bounded, and rows come out as the files are done)."""
  paths = list(paths)
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    loaded = read_images(chunk, run.spec)
    rows = [None] * len(chunk)
    failed = sorted(set(range(len(chunk))) - set(loaded.positions))
    for position, (path, why) in zip(failed, loaded.skipped):
      rows[position] = {'file': path, 'error': why}
    if loaded.paths:
      out = run.predict_outputs(loaded.images, batch_size)
      for i, (position, path) in enumerate(zip(loaded.positions, loaded.paths)):
        rows[position] = _prediction_row(run, path, out, i, top_k, loaded.original_hw[i],
                                         loaded.span_hw[i])
    yield from rows


def predict_files(run: Run, paths, top_k: int = 5) -> list[dict]:
  """One dict per file, in order. A readable image's: 'file', 'top_k' (top-k {'class',
  'name', 'prob'}), 'original_size_hw' [H, W], 'input_size' S and, for region models,
  'regions_input_yxyx' [m, 4] (y0, x0, y1, x1 in model-input pixels, as the model chose
  them: they may reach into the zero padding), 'regions_original_xyxy' [m, 4] (x0, y0, x1,
  y1 in the image's pixels, clipped: boxes_to_original) and 'regions_valid' [m]. A file
  that could not be read: {'file', 'error'} (the reason); the others are still predicted.
  """
  return list(iter_predictions(run, paths, top_k))


def draw_figures(run: Run, images: np.ndarray, labels=None) -> list:
  """PIL figures of model inputs uint8 [N, S, S, 3]: the input with the predicted class and
  the regions, beside the maps the model ranks regions by and SSANet's choices
  (drawing.draw_ranking_figure, fgjax.heatmaps); `labels` [N] adds the true class."""
  out = run.predict_outputs(images, with_maps=True)
  figures = []
  for i, image in enumerate(images):
    top = int(np.argmax(out['probs'][i]))
    caption = f'{run.class_names[top]} {out["probs"][i, top]:.2f}'
    if labels is not None:
      caption += f' (true: {run.class_names[labels[i]]})'
    maps = {k: v[i] for k, v in out['maps'].items()}
    figures.append(drawing.draw_ranking_figure(
        image, out['boxes'][i] if 'boxes' in out else None,
        heatmaps.ranking_heatmaps(run.model, maps, image.shape[:2]),
        heatmaps.bar_groups(run.model, maps), caption))
  return figures


def _save_drawings(run: Run, images, names, out_dir: str, labels=None, numbers=None) -> list[str]:
  """Saves draw_figures' figures as out_dir/<number>_<name>.png; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for i, (name, figure) in enumerate(zip(names, draw_figures(run, images, labels))):
    number = i if numbers is None else numbers[i]
    path = os.path.join(out_dir, f'{number:04d}_{os.path.splitext(os.path.basename(name))[0]}.png')
    figure.save(path)
    written.append(path)
  return written


def visualize_files(run: Run, paths, out_dir: str, batch_size: int = 32) -> list[str]:
  """Draws each image file's figure (draw_figures) into out_dir as <index>_<name>.png,
  index its position in `paths`; returns the PNGs. A file that cannot be read is skipped
  with a warning naming it and the reason."""
  paths, written = list(paths), []
  for start in range(0, len(paths), batch_size):
    loaded = read_images(paths[start:start + batch_size], run.spec)
    for path, why in loaded.skipped:
      logging.warning('Skipped %s: %s', path, why)
    if loaded.paths:
      written += _save_drawings(run, loaded.images, loaded.paths, out_dir,
                                numbers=[start + p for p in loaded.positions])
  return written


def visualize_eval_split(run: Run, num_examples: int, out_dir: str) -> list[str]:
  """The same for the first `num_examples` images of the run's eval split."""
  source = pipeline.TfdsSource(run.config.data.name, os.path.expanduser(run.config.data.data_dir),
                               run.config.data.eval_split, run.config.data.builder_config)
  transform = pipeline.eval_transform(run.spec)
  examples = [transform(source[i]) for i in range(min(num_examples, len(source)))]
  images = np.stack([e['image'] for e in examples])
  labels = [int(e['label']) for e in examples]
  return _save_drawings(run, images, [f'eval{i}' for i in range(len(examples))], out_dir, labels)
