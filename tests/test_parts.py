"""The parts benchmark: glyph patterns, stored detail boxes read back from the pixels,
the box -> model-input mapping, and the localization figures against plain loops."""

import io

import numpy as np
import PIL.Image
import pytest

from fgjax import localization
from fgjax.data import parts
from fgjax.data import pipeline
from fgjax.data import registry


@pytest.fixture(scope='module')
def parts_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds_parts'))
  registry.get_builder('parts', data_dir, builder_config='tiny').download_and_prepare()
  return data_dir


def _read_glyph(img, y0, x0, sy, sx, cell):
  """3x3 bool: is the centre of each glyph cell dark? Box corner (y0, x0) in img pixels,
  sy/sx image pixels per stored pixel."""
  border = max(1, cell // 2)
  out = np.zeros((3, 3), bool)
  for i in range(3):
    for j in range(3):
      y = int(y0 + (border + cell * (i + 0.5)) * sy)
      x = int(x0 + (border + cell * (j + 0.5)) * sx)
      out[i, j] = img[y, x].astype(int).sum() < 3 * 110
  return out


def test_patterns_are_mirror_symmetric_distinct_and_disjoint():
  bench = np.concatenate([parts.PATTERNS, parts.DECOYS])
  for group in (bench, parts.PRETRAIN_PATTERNS):
    for p in group:
      np.testing.assert_array_equal(p, p[:, ::-1])  # A flip keeps the class.
      assert 3 <= p.sum() <= 6
    for a in range(len(group)):
      for b in range(a):
        assert (group[a] != group[b]).sum() >= 2
  keys = {p.tobytes() for p in bench}
  assert not any(p.tobytes() in keys for p in parts.PRETRAIN_PATTERNS)


def test_stored_detail_boxes_enclose_the_class_glyph(parts_data_dir):
  builder = registry.get_builder('parts', parts_data_dir, builder_config='tiny')
  source = builder.as_data_source(split='test')
  assert len(source) == parts.SPLIT_SIZES['tiny']['test']
  for record in source:
    img = np.asarray(record['image'])
    height, width = img.shape[:2]
    assert parts.HEIGHTS[0] <= height <= parts.HEIGHTS[1]
    assert parts.WIDTHS[0] <= width <= parts.WIDTHS[1]
    ymin, xmin, ymax, xmax = record['detail_bbox']
    y0, x0 = round(ymin * height), round(xmin * width)
    y1, x1 = round(ymax * height), round(xmax * width)
    assert y1 - y0 == x1 - x0 == parts.glyph_side(parts.GLYPH_CELL)
    assert (y1 - y0) < min(height, width) / 8            # A small detail.
    paper = img[y0:y1, x0:x1].astype(int)
    # The border rows/columns are paper (light), and the cells read the class pattern.
    assert paper[0].mean() > 200 and paper[-1].mean() > 200
    assert paper[:, 0].mean() > 200 and paper[:, -1].mean() > 200
    np.testing.assert_array_equal(_read_glyph(img, y0, x0, 1, 1, parts.GLYPH_CELL),
                                  parts.PATTERNS[record['label']])
    oy0, ox0, oy1, ox1 = record['bbox']              # The detail lies on the object.
    assert oy0 <= ymin and ox0 <= xmin and ymax <= oy1 and xmax <= ox1


def test_detail_boxes_map_onto_the_eval_input():
  spec = pipeline.ImageSpec(image_size=448, resize_size=480)
  transform = pipeline.eval_transform(spec)
  for img, label, _, (x0, y0, x1, y1) in parts.generate_split('tiny', 'test', 6):
    height, width = img.shape[:2]
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format='PNG')
    seen = transform({'image': buf.getvalue(), 'label': 0, 'crop_bottom': 0})['image']
    box = localization.to_model_input([[x0 / width, y0 / height, x1 / width, y1 / height]],
                                      spec)[0]
    sy, sx = spec.resize_size / height, spec.resize_size / width
    np.testing.assert_allclose(box[2] - box[0], (y1 - y0) * sy)
    np.testing.assert_allclose(box[3] - box[1], (x1 - x0) * sx)
    np.testing.assert_array_equal(_read_glyph(seen, box[0], box[1], sy, sx, parts.GLYPH_CELL),
                                  parts.PATTERNS[label])


def test_pretraining_glyphs_come_at_many_scales():
  sides = {int(d[2] - d[0]) for *_, d in parts.generate_split('pretrain', 'test', 40)}
  assert len(sides) >= 4
  assert min(sides) >= parts.glyph_side(parts.PRETRAIN_CELLS[0])
  assert max(sides) <= parts.glyph_side(parts.PRETRAIN_CELLS[1])


def test_detail_hits_matches_a_loop():
  rng = np.random.default_rng(0)
  details = rng.uniform(0, 50, size=(20, 2))
  details = np.concatenate([details, details + rng.uniform(2, 8, size=(20, 2))], 1)
  boxes = rng.uniform(0, 50, size=(20, 5, 2))
  boxes = np.concatenate([boxes, boxes + rng.uniform(1, 30, size=(20, 5, 2))], -1)
  boxes[0, 0] = details[0]  # Exactly the detail: found.
  # Exactly 90 % of the detail inside (integer sides: exact in floats): found; 80 %: not.
  details[1], boxes[1, 0], boxes[1, 1] = [0, 0, 10, 10], [0, 0, 9, 20], [2, -5, 20, 20]
  got = localization.detail_hits(boxes, details, inside=0.9)
  for n in range(20):
    gy0, gx0, gy1, gx1 = details[n]
    for r in range(5):
      by0, bx0, by1, bx1 = boxes[n, r]
      overlap = max(0.0, min(gy1, by1) - max(gy0, by0)) * max(0.0, min(gx1, bx1) - max(gx0, bx0))
      assert got[n, r] == (overlap >= 0.9 * (gy1 - gy0) * (gx1 - gx0)), (n, r)
  assert got[0, 0] and got[1, 0] and not got[1, 1] and 0 < got.mean() < 1


def test_box_metrics_on_hand_made_boxes():
  details = np.array([[10, 10, 14, 14], [50, 50, 54, 54], [0, 0, 4, 4], [30, 30, 34, 34.]])
  a, b, c = [0, 0, 20, 20], [40, 40, 60, 60], [25, 25, 40, 40]
  boxes = np.array([[a, b],     # top box finds it
                    [a, b],     # second box finds it
                    [a, c],     # the detail at (0, 0)-(4, 4) is in a: found at rank 0
                    [b, a]],    # found by neither (30..34 lies outside a and b)
                   np.float64)
  got = localization.box_metrics(boxes, details, num_top=1)
  assert got['top1'] == got['rank_0'] == 2 / 4
  assert got['rank_1'] == 1 / 4
  assert got['any_top'] == 2 / 4 and got['any'] == 3 / 4
  assert got['same_top'] == 3 / 4 and got['distinct_top'] == 2 and got['count'] == 4
