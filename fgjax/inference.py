"""Load a trained run and use it: predict on images, draw what the model looks at.

(Evaluating a run over a whole split: fgjax.evaluation.)

Everything here works from a run's workdir alone (config.json + checkpoints). From a
notebook, on PIL images or uint8 arrays of any size (grayscale and RGBA converted as
evaluation converts them), or image paths, each preprocessed exactly as evaluation does
(fgjax.input_images):

  import PIL.Image
  from fgjax import drawing, inference
  run = inference.load_run('runs/cub_fdl')
  photos = [PIL.Image.open('bird1.jpg'), PIL.Image.open('bird2.png')]
  pred = run.predict_images(photos, top_k=3)
  print([names[0] for names in pred.top_k_names])      # top-1 class names
  pred.boxes_original[0]       # [m, 4] regions (x0, y0, x1, y1) in bird1.jpg's pixels
  drawing.draw_regions_on_original(photos[0], pred.boxes_original[0]).save('regions.png')
  run.draw_images(photos)[0].save('figure.png')        # input, regions, heat maps

Files from the command line (launch/predict.py, launch/visualize.py): `predict_files`,
`iter_predictions` (one row per file, a bad file a row with its error), `visualize_files`.
"""

import dataclasses
import functools
import glob
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from fgjax import checkpoint
from fgjax import config_lib
from fgjax import drawing
from fgjax import heatmaps
from fgjax import input_images
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

  def predict_loaded(self, loaded: input_images.LoadedImages, top_k: int = 5,
                     batch_size: int = 32) -> 'Predictions':
    """Predictions for images read by input_images.read_images (its readable ones)."""
    out = self.predict_outputs(loaded.images, batch_size)
    order = np.argsort(-out['probs'], axis=1, kind='stable')[:, :top_k]
    boxes = out.get('boxes')
    original = None if boxes is None else np.stack([
        input_images.boxes_to_original(b, self.spec, span, size)
        for b, span, size in zip(boxes, loaded.span_hw, loaded.original_hw)])
    return Predictions(
        names=list(loaded.names), inputs=loaded.images, probs=out['probs'], top_k=order,
        top_k_names=[[self.class_names[c] for c in row] for row in order],
        original_hw=loaded.original_hw, boxes_input=boxes, boxes_original=original,
        box_valid=out.get('box_valid'))

  def predict_images(self, images, top_k: int = 5, batch_size: int = 32) -> 'Predictions':
    """Predictions for PIL images, uint8 arrays [H, W(, 1|3|4)] of any size, or image
    paths, each preprocessed exactly as evaluation does (fgjax.input_images); an image
    that cannot be read is an error naming it."""
    return self.predict_loaded(input_images.load_images(images, self.spec), top_k, batch_size)

  def draw_images(self, images, batch_size: int = 32) -> list:
    """PIL figures (draw_figures: the model input with its regions, the heat maps it ranks
    regions by, SSANet's choices) of images as predict_images takes them."""
    loaded = input_images.load_images(images, self.spec)
    return [figure for start in range(0, len(loaded.images), batch_size)
            for figure in draw_figures(self, loaded.images[start:start + batch_size])]


@dataclasses.dataclass
class Predictions:
  """Run.predict_images' answer for N images; the region fields are None for a model
  without regions (resnet), else m regions per image, top-1 first."""
  names: list[str]  # [N] each image's path (a PIL image's file), or 'images[i]'.
  inputs: np.ndarray  # uint8 [N, S, S, 3]: what the model saw.
  probs: np.ndarray  # float32 [N, C]: softmax probabilities.
  top_k: np.ndarray  # int [N, k]: the k most probable classes, most probable first.
  top_k_names: list[list[str]]  # [N][k] their names.
  original_hw: np.ndarray  # int [N, 2]: each image's (height, width).
  # float [N, m, 4] (y0, x0, y1, x1) in model-input pixels, as the model chose them (they
  # may reach into the zero padding around the input).
  boxes_input: np.ndarray | None
  # float64 [N, m, 4] (x0, y0, x1, y1) in the original image's pixels, clipped to it
  # (input_images.boxes_to_original): for cropping or drawing on the user's own image.
  boxes_original: np.ndarray | None
  # bool [N, m]: False where NMS ran out of distinct boxes.
  box_valid: np.ndarray | None


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


def expand_paths(spec: str) -> list[str]:
  """Comma-separated paths and globs -> files, each glob's matches sorted. A plain path is
  kept even if it does not exist (reading it then reports why, and the others go on); a
  glob that matches nothing is an error (most likely a mistyped pattern)."""
  paths = []
  for part in filter(None, (p.strip() for p in spec.split(','))):
    part = os.path.expanduser(part)
    if not glob.has_magic(part):
      paths.append(part)
      continue
    matches = sorted(glob.glob(part))
    if not matches:
      raise FileNotFoundError(f'No file matches {part!r}.')
    paths.extend(matches)
  return paths


def _round(values) -> list:
  return np.round(np.asarray(values, np.float64), 1).tolist()


def prediction_row(pred: Predictions, i: int) -> dict:
  """predict_files' row (its docstring) of image i of `pred`."""
  row = {'file': pred.names[i],
         'top_k': [{'class': int(c), 'name': name, 'prob': float(pred.probs[i, c])}
                   for c, name in zip(pred.top_k[i], pred.top_k_names[i])],
         'original_size_hw': [int(v) for v in pred.original_hw[i]],
         'input_size': int(pred.inputs.shape[1])}
  if pred.boxes_input is not None:
    row['regions_input_yxyx'] = _round(pred.boxes_input[i])
    row['regions_original_xyxy'] = _round(pred.boxes_original[i])
  if pred.box_valid is not None:
    row['regions_valid'] = [bool(v) for v in pred.box_valid[i]]
  return row


def iter_predictions(run: Run, paths, top_k: int = 5, batch_size: int = 32):
  """Yields predict_files' rows one per path, in order, reading `batch_size` files at a
  time (memory stays bounded, and rows come out as the files are done)."""
  paths = list(paths)
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    loaded = input_images.read_images(chunk, run.spec)
    rows = [None] * len(chunk)
    failed = sorted(set(range(len(chunk))) - set(loaded.positions))  # skipped's order.
    for position, (path, why) in zip(failed, loaded.skipped):
      rows[position] = {'file': path, 'error': why}
    if loaded.names:
      pred = run.predict_loaded(loaded, top_k, batch_size)
      for i, position in enumerate(loaded.positions):
        rows[position] = prediction_row(pred, i)
    yield from rows


def predict_files(run: Run, paths, top_k: int = 5) -> list[dict]:
  """One dict per file, in order. A readable image's:

    'file': its path;
    'top_k': the top-k classes, most probable first, each {'class', 'name', 'prob'};
    'original_size_hw': [H, W] of the image in pixels;
    'input_size': S, the side of the model input;
  and for region models (nts, fdl, ssanet, scrim), m regions, top-1 first:
    'regions_input_yxyx': [m, 4] (y0, x0, y1, x1) in model-input pixels, as the model
      chose them (they may reach into the zero padding around the input);
    'regions_original_xyxy': [m, 4] (x0, y0, x1, y1) in the image's own pixels, clipped
      to it (input_images.boxes_to_original);
    'regions_valid': [m] False where NMS ran out of distinct boxes (a repeated one).
  Coordinates are continuous (pixel p spans [p, p + 1)), rounded to 0.1 px. A file that
  could not be read (missing, truncated, not an image) is {'file', 'error'} with the
  reason; the others are still predicted.
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
    loaded = input_images.read_images(paths[start:start + batch_size], run.spec)
    for path, why in loaded.skipped:
      logging.warning('Skipped %s: %s', path, why)
    if loaded.names:
      written += _save_drawings(run, loaded.images, loaded.names, out_dir,
                                numbers=[start + p for p in loaded.positions])
  return written


def visualize_eval_split(run: Run, num_examples: int, out_dir: str) -> list[str]:
  """The same for the first `num_examples` images of the run's eval split."""
  source = pipeline.TfdsSource(run.config.data.name, os.path.expanduser(run.config.data.data_dir),
                               run.config.data.eval_split, run.config.data.builder_config)
  images, labels = pipeline.first_eval_examples(source, run.spec, num_examples)
  return _save_drawings(run, images, [f'eval{i}' for i in range(len(images))], out_dir, labels)
