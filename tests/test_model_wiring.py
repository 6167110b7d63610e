"""How the region models are put together, checked against references built in the test.

Each classifier reads the features its docstring names: the part features are the shared
backbone (part statistics) on the zoomed boxes the model returns, recomputed here in
float64 from those boxes. A switch changes exactly the parameters and outputs it names.
A planted detail moves the boxes with it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models import fdl
from fgjax.models import nts
from fgjax.models import regions
from fgjax.models import resnet
from fgjax.models import ssanet
from fgjax.ops import cam_attention
from fgjax.ops import crop

NUM_CLASSES = 5
IMAGES = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))


def _with_random_statistics(variables, seed=0):
  """BatchNorm running averages made different per layer and per domain (images, parts):
  at initialisation they are all 0 and 1, which would hide a mix-up."""
  rng = np.random.default_rng(seed)
  def perturb(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'var' in name:
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.3, leaf.shape), leaf.dtype)
  stats = jax.tree_util.tree_map_with_path(perturb, variables['batch_stats'])
  return {**variables, 'batch_stats': stats}


def _init_and_run(model, images=IMAGES):
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), images)
  variables = _with_random_statistics(variables)
  outputs = jax.jit(functools.partial(model.apply, train=False))(variables, images)
  return variables, jax.tree.map(np.asarray, outputs)


def _backbone_features(variables, images, boxes):
  """(pooled image features [B, D], pooled part features [B, m, D]) recomputed from the
  model's boxes: NTS-Net's padding and part size at 64 px, the parts' statistics."""
  backbone = resnet.get_backbone('resnet_tiny', bn_domains=2)
  apply = jax.jit(backbone.apply, static_argnums=(2, 3))
  weights = {'params': variables['params']['backbone'],
             'batch_stats': variables['batch_stats']['backbone']}
  _, pad_px, part_px = regions.anchors_and_sizes(images.shape[1:3], 224, 224, 448, 'feature')
  parts = crop.zoom_into_regions(images, jnp.asarray(boxes), pad_px, part_px)
  pooled = apply(weights, images, False, 0)['pooled']
  part = apply(weights, parts, False, 1)['pooled'].reshape(boxes.shape[:2] + (-1,))
  return np.asarray(pooled, np.float64), np.asarray(part, np.float64)


def _dense(params, x):
  kernel = np.asarray(params['kernel'], np.float64)
  return x @ kernel + np.asarray(params.get('bias', np.zeros(kernel.shape[1])), np.float64)


def _close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_nts_heads_read_the_top_parts_then_the_image():
  model = nts.NTSNet(num_classes=NUM_CLASSES, backbone='resnet_tiny', cat_num=3)
  variables, out = _init_and_run(model)
  pooled, parts = _backbone_features(variables, IMAGES, out['boxes'])
  p = variables['params']
  # [parts 1..cat_num in NMS order, image]: the reference's concat_net layout.
  concat = np.concatenate([parts[:, :3].reshape(2, -1), pooled], axis=1)
  _close(out['logits'], _dense(p['concat_fc'], concat))
  _close(out['global_logits'], _dense(p['fc'], pooled))
  _close(out['part_logits'], _dense(p['part_fc'], parts))


def test_fdl_hybrid_reads_the_image_then_the_top_regions():
  model = fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny', cat_num=3)
  variables, out = _init_and_run(model)
  pooled, regions_ = _backbone_features(variables, IMAGES, out['boxes'])
  p = variables['params']
  hybrid = np.concatenate([pooled, regions_[:, :3].reshape(2, -1)], axis=1)
  _close(out['logits'], _dense(p['hybrid_fc'], hybrid))
  _close(out['image_logits'], _dense(p['image_fc'], pooled))
  _close(out['region_logits'], _dense(p['region_fc'], regions_))
  # The attention is the max over classes of the image classifier's maps (no bias).
  stage4 = jax.jit(resnet.get_backbone('resnet_tiny', bn_domains=2).apply)(
      {'params': p['backbone'], 'batch_stats': variables['batch_stats']['backbone']},
      IMAGES)['stage4']
  cams = np.asarray(stage4, np.float64) @ np.asarray(p['image_fc']['kernel'], np.float64)
  want = cam_attention.gaussian_smooth(jnp.asarray(cams.max(-1), jnp.float32), 1.0)
  _close(out['attention'], np.asarray(want))


def _transplant(source, target):
  """`target`'s tree with `source`'s values wherever the path and shape agree."""
  flat_source = dict(jax.tree_util.tree_leaves_with_path(source))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: flat_source[path] if path in flat_source and
      np.shape(flat_source[path]) == np.shape(leaf) else leaf, target)


def _shapes(tree):
  return {jax.tree_util.keystr(k): np.shape(v) for k, v in
          jax.tree_util.tree_leaves_with_path(tree)}


SMALL = dict(backbone='resnet_tiny', proposal_num=3, cat_num=2, dsm_width=16)


@pytest.fixture(scope='module')
def ssanet_full():
  return _init_and_run(ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL))


# switch -> (parameter modules it removes, modules whose shapes change, outputs it removes).
SWITCHES = {
    'use_dsm': ({'dsm'}, {'fc', 'concat_fc'}, {'shift_probs'}),
    'use_op': ({'op'}, {'fc', 'concat_fc'}, {'orientation_weights'}),
    'use_mac': (set(), set(), {'object_mask', 'loss_mac'}),
}


@pytest.mark.parametrize('switch', sorted(SWITCHES))
def test_ssanet_switch_changes_exactly_what_it_names(ssanet_full, switch):
  removed, reshaped, removed_outputs = SWITCHES[switch]
  full_variables, full = ssanet_full
  model = ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL, **{switch: False})
  init = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), IMAGES)
  full_shapes, shapes = _shapes(full_variables), _shapes(init)
  module = lambda key: key.split("'")[3]  # "['params']['fc']['kernel']" -> 'fc'.
  assert {module(k) for k in set(full_shapes) - set(shapes)} == removed
  assert not set(shapes) - set(full_shapes)
  assert {module(k) for k in shapes if shapes[k] != full_shapes[k]} == reshaped
  # With the full model's values for every shared parameter, the outputs the switch does
  # not name are unchanged; the image descriptor's heads change where it changes them.
  variables = _transplant(full_variables, init)
  out = jax.tree.map(np.asarray, jax.jit(functools.partial(model.apply, train=False))(
      variables, IMAGES))
  assert set(out) == set(full) - removed_outputs
  for key in ('anchor_scores', 'boxes', 'part_scores', 'part_logits', 'object_mask',
              'loss_mac'):
    if key in out:   # Another program: float32 rounding may differ.
      np.testing.assert_allclose(out[key], full[key], rtol=1e-5, atol=1e-5, err_msg=key)
  for key in ('logits', 'global_logits'):
    assert np.allclose(out[key], full[key], rtol=1e-5, atol=1e-5) == (not reshaped), key


def test_ssanet_mac_weight_scales_only_the_alignment_penalty(ssanet_full):
  variables, full = ssanet_full
  model = ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL, mac_weight=2.5)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, IMAGES)
  np.testing.assert_allclose(out['loss_mac'], 2.5 * full['loss_mac'], rtol=1e-5)
  assert np.all(full['loss_mac'] > 0)
  np.testing.assert_allclose(out['logits'], full['logits'], rtol=1e-5, atol=1e-6)


def test_ssanet_without_dsm_and_op_is_nts_heads_on_the_pooled_image():
  model = ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL, use_dsm=False, use_op=False)
  variables, out = _init_and_run(model)
  pooled, parts = _backbone_features(variables, IMAGES, out['boxes'])
  p = variables['params']
  _close(out['global_logits'], _dense(p['fc'], pooled))
  _close(out['logits'], _dense(p['concat_fc'],
                               np.concatenate([parts[:, :2].reshape(2, -1), pooled], 1)))


DETAIL = 32   # Side of the planted detail: one stage4 cell at 128 px.
SIZE = 128


def _planted(row, col):
  """A grey 128-px image, normalised, with a textured square at map cell (row, col)."""
  image = np.zeros((1, SIZE, SIZE, 3), np.float32)
  texture = np.random.default_rng(0).normal(0, 2, (DETAIL, DETAIL, 3))
  image[0, row * DETAIL:(row + 1) * DETAIL, col * DETAIL:(col + 1) * DETAIL] = texture
  return jnp.asarray(image)


def _aim_at(backbone_weights, image, row, col, num_outputs):
  """A [D, num_outputs] kernel whose every class map peaks at the planted cell: each column
  is that cell's stage4 feature minus the mean of the map."""
  stage4 = np.asarray(jax.jit(resnet.get_backbone('resnet_tiny', bn_domains=2).apply)(
      backbone_weights, image)['stage4'][0], np.float64)
  direction = stage4[row, col] - stage4.reshape(-1, stage4.shape[-1]).mean(0)
  return jnp.asarray(np.tile(direction[:, None], (1, num_outputs)), jnp.float32)


def _top_box_centres(model, head, zero_navigator=False):
  """Top box centre (y, x) for a detail planted at each of four cells, by `head`'s maps."""
  init = jax.jit(functools.partial(model.init, train=False))
  apply = jax.jit(functools.partial(model.apply, train=False))
  variables = init(jax.random.key(1), _planted(0, 0))
  if zero_navigator:
    variables['params']['navigator'] = jax.tree.map(jnp.zeros_like,
                                                    variables['params']['navigator'])
  weights = {'params': variables['params']['backbone'],
             'batch_stats': variables['batch_stats']['backbone']}
  centres = {}
  for cell in ((0, 3), (3, 0), (1, 2), (2, 1)):
    image = _planted(*cell)
    variables['params'][head]['kernel'] = _aim_at(weights, image, *cell, NUM_CLASSES)
    box = np.asarray(apply(variables, image)['boxes'][0, 0])
    centres[cell] = (box[:2] + box[2:]) / 2
  return centres


@pytest.mark.parametrize('name', ['fdl', 'nts_guided'])
def test_a_planted_detail_moves_the_top_box_with_it(name):
  """The top box covers the planted detail's cell, wherever (and however asymmetrically)
  it is planted: the attention, box scores and NMS are registered with the image."""
  if name == 'fdl':
    centres = _top_box_centres(fdl.FDL(num_classes=NUM_CLASSES, backbone='resnet_tiny'),
                               'image_fc')
  else:  # The navigator is silenced; the guide's prior alone orders the anchors.
    model = nts.NTSNet(num_classes=NUM_CLASSES, backbone='resnet_tiny',
                       navigator_guide='always')
    centres = _top_box_centres(model, 'guide_fc', zero_navigator=True)
  for (row, col), (y, x) in centres.items():
    assert row * DETAIL - 8 <= y <= (row + 1) * DETAIL + 8, (name, row, col, y, x)
    assert col * DETAIL - 8 <= x <= (col + 1) * DETAIL + 8, (name, row, col, y, x)


def _ce(logits, labels):
  """float64 softmax cross-entropy [...] of logits [..., C] against labels [...]."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, np.asarray(labels)[..., None], -1)[..., 0]


def _ranking(scores, part_ce):
  """NTS-Net's ranking loss per image by a double loop (margin 1)."""
  out = np.zeros(len(scores))
  for b in range(len(scores)):
    for i in range(scores.shape[1]):
      for j in range(scores.shape[1]):
        if part_ce[b, j] > part_ce[b, i]:
          out[b] += max(0.0, 1.0 - scores[b, i] + scores[b, j])
  return out


def test_each_models_loss_is_the_sum_of_its_terms_computed_here():
  rng = np.random.default_rng(0)
  labels = np.array([1, 3])
  logits = lambda *shape: rng.normal(size=shape).astype(np.float32)
  nts_out = {'logits': logits(2, 5), 'global_logits': logits(2, 5),
             'part_logits': logits(2, 3, 5), 'part_scores': logits(2, 3)}
  part_ce = _ce(nts_out['part_logits'], labels[:, None])
  want = {'loss_global': _ce(nts_out['global_logits'], labels),
          'loss_rank': _ranking(np.float64(nts_out['part_scores']), part_ce),
          'loss_concat': _ce(nts_out['logits'], labels), 'loss_part': part_ce.mean(1)}
  mac = logits(2)
  fdl_out = {'logits': logits(2, 5), 'image_logits': logits(2, 5), 'region_logits': logits(2, 3, 5)}
  fdl_want = {'loss_image': _ce(fdl_out['image_logits'], labels),
              'loss_region': _ce(fdl_out['region_logits'], labels[:, None]).mean(1),
              'loss_hybrid': _ce(fdl_out['logits'], labels)}
  for cls, out, terms in ((nts.NTSNet, nts_out, want), (fdl.FDL, fdl_out, fdl_want),
                          (ssanet.SSANet, {**nts_out, 'loss_mac': mac},
                           {**want, 'loss_mac': np.float64(mac)})):
    got = cls.per_example_losses({k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(labels))
    assert set(got) == set(terms) | {'loss'}, cls.__name__
    for key, value in terms.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(got['loss'], sum(terms.values()), rtol=1e-5, err_msg=cls.__name__)
