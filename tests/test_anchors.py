"""Anchors against NTS-Net's numbers and a float64 loop."""

import math

import numpy as np
import pytest

from fgjax.ops import anchors

RATIOS = (0.667, 1.0, 1.5)
SETTINGS = (  # (stride, size, scales), NTS-Net at 448.
    (32, 48, (2 ** (1 / 3), 2 ** (2 / 3))),
    (64, 96, (2 ** (1 / 3), 2 ** (2 / 3))),
    (128, 192, (1.0, 2 ** (1 / 3), 2 ** (2 / 3))),
)


def reference_boxes(height, width, size_scale=1.0, stride_scale=1.0):
  """Per level, scale, ratio, y, x: plain loops in float64."""
  out = []
  for base_stride, size, scales in SETTINGS:
    stride = base_stride * stride_scale
    cells_y = round(height / stride, 9)  # Rounded: 64 / (32 * 64 / 448) is 14, not 14.0001.
    cells_x = round(width / stride, 9)
    for scale in scales:
      for ratio in RATIOS:
        h = size * size_scale * scale / math.sqrt(ratio)
        w = size * size_scale * scale * math.sqrt(ratio)
        for y in range(math.ceil(cells_y)):
          for x in range(math.ceil(cells_x)):
            cy, cx = stride / 2 + y * stride, stride / 2 + x * stride
            out.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
  return np.array(out, np.float64)


def test_count_at_448_is_nts():
  assert anchors.grid_sizes(448) == [(14, 14), (7, 7), (4, 4)]
  assert anchors.num_anchors(448) == 14 * 14 * 6 + 7 * 7 * 6 + 4 * 4 * 9 == 1614
  assert anchors.anchor_boxes(448).shape == (1614, 4)


def test_hand_checked_boxes():
  boxes = anchors.anchor_boxes(448).astype(np.float64)
  s1, s2 = 2 ** (1 / 3), 2 ** (2 / 3)
  # First box: level 1, scale 2^(1/3), ratio 0.667, cell (0, 0), centre (16, 16).
  h, w = 48 * s1 / math.sqrt(0.667), 48 * s1 * math.sqrt(0.667)
  np.testing.assert_allclose(boxes[0], [16 - h / 2, 16 - w / 2, 16 + h / 2, 16 + w / 2],
                             atol=1e-4)
  # Level 1, scale index 1, ratio index 2 (channel 5), y = 3, x = 5.
  h, w = 48 * s2 / math.sqrt(1.5), 48 * s2 * math.sqrt(1.5)
  cy, cx = 16 + 3 * 32, 16 + 5 * 32
  np.testing.assert_allclose(boxes[5 * 196 + 3 * 14 + 5],
                             [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], atol=1e-4)
  # Level 3 starts at 1176 + 294 = 1470: scale 1, ratio 1 (channel 1), cell (0, 0) is a
  # 192-px square centred at (64, 64).
  np.testing.assert_allclose(boxes[1470 + 16], [-32, -32, 160, 160], atol=1e-4)
  # The last box: level 3, scale 2^(2/3), ratio 1.5, cell (3, 3), centre (448, 448).
  h, w = 192 * s2 / math.sqrt(1.5), 192 * s2 * math.sqrt(1.5)
  np.testing.assert_allclose(boxes[-1], [448 - h / 2, 448 - w / 2, 448 + h / 2, 448 + w / 2],
                             atol=1e-4)


@pytest.mark.parametrize('size', [448, 64, (96, 160), 100])
def test_all_boxes_match_loop(size):
  height, width = (size, size) if isinstance(size, int) else size
  got = anchors.anchor_boxes(size)
  want = reference_boxes(height, width, size_scale=min(height, width) / 448)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert got.shape[0] == anchors.num_anchors(size)


@pytest.mark.parametrize('size', [64, (96, 160), 100, 224, 600])
def test_scaled_grid_matches_loop(size):
  height, width = (size, size) if isinstance(size, int) else size
  scale = min(height, width) / 448
  got = anchors.anchor_boxes(size, grid='scaled')
  want = reference_boxes(height, width, size_scale=scale, stride_scale=scale)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert got.shape[0] == anchors.num_anchors(size, grid='scaled')
  if height == width:  # A square input gets NTS-Net's 448 layout, shrunk or stretched.
    assert anchors.num_anchors(size, grid='scaled') == 1614
    np.testing.assert_allclose(got, anchors.anchor_boxes(448) * scale, atol=1e-3, rtol=0)


def test_scaled_and_feature_grids_agree_at_448():
  np.testing.assert_array_equal(anchors.anchor_boxes(448, grid='scaled'),
                                anchors.anchor_boxes(448, grid='feature'))
  with pytest.raises(ValueError, match="'scaled', 'feature'"):
    anchors.grid_sizes(448, grid='fine')


def test_small_input_scales_sizes_not_strides():
  assert anchors.grid_sizes(64) == [(2, 2), (1, 1), (1, 1)]
  assert anchors.num_anchors(64) == 2 * 2 * 6 + 6 + 9 == 39
  big, small = anchors.anchor_boxes(448), anchors.anchor_boxes(64)
  side = lambda b: b[:, 2] - b[:, 0]
  np.testing.assert_allclose(side(small)[:6 * 4:4], side(big)[:6 * 196:196] / 7, rtol=1e-5)


def test_padding_shift_and_integer_boxes():
  base = anchors.anchor_boxes(448)
  np.testing.assert_allclose(anchors.anchor_boxes(448, shift=224), base + 224, atol=1e-4)
  ints = anchors.integer_padded_anchors(448, 224)
  np.testing.assert_array_equal(ints, np.floor(reference_boxes(448, 448) + 224))
  assert ints.min() >= 0 and ints.max() <= 448 + 2 * 224
  boxes, pad = anchors.region_anchors(448)
  assert pad == 224
  np.testing.assert_array_equal(boxes, ints - 224)
  assert anchors.scale_to_input(224, 448) == 224
  assert anchors.scale_to_input(224, 64) == 32
  assert anchors.scale_to_input(0, 64) == 0


def test_flatten_level_scores_matches_anchor_order():
  batch = 2
  maps_nchw, maps_nhwc = [], []
  offset = 0
  for (gh, gw), level in zip(anchors.grid_sizes(448), anchors.NTS_LEVELS):
    c = level.boxes_per_cell
    nchw = offset + np.arange(batch * c * gh * gw).reshape(batch, c, gh, gw) % (c * gh * gw)
    offset += c * gh * gw
    maps_nchw.append(nchw)
    maps_nhwc.append(np.transpose(nchw, (0, 2, 3, 1)))
  flat = np.asarray(anchors.flatten_level_scores(maps_nhwc))
  assert flat.shape == (batch, 1614)
  np.testing.assert_array_equal(flat[0], np.arange(1614))
  np.testing.assert_array_equal(
      flat, np.concatenate([m.reshape(batch, -1) for m in maps_nchw], axis=1))
  # The score that lands at anchor k belongs to that anchor's level, channel and cell:
  # level 1, channel 5, y = 3, x = 5 (see test_hand_checked_boxes).
  assert flat[0, 5 * 196 + 3 * 14 + 5] == maps_nhwc[0][0, 3, 5, 5]


def test_centre_offset_moves_only_its_level():
  """FDL's per-cell regions: centres at 0.5 + 32k (pixel 32k); NTS_LEVELS keep stride/2."""
  assert all(level.centre_offset is None for level in anchors.NTS_LEVELS)
  plain = anchors.AnchorLevel(stride=32, size=160, scales=(1.0,), aspect_ratios=(1.0,))
  moved = anchors.AnchorLevel(stride=32, size=160, scales=(1.0,), aspect_ratios=(1.0,),
                              centre_offset=0.5)
  for size in (448, (96, 160), 100):
    height, width = (size, size) if isinstance(size, int) else size
    cy, cx = np.meshgrid(0.5 + 32 * np.arange(math.ceil(height / 32)),
                         0.5 + 32 * np.arange(math.ceil(width / 32)), indexing='ij')
    half = 80 * min(height, width) / 448
    want = np.stack([cy - half, cx - half, cy + half, cx + half], -1).reshape(-1, 4)
    got = anchors.anchor_boxes(size, levels=(moved,))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(anchors.anchor_boxes(size, levels=(plain,)), want + 15.5,
                               atol=1e-4, rtol=0)
