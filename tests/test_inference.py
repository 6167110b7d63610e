"""Evaluate, predict and visualise from a run's workdir alone."""

import collections
import dataclasses
import io
import os

import jax
import ml_collections
import numpy as np
import PIL.Image
import PIL.ImageColor
import pytest

from fgjax import drawing
from fgjax import evaluation
from fgjax import inference
from fgjax import input_images
from fgjax import localization
from fgjax import train
from fgjax import train_step as ts
from fgjax.data import demo
from fgjax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TEST = demo.SPLIT_SIZES['tiny']['test']
# Input sizes the run is looked at through: its own 32 px, where FDL's attention map is a
# single cell and every image gets the same boxes, and the demo's 64 px (same weights: the
# model is convolutional), where the boxes differ between images, so that a box or a detail
# paired with the wrong image shows.
SIZES = [(32, 36), (64, 72)]


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, demo_data_dir):
  from configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  c = demo_config.get_config()
  c.data.data_dir = demo_data_dir
  c.data.builder_config = 'tiny'
  c.data.image_size, c.data.resize_size = SIZES[0]
  c.model.name = 'fdl'  # A model with regions, so that boxes are drawn.
  c.train.batch_size, c.train.epochs, c.eval.batch_size = 16, 1, 16
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(c, workdir)
  return workdir, result


def _at_size(run, image_size, resize_size):
  """The same run (weights, model) fed inputs of another size."""
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.data.image_size, config.data.resize_size = image_size, resize_size
  config.lock()
  return dataclasses.replace(run, config=config)


def _png(image_uint8) -> bytes:
  buf = io.BytesIO()
  PIL.Image.fromarray(image_uint8).save(buf, format='PNG')
  return buf.getvalue()


def _eval_inputs(encoded, spec):
  """Encoded images -> uint8 [N, S, S, 3] as evaluation sees them."""
  transform = pipeline.eval_transform(spec)
  return np.stack([transform({'image': e, 'label': 0, 'crop_bottom': 0})['image'] for e in encoded])


def _apply(model, state, inputs) -> dict:
  """The reference: the model applied directly, eagerly, to the whole batch."""
  return jax.device_get(model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                                    ts.normalise(inputs), train=False))


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _original_xyxy(boxes_yxyx, spec, span_hw, size_hw):
  """The test's own mapping: input u -> (o + clip(u, 0, S)) * span / R, clipped to the
  image, x first."""
  offset = (spec.resize_size - spec.image_size) // 2
  out = []
  for y0, x0, y1, x1 in np.asarray(boxes_yxyx, np.float64):
    def to_original(u, span, size):
      return min(max((offset + min(max(u, 0.0), spec.image_size)) * span / spec.resize_size,
                     0.0), size)
    out.append([to_original(x0, span_hw[1], size_hw[1]), to_original(y0, span_hw[0], size_hw[0]),
                to_original(x1, span_hw[1], size_hw[1]), to_original(y1, span_hw[0], size_hw[0])])
  return np.array(out)


def _holds(box, detail, inside=0.9) -> bool:
  """At least `inside` of the detail's area lies in the box; both (y0, x0, y1, x1)."""
  (by0, bx0, by1, bx1), (gy0, gx0, gy1, gx1) = box, detail
  overlap = max(0.0, min(by1, gy1) - max(by0, gy0)) * max(0.0, min(bx1, gx1) - max(bx0, gx0))
  return overlap >= inside * ((gy1 - gy0) * (gx1 - gx0))


def test_evaluate_run_reproduces_training_eval(trained_run):
  # Same batch size as in training: at 32 px FDL's attention map is a single cell,
  # so every anchor ties and rounding noise of another batch size may pick others.
  workdir, result = trained_run
  again = evaluation.evaluate_run(workdir, 'latest', batch_size=16)
  assert again['count'] == NUM_TEST
  np.testing.assert_allclose(again['accuracy'], result['accuracy'])
  np.testing.assert_allclose(again['loss'], result['loss'], rtol=1e-5)
  # Each head's accuracy is the share of test images whose argmax is the label, for the
  # parameters training ended with.
  images, labels, _ = zip(*demo.generate_split('test', NUM_TEST))
  run, spec = inference.load_run(workdir, 'latest'), pipeline.ImageSpec(*SIZES[0])
  out = _apply(run.model, result['state'], _eval_inputs(map(_png, images), spec))
  for name, logits in [('accuracy', out['logits']), ('accuracy_image', out['image_logits']),
                       ('accuracy_region_top1', out['region_logits'][:, 0])]:
    assert again[name] == pytest.approx(np.mean(np.argmax(logits, -1) == np.array(labels))), name


def _upscaled(image, scale):
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _outline_mask(boxes, side, scale, width=2):
  """True on the outlines drawn inside each box [y0, y1) x [x0, x1) at `scale`, `width`
  picture pixels thick, clipped to the picture."""
  mask = np.zeros((side * scale, side * scale), bool)
  for y0, x0, y1, x1 in np.clip(np.round(np.asarray(boxes) * scale).astype(int), 0,
                                side * scale):
    if y1 > y0 and x1 > x0:
      region = np.zeros_like(mask)
      region[y0:y1, x0:x1] = True
      inner = np.zeros_like(mask)
      inner[y0 + width:y1 - width, x0 + width:x1 - width] = True
      mask |= region & ~inner
  return mask


@pytest.mark.parametrize('size', SIZES)
def test_predict_files_and_visualize(trained_run, tmp_path, size):
  workdir, result = trained_run
  run = _at_size(inference.load_run(workdir), *size)
  paths = []
  for i, (img, _, _) in enumerate(demo.generate_split('test', 5)):
    paths.append(str(tmp_path / f'img{i}.png'))
    PIL.Image.fromarray(img).convert('L' if i == 0 else 'RGB').save(paths[-1])  # Gray, too.
  rows = inference.predict_files(run, inference.expand_paths(str(tmp_path / '*.png')), top_k=3)
  assert [r['file'] for r in rows] == paths
  encoded = []
  for path in paths:
    with open(path, 'rb') as f:
      encoded.append(f.read())
  inputs = _eval_inputs(encoded, pipeline.ImageSpec(*size))
  out = _apply(run.model, result['state'], inputs)
  for row, probs, boxes in zip(rows, _softmax(out['logits'].astype(np.float64)), out['boxes']):
    top = np.argsort(-probs, kind='stable')[:3]
    assert [t['class'] for t in row['top_k']] == top.tolist()
    assert [t['name'] for t in row['top_k']] == [demo.class_names()[c] for c in top]
    np.testing.assert_allclose([t['prob'] for t in row['top_k']], probs[top], rtol=1e-5)
    np.testing.assert_allclose(row['regions_input_yxyx'], boxes, atol=0.051)  # 0.1 px.
  written = inference.visualize_files(run, paths, str(tmp_path / 'viz'))
  assert len(written) == len(paths)
  scale = drawing.display_scale(size[0])
  for path, image, boxes in zip(written, inputs, out['boxes']):
    # The first panel: this image, upscaled, wherever this image's boxes are not outlined
    # (tests/test_heatmaps.py checks the outlines and the heat panels).
    with PIL.Image.open(path) as drawn:
      picture = np.asarray(drawn.convert('RGB'))
    left, top = drawing.panel_origin(0, size[0] * scale)
    panel = picture[top:top + size[0] * scale, left:left + size[0] * scale]
    plain = ~_outline_mask(boxes, size[0], scale)
    np.testing.assert_array_equal(panel[plain], _upscaled(image, scale)[plain])
  assert len(inference.visualize_eval_split(run, 2, str(tmp_path / 'viz2'))) == 2


def test_missing_workdir_and_unreadable_image_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    inference.load_run(str(tmp_path))
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='bad.jpg: not an image'):
    input_images.load_images([str(bad)], pipeline.ImageSpec(32, 36))
  with pytest.raises(ValueError, match=r'images\[1\]: .*uint8'):
    input_images.load_images([np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9, 3))],
                             pipeline.ImageSpec(32, 36))
  with pytest.raises(ValueError, match=r'\[H, W, 1, 3 or 4\], got \(9, 9, 2\)'):
    input_images.load_images([np.zeros((9, 9, 2), np.uint8)], pipeline.ImageSpec(32, 36))


def _png_file(path, image) -> bytes:
  """Saves a PIL image or array as PNG (TIFF for CMYK, which PNG cannot hold) with PIL's
  defaults; returns the file's bytes."""
  image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.squeeze(image))
  image.save(path, format='TIFF' if image.mode == 'CMYK' else 'PNG')
  with open(path, 'rb') as f:
    return f.read()


def _in_memory_images():
  """PIL images and arrays of several sizes and modes, from demo scenes."""
  scenes = [img for img, _, _ in demo.generate_split('test', 3)]
  rgb = np.asarray(PIL.Image.fromarray(scenes[0]).resize((150, 90)))            # [90, 150, 3]
  gray = np.asarray(PIL.Image.fromarray(scenes[1]).convert('L').resize((41, 77)))  # [77, 41]
  alpha = np.random.default_rng(0).integers(0, 256, scenes[2].shape[:2], dtype=np.uint8)
  return [rgb, gray, gray[..., None], np.dstack([scenes[2], alpha]),
          PIL.Image.fromarray(scenes[0]), PIL.Image.fromarray(scenes[0]).convert('P'),
          PIL.Image.fromarray(scenes[1]).convert('CMYK')]


def test_in_memory_images_are_preprocessed_as_the_same_pixels_in_a_file(tmp_path):
  spec = pipeline.ImageSpec(64, 72)
  items = _in_memory_images()
  # The reference: the same pixels written by PIL as files, each file's bytes through
  # evaluation's transform.
  encoded = [_png_file(str(tmp_path / f'{i}.img'), item) for i, item in enumerate(items)]
  loaded = input_images.load_images(items, spec)
  np.testing.assert_array_equal(loaded.images, _eval_inputs(encoded, spec))
  sizes = [np.asarray(item).shape[:2] if isinstance(item, np.ndarray) else item.size[::-1]
           for item in items]
  np.testing.assert_array_equal(loaded.original_hw, sizes)
  np.testing.assert_array_equal(loaded.span_hw, sizes)
  assert loaded.names == [f'images[{i}]' for i in range(len(items))]
  # A small JPEG's decoded pixels equal the file; a JPEG over twice resize_size is decoded
  # at a reduced scale from the file (PIL's draft), so only its path gives that input.
  scene = next(demo.generate_split('test', 1))[0]
  for side, same in [(128, True), (600, False)]:
    path = str(tmp_path / f'{side}.jpg')
    PIL.Image.fromarray(scene).resize((side, side)).save(path, quality=90)
    with PIL.Image.open(path) as img:
      pixels = np.asarray(img.convert('RGB'))
    from_file = _eval_inputs([open(path, 'rb').read()], spec)
    from_pixels = input_images.load_images([pixels], spec).images
    assert np.array_equal(from_pixels, from_file) == same, side
    np.testing.assert_array_equal(input_images.load_images([path], spec).images, from_file)


def test_predict_and_draw_pil_images_and_arrays(trained_run, tmp_path):
  workdir, result = trained_run
  run = _at_size(inference.load_run(workdir), *SIZES[1])
  items = _in_memory_images()[:5]
  pred = run.predict_images(items, top_k=3)
  spec = pipeline.ImageSpec(*SIZES[1])
  paths = [str(tmp_path / f'{i}.png') for i in range(len(items))]
  inputs = _eval_inputs([_png_file(p, item) for p, item in zip(paths, items)], spec)
  out = _apply(run.model, result['state'], inputs)
  probs = _softmax(out['logits'].astype(np.float64))
  np.testing.assert_array_equal(pred.inputs, inputs)
  np.testing.assert_allclose(pred.probs, probs, rtol=1e-5, atol=1e-7)
  top = np.argsort(-probs, axis=1, kind='stable')[:, :3]
  np.testing.assert_array_equal(pred.top_k, top)
  assert pred.top_k_names == [[demo.class_names()[c] for c in row] for row in top]
  np.testing.assert_array_equal(pred.boxes_input, out['boxes'])
  np.testing.assert_array_equal(pred.box_valid, out['box_valid'])
  for i, item in enumerate(items):
    size = np.asarray(item).shape[:2] if isinstance(item, np.ndarray) else item.size[::-1]
    np.testing.assert_array_equal(pred.original_hw[i], size)
    np.testing.assert_allclose(pred.boxes_original[i],
                               _original_xyxy(out['boxes'][i], spec, size, size), atol=1e-9)
  # The figures are those the command line draws for the same pixels in files.
  figures = run.draw_images(items)
  written = inference.visualize_files(run, paths, str(tmp_path / 'viz'))
  assert len(figures) == len(written) == len(items)
  for figure, path in zip(figures, written):
    with PIL.Image.open(path) as drawn:
      np.testing.assert_array_equal(np.asarray(figure), np.asarray(drawn.convert('RGB')))
  # On the user's own image: the top-1 box's top edge is red at the box's pixels.
  picture = np.asarray(drawing.draw_regions_on_original(items[0], pred.boxes_original[0], 1))
  x0, y0, x1, y1 = pred.boxes_original[0, 0]
  red = np.array(PIL.ImageColor.getrgb(drawing.REGION_COLOURS[0]))
  columns = np.arange(int(np.floor(x0)), int(np.ceil(x1)))
  np.testing.assert_array_equal(picture[int(np.floor(y0)), columns],
                                np.tile(red, (len(columns), 1)))


def test_demo_glyph_boxes_hold_the_class_pattern():
  ink = np.array([20, 20, 30])
  for (img, label, _), (x0, y0, x1, y1) in zip(demo.generate_split('test', 12),
                                              demo.glyph_boxes('test', 12)):
    inner = img[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]   # Inside the border.
    cells = np.abs(inner.astype(int) - ink).sum(-1) < 5
    cell = demo.GLYPH_CELL
    np.testing.assert_array_equal(cells[cell // 2::cell, cell // 2::cell],
                                  demo.PATTERNS[label])


@pytest.mark.parametrize('size', SIZES)
def test_localization_on_the_demo(trained_run, size):
  workdir, result = trained_run
  run = _at_size(inference.load_run(workdir), *size)
  found = localization.localization(run)
  # The reference: the model's own boxes for each test image (generation order) against
  # that image's glyph, moved onto the eval input: resize to resize_size, centred crop.
  images = [img for img, _, _ in demo.generate_split('test', NUM_TEST)]
  image_size, resize_size = size
  inputs = _eval_inputs(map(_png, images), pipeline.ImageSpec(image_size, resize_size))
  boxes = _apply(run.model, result['state'], inputs)['boxes']
  scale, off = resize_size / demo.IMAGE_SIZE, (resize_size - image_size) // 2
  glyphs = [(y0 * scale - off, x0 * scale - off, y1 * scale - off, x1 * scale - off)
            for x0, y0, x1, y1 in demo.glyph_boxes('test', NUM_TEST)]
  hits = np.array([[_holds(b, g) for b in image_boxes] for image_boxes, g in zip(boxes, glyphs)])
  top_boxes = collections.Counter(tuple(image_boxes[0]) for image_boxes in boxes)
  hybrid = run.config.model.regions.cat_num  # The boxes FDL's prediction uses.
  candidates = localization.candidate_boxes(run.config)
  want = {**{f'rank_{r}': hits[:, r].mean() for r in range(hits.shape[1])},
          'top1': hits[:, 0].mean(), 'any_top': hits[:, :hybrid].any(1).mean(),
          'any': hits.any(1).mean(), 'same_top': max(top_boxes.values()) / NUM_TEST,
          'distinct_top': len(top_boxes), 'count': NUM_TEST,
          'ceiling': np.mean([any(_holds(c, g) for c in candidates) for g in glyphs])}
  assert sorted(found) == sorted(want)
  for key, value in want.items():
    assert found[key] == pytest.approx(value), key
  # The model picks its boxes among the candidates that the ceiling counts.
  assert all(any(np.array_equal(b, c) for c in candidates) for b in boxes.reshape(-1, 4))


def test_best_and_latest_restore_their_own_checkpoints(trained_run, tmp_path):
  """With a better (here: altered) state saved under best/ at a later step, 'best'
  restores it and 'latest' the last training checkpoint."""
  import shutil  # pylint: disable=g-import-not-at-top
  from fgjax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir, result = trained_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  altered = result['state'].replace(
      step=np.int32(100), params=jax.tree.map(lambda p: p + 1.0, result['state'].params))
  ckpt = checkpoint.Checkpointer(copy, keep=2)
  ckpt.save_best(100, altered, accuracy=1.0)
  ckpt.wait()
  ckpt.close()
  best, latest = inference.load_run(copy, 'best'), inference.load_run(copy, 'latest')
  assert (int(best.state.step), int(latest.state.step)) == (100, int(result['state'].step))
  first = lambda state: np.asarray(jax.tree.leaves(state.params)[0])
  np.testing.assert_array_equal(first(best.state), first(altered))
  np.testing.assert_array_equal(first(latest.state), first(result['state']))


def test_region_model_starts_from_another_runs_backbone(trained_run, tmp_path):
  from fgjax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir, _ = trained_run
  source = inference.load_run(workdir, 'latest')           # An fdl run.
  config = inference.load_config(workdir)
  config.unlock()
  config.model.name = 'nts'
  config.model.pretrained_path = workdir
  config.lock()
  model, _, tx = train.build_model_and_optimizer(config, 10, steps_per_epoch=1)
  fresh = ts.create_train_state(model, tx, jax.random.key(5), config.data.image_size)
  state = train._initial_state(config, checkpoint.Checkpointer(str(tmp_path), 1), fresh, None)
  for got, want in zip(jax.tree.leaves(state.params['backbone']),
                       jax.tree.leaves(source.state.params['backbone'])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(state.batch_stats['backbone']),
                       jax.tree.leaves(source.state.batch_stats['backbone'])):
    np.testing.assert_array_equal(got, want)   # Both runs keep image and part statistics.
  for got, want in zip(jax.tree.leaves(state.params['navigator']),
                       jax.tree.leaves(fresh.params['navigator'])):
    np.testing.assert_array_equal(got, want)
  config.unlock()
  config.model.pretrained_path = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='pretrained_path=.*missing'):
    train._initial_state(config, checkpoint.Checkpointer(str(tmp_path / 'w'), 1), fresh, None)


def test_localizing_a_model_without_boxes_is_a_clear_error(trained_run, monkeypatch):
  """A region method with its regions switched off (fdl.image_level_only, scrim.use_fpl=False)
  predicts no boxes: localization says so (compare then reports accuracy only)."""
  run = inference.load_run(trained_run[0], 'best')
  monkeypatch.setattr(inference.Run, 'predict', lambda self, images: (None, None))
  with pytest.raises(localization.NoBoxesError, match='returns no boxes'):
    localization.localization(run)
