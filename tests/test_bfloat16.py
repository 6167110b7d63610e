"""model.dtype='bfloat16' (issue 12): float32 state, float32 scores, the float32 picks.

A bfloat16 model computes its backbone in bfloat16 and keeps in float32 the parameters,
optimiser state and BatchNorm statistics, and every value that something ranks, sorts,
arg-maxes, thresholds or feeds to NMS, the ranking loss or a softmax. bfloat16 has an 8-bit
mantissa: navigator scores rounded to it gave NTS-Net's 1614 anchors about 930 distinct
values, and the tie order, not the navigator, chose the parts.

Checked here on resnet_tiny: the dtypes of the state and of those outputs (every model,
shapes only); that the scores are float32 values, not bfloat16 ones cast up, and do not tie
(region models at 448, NTS-Net's 1614 anchors); that the bfloat16 model keeps the boxes the
float32 model keeps with the same parameters; that a few bfloat16 train steps track float32.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fgjax import models
from fgjax import train_step as ts
from fgjax.models import resnet
from fgjax.ops import nms

NUM_CLASSES = 10
REGION_MODELS = ('nts', 'fdl', 'ssanet', 'scrim')
SCRIM_STAGES = ('stage3', 'stage4')

# Per model (default settings), the outputs that feed a ranking, NMS, a threshold, an
# arg-max or a softmax / cross-entropy.
RANKED = {
    'resnet': ('logits',),
    'nts': ('anchor_scores', 'part_scores', 'logits', 'global_logits', 'part_logits'),
    'fdl': ('attention', 'logits', 'image_logits', 'region_logits'),
    'ssanet': ('anchor_scores', 'part_scores', 'shift_probs', 'orientation_weights',
               'object_mask', 'loss_mac', 'logits', 'global_logits', 'part_logits'),
    'scrim': tuple(f'fpl_{s}_{k}' for s in SCRIM_STAGES
                   for k in ('anchor_scores', 'part_scores', 'part_logits')) +
             tuple(f'cpl_{s}_{k}' for s in SCRIM_STAGES for k in ('attention', 'descriptor')) +
             ('loss_contrast', 'logits', 'global_logits'),
}
# Variants that add a ranked output (the navigator guide's logits) or score otherwise (the
# 'scaled' anchor grid resizes the navigator's input; 'single' CAMs; one region per cell).
VARIANTS = [(name, {}) for name in sorted(RANKED)] + [
    ('nts', {'navigator_guide': 'always'}), ('ssanet', {'navigator_guide': 'always'}),
    ('nts', {'anchor_grid': 'scaled'}), ('fdl', {'cam_mode': 'single'}),
    ('fdl', {'region_size': 160})]
VARIANT_IDS = [name + ''.join(f'-{k}={v}' for k, v in settings.items())
               for name, settings in VARIANTS]
GUIDED = ('guide_logits',)


def _model(name, dtype, **settings):
  return models.model_class(name)(num_classes=NUM_CLASSES, backbone='resnet_tiny',
                                  dtype=dtype, **settings)


def _optimizer():
  schedule = ts.lr_schedule(0.01, steps_per_epoch=10, decay_epochs=100, decay_factor=0.1,
                            total_epochs=100)
  return schedule, ts.make_optimizer(schedule, momentum=0.9, weight_decay=5e-4,
                                     backbone_lr_mult=1.0)


def _non_float32(tree):
  """Paths of the floating leaves of `tree` that are not float32."""
  return [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != jnp.float32]


@pytest.mark.parametrize('name,settings', VARIANTS, ids=VARIANT_IDS)
def test_state_and_ranked_outputs_are_float32(name, settings):
  """Shapes only (jax.eval_shape, nothing compiles): parameters, optimiser state, BatchNorm
  statistics and every floating output of a bfloat16 model are float32."""
  model = _model(name, jnp.bfloat16, **settings)
  _, tx = _optimizer()
  state = jax.eval_shape(lambda: ts.create_train_state(model, tx, jax.random.key(0), 64))
  assert not _non_float32(state)
  for part in (state.params, state.batch_stats, state.opt_state):  # None of them empty.
    assert any(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree.leaves(part))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((4,), jnp.int32)
  train_out, mutated = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=['batch_stats'],
                        rngs={'dropout': jax.random.key(1)}), variables, images, labels)
  eval_out = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  assert not _non_float32(mutated)
  ranked = RANKED[name] + (GUIDED if settings.get('navigator_guide', 'none') != 'none' else ())
  for outputs in (train_out, eval_out):
    assert not _non_float32(outputs)
    for key in ranked:
      if key != 'loss_contrast' or outputs is train_out:  # A training-only term.
        assert outputs[key].dtype == jnp.float32, key


# Per model, the layers whose outputs are those scores: each must compute in float32 even
# where the layer feeding it runs in bfloat16 (the navigator's 3x3 convolutions, the stage
# maps). The navigator's 1x1 heads are 'tidy1'..'tidy3'; SCRIM's CPL attention 'attention'.
HEADS = ('fc', 'concat_fc', 'part_fc')
SCORING_LAYERS = {
    'resnet': ('head',),
    'nts': ('tidy1', 'tidy2', 'tidy3') + HEADS,
    'fdl': ('image_fc', 'hybrid_fc', 'region_fc'),
    'ssanet': ('tidy1', 'tidy2', 'tidy3', 'gate') + HEADS,
    'scrim': ('tidy1', 'tidy2', 'tidy3', 'attention', 'embed', 'fpl_stage3_part_fc',
              'fpl_stage4_part_fc', 'fused_fc', 'fc'),
}


@pytest.mark.parametrize('name,settings', VARIANTS, ids=VARIANT_IDS)
def test_scoring_layers_compute_in_float32(name, settings):
  """Shapes only: every scoring layer of a bfloat16 model returns float32 (a layer with
  dtype bfloat16 computes and returns bfloat16, and a cast afterwards keeps its rounding)."""
  model = _model(name, jnp.bfloat16, **settings)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             images)
  expected = set(SCORING_LAYERS[name])
  if settings.get('navigator_guide', 'none') != 'none':
    expected.add('guide_fc')
  _, state = jax.eval_shape(functools.partial(
      model.apply, train=False, mutable=['intermediates'],
      capture_intermediates=lambda module, method: module.name in expected), variables, images)
  found = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state['intermediates']):
    layer = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-2]
    found.setdefault(layer, set()).add(leaf.dtype)
  assert set(found) == expected
  assert not {k: v for k, v in found.items() if v != {jnp.dtype(jnp.float32)}}


# The picks, at NTS-Net's geometry: 448 x 448, 1614 anchors on the stride-32 map. Parts at
# 64 px keep it quick; they are cut after the boxes are chosen and do not change them.
PICK_SIZE = 448
PICK_IMAGES = 16


@functools.lru_cache(maxsize=None)
def _forward(name):
  """(float32 outputs, bfloat16 outputs) of one training-mode pass with the same float32
  parameters on the same random images."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(PICK_IMAGES, PICK_SIZE, PICK_SIZE, 3)), jnp.float32)
  labels = jnp.asarray(np.arange(PICK_IMAGES) % 4, jnp.int32)  # 4 images a class.
  outputs = []
  variables = None
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _model(name, dtype, part_size=64)
    if variables is None:
      variables = jax.jit(functools.partial(model.init, train=False))(
          jax.random.key(0), images[:2])
    apply = functools.partial(model.apply, train=True, mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(1)})
    outputs.append(jax.device_get(jax.jit(apply)(variables, images, labels)[0]))
  return tuple(outputs)


def _bfloat16_share(x):
  """Share of the entries of x that bfloat16 represents exactly: about 2^-16 for values
  computed in float32, 1 for bfloat16 values cast to float32."""
  x = np.asarray(x, np.float32)
  return float(np.mean(np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float32) == x))


def _distinct(x, axis):
  """Distinct values along `axis` of x, for every other index: int array."""
  x = np.moveaxis(np.asarray(x), axis, -1)
  flat = x.reshape(-1, x.shape[-1])
  return np.array([len(np.unique(row)) for row in flat]).reshape(x.shape[:-1])


# Scores computed from bfloat16 features in float32 layers: ranked outputs that are not
# binary masks (SSANet's object mask is 0 / 1 by construction).
COMPUTED = {name: tuple(k for k in RANKED[name] if k != 'object_mask') for name in RANKED}


@pytest.mark.parametrize('name', REGION_MODELS)
def test_bfloat16_scores_are_float32_values_that_do_not_tie(name):
  """The scores of a bfloat16 model are float32 values (at most 1 % of them on the
  bfloat16 grid, against 100 % for scores computed in bfloat16 and cast up), and the
  navigator's scores of an image are as distinct as in float32: >= 99 % of the float32
  model's distinct count (1614 of 1614 at 448; 906-965 with bfloat16 heads). SCRIM's
  part attentions likewise, per image and part, over the 28 x 28 and 14 x 14 positions."""
  out32, out16 = _forward(name)
  for key in COMPUTED[name]:
    assert out16[key].dtype == np.float32, key
    assert _bfloat16_share(out16[key]) <= 0.01, (key, _bfloat16_share(out16[key]))
  for key in [k for k in out16 if k.endswith('anchor_scores')]:
    distinct16, distinct32 = _distinct(out16[key], -1), _distinct(out32[key], -1)
    assert out16[key].shape[-1] == 1614
    assert np.all(distinct16 >= 0.99 * distinct32), (key, distinct16, distinct32)
  for stage in SCRIM_STAGES if name == 'scrim' else ():
    key = f'cpl_{stage}_attention'
    distinct16 = _distinct(out16[key].reshape(PICK_IMAGES, -1, out16[key].shape[-1]), 1)
    distinct32 = _distinct(out32[key].reshape(PICK_IMAGES, -1, out32[key].shape[-1]), 1)
    assert np.all(distinct16 >= 0.99 * distinct32), (key, distinct16, distinct32)


# bfloat16 features differ from float32 ones by about 2^-9 per layer: NTS-Net's anchor scores
# in the bfloat16 model move by up to 0.44-0.72 % of an image's score range (0.87-1.32 % with
# bfloat16 heads), so two anchors whose float32 scores are closer than that may swap.
# Measured, top box the same: 15 of 16 images for nts, fdl and ssanet, 16 of 16 for scrim.
# NTS-Net's odd image out has float32 scores 0.15 % of the range apart: a near-tie that the
# backbone's rounding decides (with bfloat16 heads its two scores were equal, and the index
# order decided). 14 of 16 leaves room for one more such near-tie.
MIN_TOP_BOX_AGREEMENT = 0.875


@pytest.mark.parametrize('name', REGION_MODELS)
def test_bfloat16_keeps_the_float32_top_box(name):
  out32, out16 = _forward(name)
  boxes = [k for k in out32 if k.endswith('boxes')]
  assert boxes
  for key in boxes:
    same = np.all(out16[key][:, 0] == out32[key][:, 0], axis=-1)
    assert np.mean(same) >= MIN_TOP_BOX_AGREEMENT, (key, same)


def _relative(a, b):
  """||a - b|| / ||a|| over whole pytrees."""
  return float(optax.tree.norm(jax.tree.map(lambda x, y: x - y, a, b)) / optax.tree.norm(a))


def _train(name, dtype, state, batches):
  """Losses per step and the final state of pmapped train steps on 2 devices."""
  model = _model(name, dtype, bn_axis_name=ts.AXIS)
  schedule, tx = _optimizer()
  parallel = ts.Parallel('pmap', jax.devices()[:2])
  step = parallel.map(functools.partial(ts.train_step, model=model, tx=tx, schedule=schedule,
                                        rng=jax.random.key(1)))
  replicated, losses = parallel.replicate(state), []
  for batch in batches:
    replicated, metrics = step(replicated, batch)
    losses.append(float(parallel.to_host(metrics)['loss']))
  return np.array(losses), parallel.to_host(replicated)


# Tolerances (relative) over 3 SGD steps (lr 0.01, momentum 0.9) on 8 images of 64 px, with
# the measured figures. The first step's loss compares two forward passes with the same
# parameters: numerics only. The baseline then tracks to numerical noise. NTS-Net at
# initialisation is chaotic: its part cross-entropies are all near log(10), so noise decides
# their order, and with it the ranking loss's pairs and the navigator's gradient. The same
# divergence appears without bfloat16 at all: float32 from the initial parameters rounded to
# bfloat16 ends 5.2 % off in loss at step 3 and 1.6e-2 off in parameters, as bfloat16 does.
TRACKING = {  # name: (loss at step 1, loss later, parameters, BatchNorm statistics)
    'resnet': (1e-2, 1e-2, 5e-3, 5e-3),   # measured 1.5e-3, 4e-4, 5.7e-4, 3.8e-4
    'nts': (2e-2, 0.2, 5e-2, 2e-2),       # measured 4.4e-3, 6.7e-2, 1.5e-2, 4.5e-3
}


@pytest.mark.parametrize('name', sorted(TRACKING))
def test_bfloat16_train_steps_track_float32(name):
  """3 pmapped train steps from the same float32 state, float32 against bfloat16: the loss
  at every step, the parameters and the BatchNorm statistics agree within TRACKING, and the
  bfloat16 run's parameters, optimiser state and statistics stay float32."""
  _, tx = _optimizer()
  state = ts.create_train_state(_model(name, jnp.float32), tx, jax.random.key(0), 64)
  rng = np.random.default_rng(0)
  batches = [{'image': rng.integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8),
              'label': rng.integers(0, NUM_CLASSES, (2, 4)).astype(np.int32)}
             for _ in range(3)]
  losses32, state32 = _train(name, jnp.float32, state, batches)
  losses16, state16 = _train(name, jnp.bfloat16, state, batches)
  assert not _non_float32(state16)
  first_tol, loss_tol, params_tol, stats_tol = TRACKING[name]
  loss_diff = np.abs(losses16 - losses32) / losses32
  assert loss_diff[0] < first_tol and np.all(loss_diff < loss_tol), loss_diff
  assert _relative(state32.params, state16.params) < params_tol
  assert _relative(state32.batch_stats, state16.batch_stats) < stats_tol


def test_nms_refuses_scores_narrower_than_float32():
  boxes = jnp.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], jnp.float32)
  scores = jnp.asarray([0.5, 0.25])
  for dtype in (jnp.bfloat16, jnp.float16):
    with pytest.raises(ValueError, match='float32 scores'):
      nms.greedy_nms(boxes, scores.astype(dtype), 1, 0.25)
  indices, _ = nms.batched_greedy_nms(boxes, scores[None], 1, 0.25)
  assert int(indices[0, 0]) == 0


def test_bfloat16_batchnorm_is_the_float32_one_rounded_once():
  """resnet.BatchNorm in bfloat16 normalises like the float32 layer and rounds only its
  output; the gradients of its scale and bias are float32 sums of the (bfloat16) output
  gradient, as in the float32 layer given the same one."""
  x = jax.random.normal(jax.random.key(0), (8, 6, 6, 16)).astype(jnp.bfloat16)
  cotangent = jax.random.normal(jax.random.key(1), x.shape).astype(jnp.bfloat16)
  layers = {dtype: resnet.BatchNorm(use_running_average=False, dtype=dtype,
                                    scale_init=nn.initializers.normal(1.0))
            for dtype in (jnp.float32, jnp.bfloat16)}
  variables = layers[jnp.float32].init(jax.random.key(2), x.astype(jnp.float32))
  results = {}
  for dtype, layer in layers.items():
    def forward(params, layer=layer, dtype=dtype):
      y, _ = layer.apply({**variables, 'params': params}, x.astype(dtype),
                         mutable=['batch_stats'])
      return y
    y, vjp = jax.vjp(forward, variables['params'])
    results[dtype] = y, vjp(cotangent.astype(dtype))[0]
  (y32, grads32), (y16, grads16) = results[jnp.float32], results[jnp.bfloat16]
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y16, np.float32),
                                np.asarray(y32.astype(jnp.bfloat16), np.float32))
  chex.assert_trees_all_close(grads16, grads32, rtol=1e-5, atol=1e-5)
