"""Load a trained run and use it: evaluate, predict files, draw the mined regions.

Everything here works from a run's workdir alone (config.json + checkpoints),
so a notebook can do:

  run = inference.load_run('runs/cub_fdl')
  probs, boxes = run.predict(inference.load_images(['bird.jpg'], run.spec))
"""

import dataclasses
import functools
import glob
import os

import jax
import ml_collections
import numpy as np

from fgjax import checkpoint
from fgjax import config_lib
from fgjax import drawing
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

  def predict(self, images_uint8: np.ndarray, batch_size: int = 32):
    """uint8 [N, S, S, 3] -> (probs [N, C], boxes [N, m, 4] or None), on one device."""
    probs, boxes = [], []
    for i in range(0, len(images_uint8), batch_size):
      out = jax.device_get(self._predict_fn(self.state, {'image': images_uint8[i:i + batch_size]}))
      probs.append(out['probs'])
      if 'boxes' in out:
        boxes.append(out['boxes'])
    return np.concatenate(probs), (np.concatenate(boxes) if boxes else None)


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


def load_images(paths, spec: pipeline.ImageSpec) -> np.ndarray:
  """Image files -> uint8 [N, S, S, 3], preprocessed exactly as evaluation does."""
  transform = pipeline.eval_transform(spec)
  out = []
  for path in paths:
    with open(path, 'rb') as f:
      data = f.read()
    try:
      out.append(transform({'image': data, 'label': 0, 'crop_bottom': 0})['image'])
    except Exception as e:  # PIL raises many types for broken files.
      raise ValueError(f'{path}: cannot decode image ({type(e).__name__}: {e}).') from e
  return np.stack(out)


def expand_paths(spec: str) -> list[str]:
  """Comma-separated paths/globs -> sorted files; a pattern with no match is an error."""
  paths = []
  for part in filter(None, (p.strip() for p in spec.split(','))):
    matches = sorted(glob.glob(os.path.expanduser(part)))
    if not matches:
      raise FileNotFoundError(f'No file matches {part!r}.')
    paths.extend(matches)
  return paths


def predict_files(run: Run, paths, top_k: int = 5) -> list[dict]:
  """One dict per file: top-k {'class', 'name', 'prob'} and the regions, if any."""
  probs, boxes = run.predict(load_images(paths, run.spec))
  rows = []
  for i, path in enumerate(paths):
    order = np.argsort(-probs[i])[:top_k]
    row = {'file': path, 'top_k': [{'class': int(c), 'name': run.class_names[c],
                                    'prob': float(probs[i, c])} for c in order]}
    if boxes is not None:
      row['regions'] = np.asarray(boxes[i]).round(1).tolist()
    rows.append(row)
  return rows


def _save_drawings(run: Run, images, names, out_dir: str, labels=None) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  probs, boxes = run.predict(images)
  written = []
  for i, name in enumerate(names):
    top = int(np.argmax(probs[i]))
    caption = f'{run.class_names[top]} {probs[i, top]:.2f}'
    if labels is not None:
      caption += f' (true: {run.class_names[labels[i]]})'
    path = os.path.join(out_dir, f'{i:04d}_{os.path.splitext(os.path.basename(name))[0]}.png')
    drawing.draw_regions(images[i], None if boxes is None else boxes[i], caption).save(path)
    written.append(path)
  return written


def visualize_files(run: Run, paths, out_dir: str) -> list[str]:
  """Draws prediction and regions of each image file into out_dir; returns the PNGs."""
  return _save_drawings(run, load_images(paths, run.spec), paths, out_dir)


def visualize_eval_split(run: Run, num_examples: int, out_dir: str) -> list[str]:
  """The same for the first `num_examples` images of the run's eval split."""
  source = pipeline.TfdsSource(run.config.data.name, os.path.expanduser(run.config.data.data_dir),
                               run.config.data.eval_split, run.config.data.builder_config)
  transform = pipeline.eval_transform(run.spec)
  examples = [transform(source[i]) for i in range(min(num_examples, len(source)))]
  images = np.stack([e['image'] for e in examples])
  labels = [int(e['label']) for e in examples]
  return _save_drawings(run, images, [f'eval{i}' for i in range(len(examples))], out_dir, labels)


def evaluate_run(workdir: str, which: str = 'best', split: str | None = None,
                 batch_size: int | None = None) -> dict:
  """Exact evaluation of a run's checkpoint on `split` (default: its eval split)."""
  return evaluate_loaded(load_run(workdir, which), split, batch_size)


def evaluate_loaded(run: Run, split: str | None = None, batch_size: int | None = None) -> dict:
  """`evaluate_run` for a run already loaded (`load_run`); sets its config's eval split."""
  config = run.config
  config.unlock()
  if split:
    config.data.eval_split = split
  if batch_size:
    config.eval.batch_size = batch_size
  config.lock()
  parallel = ts.Parallel('pmap')
  if config.eval.batch_size % len(parallel.devices):
    raise ValueError(f'Eval batch size {config.eval.batch_size} is not divisible by the '
                     f'device count {len(parallel.devices)}.')
  source = pipeline.TfdsSource(config.data.name, os.path.expanduser(config.data.data_dir),
                               config.data.eval_split, config.data.builder_config)
  p_eval = parallel.map(functools.partial(ts.eval_step, model=run.model))
  result = train.evaluate(parallel, p_eval, parallel.replicate(run.state), source, run.spec,
                          config)
  return {**result, 'checkpoint': run.checkpoint_path, 'split': config.data.eval_split}
