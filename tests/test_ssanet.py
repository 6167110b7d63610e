"""SSANet on resnet_tiny at 64 x 64: shapes, gradients into DSM and OP, the switches."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models import ssanet

NUM_CLASSES = 5
SMALL = dict(backbone='resnet_tiny', proposal_num=3, cat_num=2, dsm_width=16)


def _inputs():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 64, 64, 3)), jnp.float32)
  labels = jnp.array([1, 3], jnp.int32)
  return images, labels


@pytest.fixture(scope='module')
def full_model():
  """The default SSANet (small sizes), its variables and its eval-mode outputs."""
  model = ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL)
  images, _ = _inputs()
  # One compilation for both: init_with_output runs the forward pass while it initialises.
  outputs, variables = jax.jit(functools.partial(model.init_with_output, train=False))(
      jax.random.key(0), images)
  return model, variables, outputs


def _loss_fn(model, variables, images, labels):
  def loss(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                             images, labels, train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.key(1)})
    losses = type(model).per_example_losses(outputs, labels)
    return jnp.mean(losses['loss']), (outputs, losses)
  return loss


def test_output_shapes_and_losses(full_model):
  _, variables, outputs = full_model
  _, labels = _inputs()
  chex.assert_shape(outputs['logits'], (2, NUM_CLASSES))
  chex.assert_shape(outputs['global_logits'], (2, NUM_CLASSES))
  chex.assert_shape(outputs['part_logits'], (2, 3, NUM_CLASSES))
  chex.assert_shape(outputs['boxes'], (2, 3, 4))
  chex.assert_shape(outputs['anchor_scores'], (2, 39))  # NTS anchors at 64 x 64.
  chex.assert_shape(outputs['shift_probs'], (2, 3))
  chex.assert_shape(outputs['orientation_weights'], (2, 4))
  chex.assert_shape(outputs['object_mask'], (2, 2, 2))
  np.testing.assert_allclose(outputs['shift_probs'].sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(outputs['orientation_weights'].sum(-1), 1.0, atol=1e-5)
  losses = ssanet.SSANet.per_example_losses(outputs, labels)
  assert set(losses) == {'loss', 'loss_global', 'loss_rank', 'loss_concat', 'loss_part',
                         'loss_mac'}
  for value in losses.values():
    chex.assert_shape(value, (2,))
    assert np.all(np.isfinite(value))
  # Global descriptor: op_bins * (stage4 channels + levels * dsm_width) = 3 * (64 + 3 * 16).
  assert variables['params']['fc']['kernel'].shape == (3 * (64 + 3 * 16), NUM_CLASSES)


def test_gradients_reach_every_dsm_and_op_parameter(full_model):
  model, variables, _ = full_model
  images, labels = _inputs()
  grad_fn = jax.jit(jax.grad(_loss_fn(model, variables, images, labels), has_aux=True))
  grads, (_, losses) = grad_fn(variables['params'])
  assert np.all(np.isfinite(losses['loss']))
  assert set(grads['dsm']) == {'proj_stage2', 'proj_stage3', 'proj_stage4', 'template'}
  for module in ('dsm', 'op', 'navigator'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads[module]):
      assert np.all(np.isfinite(leaf)), (module, path)
      assert np.abs(leaf).max() > 0, (module, jax.tree_util.keystr(path))


@pytest.mark.parametrize('switch', ['use_dsm', 'use_op'])
def test_dsm_or_op_off_still_works(switch):
  """Training-mode forward pass and losses with DSM or OP switched off."""
  model = ssanet.SSANet(num_classes=NUM_CLASSES, **SMALL, **{switch: False})
  images, labels = _inputs()
  init = functools.partial(model.init_with_output, train=True)
  outputs, variables = jax.jit(init)(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, images, labels)
  losses = ssanet.SSANet.per_example_losses(outputs, labels)
  assert np.all(np.isfinite(losses['loss']))
  chex.assert_shape(outputs['logits'], (2, NUM_CLASSES))
  chex.assert_shape(outputs['boxes'], (2, 3, 4))
  if switch == 'use_dsm':
    assert 'dsm' not in variables['params'] and 'shift_probs' not in outputs
    # OP on stage4 alone: op_bins * 64.
    assert variables['params']['fc']['kernel'].shape == (3 * 64, NUM_CLASSES)
  else:
    assert 'op' not in variables['params'] and 'orientation_weights' not in outputs
    # Without OP the global descriptor is GAP(concat(stage4, DSM map)).
    assert variables['params']['fc']['kernel'].shape == (64 + 3 * 16, NUM_CLASSES)


def test_mac_off_still_works(full_model):
  """Same parameters as the full model; no mask and a zero 'loss_mac'."""
  model, variables, _ = full_model
  images, labels = _inputs()
  model = model.clone(use_mac=False)
  loss, (outputs, losses) = jax.jit(_loss_fn(model, variables, images, labels))(
      variables['params'])
  assert np.isfinite(loss)
  chex.assert_shape(outputs['logits'], (2, NUM_CLASSES))
  assert 'object_mask' not in outputs
  np.testing.assert_array_equal(losses['loss_mac'], 0.0)


def test_bfloat16_and_non_square_input_shapes():
  """Shapes only (no compilation): bf16 compute, float32 params and logits, 80 x 96."""
  model = ssanet.SSANet(num_classes=NUM_CLASSES, dtype=jnp.bfloat16, **SMALL)
  images = jax.ShapeDtypeStruct((2, 80, 96, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  outputs = jax.eval_shape(model.apply, variables, images)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  assert outputs['logits'].dtype == jnp.float32
  assert outputs['shift_probs'].dtype == jnp.float32
  assert outputs['object_mask'].shape == (2, 3, 3)
  assert outputs['anchor_scores'].shape == (2, 87)


def test_alignment_penalty_counts_score_mass_outside_the_mask():
  mask = np.zeros((1, 4, 4), np.float32)
  mask[0, :2, :2] = 1.0  # the object fills the top-left quarter of a 32 x 32 image
  anchors = np.array([[0, 0, 16, 16],      # inside the object
                      [16, 16, 32, 32],    # outside
                      [0, 0, 16, 32],      # half inside
                      [-16, 0, 16, 16]],   # half beyond the image border
                     np.float32)
  inside = ssanet.anchor_inside_fraction(jnp.asarray(mask), anchors, (32, 32),
                                         alignment='top_left')
  np.testing.assert_allclose(inside[0], [1.0, 0.0, 0.5, 0.5], atol=1e-6)
  # Receptive-field alignment, stride 8: cell u is centred on pixel 8u (continuous 8u + 0.5)
  # and spans half a cell either side, so the object's two cells cover [0, 12.5) per axis.
  registered = ssanet.anchor_inside_fraction(jnp.asarray(mask), anchors, (32, 32))
  np.testing.assert_allclose(registered[0], [(12.5 / 16) ** 2, 0.0, 12.5 / 16 * 12.5 / 32,
                                             12.5 / 32 * 12.5 / 16], atol=1e-6)
  scores = jnp.log(jnp.array([[0.7, 0.1, 0.1, 0.1]]))
  penalty = ssanet.alignment_penalty(scores, inside)
  np.testing.assert_allclose(penalty, [0.1 * 1.0 + 0.1 * 0.5 + 0.1 * 0.5], atol=1e-6)


def test_object_mask_is_cleaned():
  activation = np.zeros((1, 11, 11, 2), np.float32)
  activation[0, 3:8, 3:8] = 1.0
  activation[0, 5, 5] = 0.0   # a hole: filled by the closing
  activation[0, 0, 10] = 1.0  # a speck: removed by the opening
  mask = np.asarray(ssanet.object_mask(jnp.asarray(activation), 3))
  expected = np.zeros((11, 11), np.float32)
  expected[3:8, 3:8] = 1.0
  np.testing.assert_array_equal(mask[0], expected)
