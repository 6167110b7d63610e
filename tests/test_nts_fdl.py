"""NTS-Net and FDL on resnet_tiny at 64 x 64: shapes, gradient flow, ablations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models import fdl
from fgjax.models import nts
from fgjax.models import regions
from fgjax.models import resnet
from fgjax.ops import anchors
from fgjax.ops import cam_attention

NUM_CLASSES = 5
IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
LABELS = jnp.array([1, 3])


def init(model):
  return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), IMAGES)


def setup(model):
  """(model, variables, jitted eval apply): one compilation per model."""
  return model, init(model), jax.jit(functools.partial(model.apply, train=False))


@pytest.fixture(scope='module')
def nts_setup():
  return setup(nts.NTSNet(num_classes=NUM_CLASSES, backbone='resnet_tiny'))


def test_nts_shapes_and_deterministic_eval(nts_setup):
  _, variables, eval_fn = nts_setup
  assert set(variables['params']) == {'backbone', 'navigator', 'fc', 'concat_fc', 'part_fc'}
  out = eval_fn(variables, IMAGES)
  assert out['logits'].shape == out['global_logits'].shape == (2, NUM_CLASSES)
  assert out['part_logits'].shape == (2, 6, NUM_CLASSES)
  assert out['part_scores'].shape == out['box_valid'].shape == (2, 6)
  assert out['boxes'].shape == (2, 6, 4)
  assert out['anchor_scores'].shape == (2, 39)  # 2*2*6 + 1*1*6 + 1*1*9 anchors at 64.
  boxes = np.asarray(out['boxes'])
  np.testing.assert_array_equal(boxes, np.floor(boxes))  # NTS-Net's integer boxes.
  assert boxes.min() >= -32 and boxes.max() <= 64 + 32   # Within the scaled padding.
  # Parts come in NMS order: the best anchor first, scores non-increasing.
  scores = np.asarray(out['part_scores'])
  np.testing.assert_array_equal(scores[:, 0], np.asarray(out['anchor_scores']).max(axis=1))
  assert np.all(np.diff(scores, axis=1) <= 0)
  again = eval_fn(variables, IMAGES)
  for key in out:
    np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(again[key]))
  losses = nts.NTSNet.per_example_losses(out, LABELS)
  assert set(losses) == {'loss', 'loss_global', 'loss_rank', 'loss_concat', 'loss_part'}
  for value in losses.values():
    assert value.shape == (2,) and np.all(np.isfinite(np.asarray(value)))


def test_nts_parts_are_the_nms_picks_with_their_own_scores(nts_setup):
  """Boxes = greedy NMS (a plain loop) on the navigator's scores; 'part_scores' are the
  scores of exactly those anchors (not the top-k before NMS)."""
  from test_nms import greedy_loop  # pylint: disable=g-import-not-at-top
  _, variables, eval_fn = nts_setup
  out = eval_fn(variables, IMAGES)
  anchors = np.asarray(regions.anchors_and_sizes((64, 64), 224, 224, 448, 'feature')[0])
  scores = np.asarray(out['anchor_scores'])
  for b in range(2):
    picks, valid = greedy_loop(anchors, list(scores[b]), 6, 0.25)
    np.testing.assert_array_equal(np.asarray(out['boxes'][b]), anchors[picks])
    np.testing.assert_array_equal(np.asarray(out['part_scores'][b]), scores[b, picks])
    np.testing.assert_array_equal(np.asarray(out['box_valid'][b]), valid)
  # NMS matters here: the six best anchors are not the six kept.
  assert any(set(np.argsort(-scores[b])[:6]) != set(greedy_loop(anchors, list(scores[b]), 6,
                                                                0.25)[0]) for b in range(2))


def test_nts_navigator_learns_only_from_ranking(nts_setup):
  model, variables, _ = nts_setup

  @jax.jit
  def grads(params, ce_weight, rank_weight):
    def loss_fn(p):
      out, _ = model.apply({'params': p, 'batch_stats': variables['batch_stats']}, IMAGES,
                           LABELS, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.PRNGKey(2)})
      losses = nts.NTSNet.per_example_losses(out, LABELS)
      ce = losses['loss_global'] + losses['loss_concat'] + losses['loss_part']
      return jnp.mean(ce_weight * ce + rank_weight * losses['loss_rank'])
    return jax.grad(loss_fn)(params)

  total = lambda tree: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(tree))
  from_ce = grads(variables['params'], 1.0, 0.0)
  from_rank = grads(variables['params'], 0.0, 1.0)
  assert total(from_ce['navigator']) == 0.0
  assert total(from_ce['backbone']) > 0 and total(from_ce['concat_fc']) > 0
  assert total(from_rank['navigator']) > 0
  # The navigator's input is gradient-stopped: the ranking loss reaches nothing else.
  for name in ('backbone', 'fc', 'concat_fc', 'part_fc'):
    assert total(from_rank[name]) == 0.0, name


def test_nts_scaled_grid_has_nts_layout_at_64():
  model = nts.NTSNet(num_classes=NUM_CLASSES, backbone='resnet_tiny', anchor_grid='scaled')
  out = jax.jit(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0])(IMAGES)
  assert out['anchor_scores'].shape == (2, 1614)  # The 2 x 2 map resized to 14 x 14.
  boxes = np.asarray(out['boxes'])
  assert boxes.min() >= -32 and boxes.max() <= 64 + 32


def test_nts_at_448_has_nts_numbers():
  model = nts.NTSNet(num_classes=NUM_CLASSES, backbone='resnet_tiny')
  images = jax.ShapeDtypeStruct((1, 448, 448, 3), jnp.float32)
  out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x), images)
  assert out['anchor_scores'].shape == (1, 1614)
  assert out['part_logits'].shape == (1, 6, NUM_CLASSES)


@pytest.fixture(scope='module')
def fdl_setup():
  return setup(fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny'))


def test_fdl_shapes_and_deterministic_eval(fdl_setup):
  _, variables, eval_fn = fdl_setup
  assert set(variables['params']) == {'backbone', 'image_fc', 'region_fc', 'hybrid_fc'}
  out = eval_fn(variables, IMAGES)
  assert out['logits'].shape == out['image_logits'].shape == (2, NUM_CLASSES)
  assert out['region_logits'].shape == (2, 6, NUM_CLASSES)
  assert out['boxes'].shape == (2, 6, 4) and out['attention'].shape == (2, 2, 2)
  again = eval_fn(variables, IMAGES)
  for key in out:
    np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(again[key]))
  losses = fdl.FDL.per_example_losses(out, LABELS)
  assert set(losses) == {'loss', 'loss_image', 'loss_region', 'loss_hybrid'}
  np.testing.assert_allclose(
      np.asarray(losses['loss']),
      np.asarray(losses['loss_image'] + losses['loss_region'] + losses['loss_hybrid']),
      rtol=1e-6)


def test_fdl_image_level_only_is_plain_classifier(fdl_setup):
  _, full_variables, full_eval_fn = fdl_setup
  model = fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny', image_level_only=True)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(1),
                          IMAGES)
  assert set(shapes['params']) == {'backbone', 'image_fc'}
  # The same parameters as the full model's image branch; its image statistics are
  # domain 0 of the full model's per-domain (images, regions) running averages.
  variables = {'params': {k: full_variables['params'][k] for k in ('backbone', 'image_fc')},
               'batch_stats': jax.tree.map(lambda v: v[0], full_variables['batch_stats'])}
  out = jax.jit(functools.partial(model.apply, train=False))(variables, IMAGES)
  assert set(out) == {'logits', 'image_logits'}
  features = jax.jit(resnet.get_backbone('resnet_tiny').apply, static_argnums=2)(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, IMAGES, False)
  head = variables['params']['image_fc']
  plain = features['pooled'] @ head['kernel'] + head['bias']
  np.testing.assert_allclose(np.asarray(out['logits']), np.asarray(plain), atol=1e-5)
  full = full_eval_fn(full_variables, IMAGES)
  np.testing.assert_allclose(np.asarray(full['image_logits']), np.asarray(plain), atol=1e-5)
  assert set(fdl.FDL.per_example_losses(out, LABELS)) == {'loss', 'loss_image'}


def test_fdl_single_class_cam_and_cell_regions():
  model = fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny', cam_mode='single',
                  region_size=160)
  init_train = functools.partial(model.init_with_output, train=True)
  out, _ = jax.jit(init_train)(jax.random.PRNGKey(1), IMAGES, LABELS)
  assert out['boxes'].shape == (2, 6, 4)
  # One 160-px (at 448) region per cell of the 2 x 2 map: 4 candidates for 6 slots.
  np.testing.assert_array_equal(np.asarray(out['box_valid']).sum(axis=1), [4, 4])
  side = np.asarray(out['boxes'][..., 2] - out['boxes'][..., 0])
  assert np.all((side >= 22) & (side <= 24))  # 160 / 7 px, floored corners.
  # Centred on the cells' receptive-field centres, pixels 0 and 32 (tests/test_registration.py).
  centres = np.asarray(out['boxes'][..., :2] + out['boxes'][..., 2:]) / 2
  assert set(np.unique(centres)) <= {0.0, 32.0}
  with pytest.raises(ValueError, match='labels'):
    jax.eval_shape(init_train, jax.random.PRNGKey(1), IMAGES, None)


def candidates(attention, image_hw=(64, 64), **kwargs):
  """FDL's candidate boxes, scores and padding for an attention map."""
  model = fdl.FDL(num_classes=NUM_CLASSES, **kwargs)
  return model._candidates(attention, image_hw)  # pylint: disable=protected-access


def test_fdl_candidates_follow_map_alignment_and_padding_score():
  attention = jax.random.normal(jax.random.PRNGKey(3), (2, 2, 2))
  anchor_boxes, pad_px = anchors.region_anchors(64, 224)
  for kw, stride in (({}, 32), ({'map_alignment': 'top_left', 'padding_score': 'inside'}, None)):
    boxes, scores, pad = candidates(attention, **kw)
    order = cam_attention.tie_break_order(anchor_boxes, (64, 64))
    np.testing.assert_array_equal(boxes, anchor_boxes[order])
    want = cam_attention.box_mean_scores(
        attention, jnp.asarray(anchor_boxes), (64, 64), stride=stride,
        alignment=kw.get('map_alignment', 'receptive_field'),
        padding=kw.get('padding_score', 'min'))
    np.testing.assert_array_equal(np.asarray(scores), np.asarray(want)[:, order])
    assert pad == pad_px
  # Candidates come with the most image first, so NMS gives exact ties to such boxes.
  inside = [np.prod(np.clip(b[2:], 0, 64) - np.clip(b[:2], 0, 64)) for b in boxes]
  assert np.all(np.diff(inside) <= 0)
  # One box per cell: centred on pixel 32u, or on 32u + 16 by the original rule.
  for alignment, centre in (('receptive_field', (0, 32)), ('top_left', (15.5, 47.5))):
    boxes, scores, _ = candidates(attention, region_size=160, map_alignment=alignment)
    assert set(np.unique((boxes[:, :2] + boxes[:, 2:]) / 2)) == set(centre)
    np.testing.assert_array_equal(
        np.sort(np.asarray(scores), axis=1), np.sort(np.asarray(attention).reshape(2, 4), 1))
  with pytest.raises(ValueError, match='stride-32'):
    candidates(attention, (96, 96))
  for kw in ({'map_alignment': 'centre'}, {'padding_score': 'zero'}):
    with pytest.raises(ValueError, match=next(iter(kw))):
      jax.eval_shape(fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny', **kw).init,
                     jax.random.PRNGKey(0), IMAGES)
