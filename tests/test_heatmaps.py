"""Heat maps of what each method ranks regions by, and the figures that show them, against
per-pixel loops in float64 and the models applied directly."""

import functools

import jax
import matplotlib
import numpy as np
import PIL.Image
import PIL.ImageColor
import pytest

from configs import demo as demo_config
from fgjax import drawing
from fgjax import heatmaps
from fgjax import inference
from fgjax import train
from fgjax import train_step as ts
from fgjax.data import demo
from fgjax.models import regions
from fgjax.ops import cam_attention
from test_inference import _outline_mask

SIZE = (64, 72)  # The demo's input: a 2 x 2 stage4 map, 39 anchors with gaps between them.
METHODS = ['resnet', 'fdl', 'nts', 'ssanet', 'scrim']
# (method, input side): every method at the run's 64 px; fdl and nts also fed 80 px inputs
# (the same weights: the models are convolutional), where the 3 x 3 map's cells are not
# 80 / 3 px wide (FDL reads them at the backbone's stride, 32) and the peak is off the
# diagonal.
CASES = [(m, 64) for m in METHODS] + [('fdl', 80), ('nts', 80)]


def _brute_anchor_map(scores, boxes, height, width):
  """Per pixel: sum of score x overlap area over the anchors, over the sum of overlaps."""
  out = np.full((height, width), np.nan)
  for p in range(height):
    for q in range(width):
      weighted = covered = 0.0
      for s, (y0, x0, y1, x1) in zip(scores, boxes):
        area = (max(0.0, min(y1, p + 1) - max(y0, p)) * max(0.0, min(x1, q + 1) - max(x0, q)))
        weighted += s * area
        covered += area
      if covered > 0:
        out[p, q] = weighted / covered
  return out


def _cell_edges(cells, extent, stride, alignment):
  """Cell u's [start, end) along an axis, from cam_attention's docstring: 'top_left'
  [u s, (u + 1) s); 'receptive_field' centred on c_u = u s + 1/2, the boundaries midway
  between centres; the first cell starts at 0 and the last ends at the border."""
  s = extent / cells if stride is None else stride
  if alignment == 'receptive_field':
    bounds = [u * s + 0.5 + s / 2 for u in range(cells - 1)]
  else:
    bounds = [(u + 1) * s for u in range(cells - 1)]
  edges = [0.0] + [min(max(b, 0.0), extent) for b in bounds] + [float(extent)]
  return list(zip(edges[:-1], edges[1:]))


def _brute_cell_map(cell_map, height, width, stride, alignment):
  rows = _cell_edges(cell_map.shape[0], height, stride, alignment)
  cols = _cell_edges(cell_map.shape[1], width, stride, alignment)
  out = np.zeros((height, width))
  for p in range(height):
    for q in range(width):
      total = area_sum = 0.0
      for u, (r0, r1) in enumerate(rows):
        for v, (c0, c1) in enumerate(cols):
          area = max(0.0, min(r1, p + 1) - max(r0, p)) * max(0.0, min(c1, q + 1) - max(c0, q))
          total += area * cell_map[u, v]
          area_sum += area
      out[p, q] = total / area_sum
  return out


def _min_max(heat):
  finite = np.isfinite(heat)
  lo, hi = heat[finite].min(), heat[finite].max()
  return (heat - lo) / (hi - lo)


def test_anchor_score_map_is_the_mean_score_of_the_anchors_over_each_pixel():
  rng = np.random.default_rng(0)
  height, width = 23, 31
  y0, x0 = rng.uniform(-6, 20, 40), rng.uniform(-6, 26, 40)
  boxes = np.stack([y0, x0, y0 + rng.uniform(0.3, 9, 40), x0 + rng.uniform(0.3, 9, 40)], 1)
  boxes[:5] = np.round(boxes[:5])     # Integral ones, as the anchors, too.
  boxes[5] = [-9, -9, -2, -1]         # Wholly outside: no pixel.
  scores = rng.normal(0, 3, 40)
  got = heatmaps.anchor_score_map(scores, boxes, (height, width))
  want = _brute_anchor_map(scores, boxes, height, width)
  assert np.isnan(want).any() and np.isfinite(want).any()      # Gaps, as at 64 px.
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-12)
  # Equal scores: flat, whatever the layout of the boxes.
  flat = heatmaps.anchor_score_map(np.full(40, 2.5), boxes, (height, width))
  np.testing.assert_allclose(flat[np.isfinite(flat)], 2.5)
  with pytest.raises(ValueError, match='39 scores for 40 anchors'):
    heatmaps.anchor_score_map(scores[:39], boxes, (height, width))


@pytest.mark.parametrize('alignment,stride,shape,image_hw', [
    ('receptive_field', 32, (3, 3), (80, 70)),    # FDL's reading at a non-multiple of 32.
    ('receptive_field', 32, (2, 2), (64, 64)),
    ('top_left', None, (3, 4), (50, 45)),          # Fractional cells, H / h.
])
def test_cell_map_to_pixels_is_the_area_weighted_mean_of_the_cells(alignment, stride, shape,
                                                                   image_hw):
  cell_map = np.random.default_rng(1).normal(size=shape)
  got = heatmaps.cell_map_to_pixels(cell_map, image_hw, stride, alignment)
  np.testing.assert_allclose(got, _brute_cell_map(cell_map, *image_hw, stride, alignment),
                             rtol=1e-12, atol=1e-12)
  # The map's mean over a box inside the image is the box's score as FDL ranks boxes.
  boxes = np.array([[3, 5, 40, 33], [10, 0, 11, 45], [0, 0, image_hw[0], image_hw[1]]],
                   np.float32)
  scores = cam_attention.box_mean_scores(cell_map[None].astype(np.float32), boxes, image_hw,
                                         alignment=alignment, padding='inside', stride=stride)
  means = [got[int(y0):int(y1), int(x0):int(x1)].mean() for y0, x0, y1, x1 in boxes]
  np.testing.assert_allclose(np.asarray(scores)[0], means, rtol=1e-5, atol=1e-6)


def _tiny_run(method, **overrides):
  """An initialised (untrained) run of `method` on the demo's settings at 64 px."""
  config = demo_config.get_config(method)
  config.data.image_size, config.data.resize_size = SIZE
  for key, value in overrides.items():
    config.model.regions[key] = value
  config.lock()
  model, _, tx = train.build_model_and_optimizer(config, demo.NUM_CLASSES, steps_per_epoch=1)
  state = ts.create_train_state(model, tx, jax.random.key(3), SIZE[0])
  return inference.Run(config, model, state, demo.class_names(), 'initialised')


@functools.lru_cache(maxsize=None)
def _run_and_inputs(method, guide='none', side=SIZE[0]):
  run = _tiny_run(method, **({'navigator_guide': guide} if guide != 'none' else {}))
  inputs = np.stack([np.asarray(PIL.Image.fromarray(img).resize((side, side),
                                                                PIL.Image.BILINEAR))
                     for img, _, _ in demo.generate_split('test', 2)])
  return run, inputs


def _direct(run, inputs):
  """The reference: the model applied directly, with the scores it ranks by collected."""
  return jax.device_get(run.model.apply(
      {'params': run.state.params, 'batch_stats': run.state.batch_stats},
      ts.normalise(inputs), train=False, mutable=[regions.RANKING_SCORES]))


def _reference_maps(run, outputs, sown, i, side):
  """(title start, normalised map [S, S]) per panel the method should have, by brute force."""
  anchors = regions.anchors_and_sizes((side, side), 224, 224, 448, 'feature')[0]
  ranked = sown.get(regions.RANKING_SCORES, {})
  name = run.config.model.name
  if name == 'fdl':
    return [('FDL attention', _min_max(_brute_cell_map(
        np.asarray(outputs['attention'][i], np.float64), side, side, 32,
        'receptive_field')))]
  keys = {'nts': ['selection_scores'], 'ssanet': ['selection_scores'],
          'scrim': ['fpl_stage4_selection_scores', 'fpl_stage3_selection_scores']}.get(name, [])
  return [(key.split('_selection')[0].replace('fpl_', '') if key != 'selection_scores'
           else 'navigator',
           _min_max(_brute_anchor_map(np.asarray(ranked[key][0][i], np.float64), anchors,
                                      side, side)))
          for key in keys]


@pytest.mark.parametrize('method,side', CASES)
def test_one_heat_map_per_ranking_and_bars_for_ssanet(method, side):
  run, inputs = _run_and_inputs(method, side=side)
  out = run.predict_outputs(inputs, with_maps=True)
  outputs, sown = _direct(run, inputs)
  for i in range(len(inputs)):
    maps = {k: v[i] for k, v in out['maps'].items()}
    panels = heatmaps.ranking_heatmaps(run.model, maps, inputs.shape[1:3])
    want = _reference_maps(run, outputs, sown, i, side)
    assert len(panels) == len(want) == {'resnet': 0, 'scrim': 2}.get(method, 1)
    for (title, heat), (start, reference) in zip(panels, want):
      assert title.startswith(start), (title, start)
      np.testing.assert_array_equal(np.isnan(heat), np.isnan(reference))
      finite = np.isfinite(reference)
      np.testing.assert_allclose(heat[finite], reference[finite], atol=1e-5)
    groups = heatmaps.bar_groups(run.model, maps)
    if method != 'ssanet':
      assert groups == []
      continue
    assert [g[0] for g in groups] == ['orientation gate', 'scale shift (levels)']
    assert groups[0][1] == ['0 deg', '45 deg', '90 deg', '135 deg']
    for (_, labels, weights), key in zip(groups, ['orientation_weights', 'shift_probs']):
      np.testing.assert_allclose(weights, outputs[key][i], rtol=1e-5)
      assert len(labels) == len(weights) and weights.sum() == pytest.approx(1.0, abs=1e-5)
  # The notebook API's predictions: regions in both coordinates for region models only.
  pred = run.predict_images(list(inputs), top_k=2)
  row = inference.prediction_row(pred, 0)
  if method == 'resnet':
    assert pred.boxes_input is pred.boxes_original is pred.box_valid is None
    assert sorted(row) == ['file', 'input_size', 'original_size_hw', 'top_k']
  else:
    assert pred.boxes_original.shape == pred.boxes_input.shape == out['boxes'].shape
    assert len(row['regions_original_xyxy']) == pred.boxes_input.shape[1]
    np.testing.assert_array_equal(pred.box_valid, out['box_valid'])
    assert row['regions_valid'] == [bool(v) for v in out['box_valid'][0]]


def test_the_navigator_map_is_what_nms_ranked_by():
  """With the guide on at evaluation the map is navigator + prior, not the navigator alone:
  the first box NMS keeps is the anchor scoring highest on it."""
  run, inputs = _run_and_inputs('nts', 'always')
  out = run.predict_outputs(inputs, with_maps=True)
  outputs, sown = _direct(run, inputs)
  selection = np.asarray(sown[regions.RANKING_SCORES]['selection_scores'][0])
  assert not np.allclose(selection, outputs['anchor_scores'])
  np.testing.assert_allclose(out['maps']['selection_scores'], selection, rtol=1e-5, atol=1e-5)
  anchors = regions.anchors_and_sizes(SIZE[:1] * 2, 224, 224, 448, 'feature')[0]
  for i in range(len(inputs)):
    np.testing.assert_array_equal(out['boxes'][i, 0], anchors[np.argmax(selection[i])])
  (title, heat), = heatmaps.ranking_heatmaps(run.model, {k: v[0] for k, v in out['maps'].items()},
                                             SIZE[:1] * 2)
  assert title == 'navigator + guide prior'
  want = _min_max(_brute_anchor_map(selection[0], anchors, *SIZE[:1] * 2))
  navigator_alone = _min_max(_brute_anchor_map(outputs['anchor_scores'][0], anchors,
                                               *SIZE[:1] * 2))
  finite = np.isfinite(want)
  np.testing.assert_allclose(heat[finite], want[finite], atol=1e-5)
  assert np.abs(heat[finite] - navigator_alone[finite]).max() > 0.05


def _decode_heat(panel, image, alpha=0.6):
  """Heat values in [0, 1] back from an overlay: the colour (panel - (1 - alpha) image) /
  alpha matched to the nearest of matplotlib's 256 'inferno' colours."""
  colour = (panel.astype(np.float64) - (1 - alpha) * image.astype(np.float64)) / alpha
  table = matplotlib.colormaps['inferno'](np.linspace(0, 1, 256))[:, :3] * 255
  distance = ((colour[..., None, :] - table) ** 2).sum(-1)
  return np.argmin(distance, axis=-1) / 255.0


@pytest.mark.parametrize('method,side', CASES)
def test_figure_shows_the_boxes_and_the_hottest_pixel_where_the_map_peaks(method, side):
  run, inputs = _run_and_inputs(method, side=side)
  figures = inference.draw_figures(run, inputs)
  outputs, sown = _direct(run, inputs)
  scale = 448 // side  # Each input pixel a block: 7 x 7 at 64 px, 5 x 5 at 80.
  picture_side = side * scale
  num_panels = {'resnet': 1, 'ssanet': 3, 'scrim': 3}.get(method, 2)
  top = drawing.CAPTION_HEIGHT + drawing.TITLE_HEIGHT
  for i, (figure, image) in enumerate(zip(figures, inputs)):
    assert figure.size == (num_panels * picture_side + (num_panels - 1) * drawing.PANEL_GAP,
                           top + picture_side)
    pixels = np.asarray(figure)
    panel = lambda k: pixels[top:, k * (picture_side + drawing.PANEL_GAP):][:, :picture_side]
    upscaled = np.repeat(np.repeat(image, scale, 0), scale, 1)
    # Panel 0: each box's outline in its colour, where no higher-ranked outline lies on it
    # (the top-1 is drawn on top); the image elsewhere.
    boxes = outputs.get('boxes', np.zeros((len(inputs), 0, 4)))[i]
    drawn = np.zeros((picture_side, picture_side), bool)
    for k, box in enumerate(boxes):
      outline = _outline_mask(box[None], side, scale) & ~drawn
      colour = PIL.ImageColor.getrgb(drawing.REGION_COLOURS[k % len(drawing.REGION_COLOURS)])
      np.testing.assert_array_equal(panel(0)[outline], np.tile(colour, (outline.sum(), 1)))
      drawn |= outline
    np.testing.assert_array_equal(panel(0)[~drawn], upscaled[~drawn])
    # Heat panels: decoded at the centre of each input pixel's block, the reference map,
    # hottest exactly where it is highest; uncovered pixels the image dimmed, uncoloured.
    for k, (_, reference) in enumerate(_reference_maps(run, outputs, sown, i, side), start=1):
      uncovered = np.repeat(np.repeat(np.isnan(reference), scale, 0), scale, 1)
      np.testing.assert_array_equal(panel(k)[uncovered],
                                    np.round(0.4 * upscaled[uncovered]).astype(np.uint8))
      centre = scale // 2
      heat = _decode_heat(panel(k)[centre::scale, centre::scale], image)
      finite = np.isfinite(reference)
      # The whole map, to the colour table's resolution (measured: within 0.008).
      np.testing.assert_allclose(heat[finite], reference[finite], atol=0.02)
      hottest = np.unravel_index(np.argmax(np.where(finite, heat, -1)), heat.shape)
      assert reference[hottest] > 0.97, (method, k, reference[hottest])
      peak = np.unravel_index(np.argmax(np.where(finite, reference, -1)), reference.shape)
      assert heat[peak] > 0.97, (method, k, heat[peak])
