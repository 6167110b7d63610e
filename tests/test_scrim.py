"""SCRIM on resnet_tiny at 64 x 64: wiring of the CPLs, FPLs, losses and switches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fgjax.models import scrim
from fgjax.ops import contrastive

NUM_CLASSES = 5
IMAGES = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
LABELS = jnp.array([1, 1, 1, 2])  # Class 2 alone: no contrastive term for it.
RNGS = {'params': jax.random.key(1), 'dropout': jax.random.key(2)}


def _run(**kwargs):
  model = scrim.SCRIM(num_classes=NUM_CLASSES, backbone='resnet_tiny', **kwargs)
  init = functools.partial(model.init_with_output, train=True)
  outputs, variables = jax.jit(init)(RNGS, IMAGES, LABELS)
  return model, variables, outputs


@pytest.fixture(scope='module')
def full():
  return _run()


def _modules(variables):
  return {k: jax.tree.map(np.shape, v) for k, v in variables['params'].items()}


def test_contrastive_term_is_the_op_on_each_cpls_descriptor(full):
  _, _, out = full
  want = sum(np.asarray(contrastive.supervised_contrastive(
      out[f'cpl_{s}_descriptor'], LABELS, 0.1)[0]) for s in ('stage3', 'stage4'))
  np.testing.assert_allclose(out['loss_contrast'], want, rtol=1e-5, atol=1e-6)
  assert out['loss_contrast'][3] == 0.0 and np.all(np.asarray(out['loss_contrast'][:3]) > 0)
  losses = scrim.SCRIM.per_example_losses(out, LABELS)
  terms = [k for k in losses if k != 'loss']
  assert sorted(terms) == sorted(['loss_global', 'loss_fused', 'loss_contrast'] + [
      f'loss_fpl_{s}_{t}' for s in ('stage3', 'stage4') for t in ('rank', 'part')])
  np.testing.assert_allclose(losses['loss'], sum(losses[k] for k in terms), rtol=1e-6)


def test_each_fpl_keeps_half_the_parts_and_boxes_interleave_by_rank(full):
  _, _, out = full
  for s in ('stage3', 'stage4'):
    assert out[f'fpl_{s}_boxes'].shape == (4, 3, 4)
    scores = np.asarray(out[f'fpl_{s}_part_scores'])
    chosen = np.asarray(out[f'fpl_{s}_anchor_scores'])
    assert np.all(np.isin(scores, chosen))
  boxes = np.asarray(out['boxes'])
  np.testing.assert_array_equal(boxes[:, 0::2], out['fpl_stage4_boxes'])
  np.testing.assert_array_equal(boxes[:, 1::2], out['fpl_stage3_boxes'])
  valid = np.asarray(out['box_valid'])
  assert valid.shape == (4, 6)
  np.testing.assert_array_equal(valid[:, 0::2], out['fpl_stage4_box_valid'])
  np.testing.assert_array_equal(valid[:, 1::2], out['fpl_stage3_box_valid'])


def test_every_module_gets_gradient_and_navigators_only_from_ranking(full):
  model, variables, _ = full

  def loss(params, rank_only):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, IMAGES,
                         LABELS, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(3)})
    losses = scrim.SCRIM.per_example_losses(out, LABELS)
    rank = sum(v for k, v in losses.items() if k.endswith('_rank'))
    return jnp.mean(rank if rank_only else losses['loss'] - rank)

  grads = jax.jit(jax.grad(loss), static_argnums=1)
  total = lambda tree: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))
  rest, rank = grads(variables['params'], False), grads(variables['params'], True)
  for name in variables['params']:
    if name.endswith('_navigator'):
      assert total(rank[name]) > 0 and total(rest[name]) == 0, name
    else:
      assert total(rest[name]) > 0, name
  for path, leaf in jax.tree_util.tree_leaves_with_path(rest['cpl_stage3']):
    assert np.abs(leaf).max() > 0, jax.tree_util.keystr(path)


# switch -> (modules it removes, modules whose shapes change, outputs it removes)
SWITCHES = {
    'use_contrastive': (set(), set(), {'loss_contrast'}),
    'dual_cpl': ({'cpl_stage3', 'fpl_stage3_navigator', 'fpl_stage3_part_fc'}, {'fused_fc'},
                 {'cpl_stage3_attention', 'cpl_stage3_descriptor'}),
    # One FPL keeps all 6 parts and puts 4 in the fused feature: fused_fc keeps its shape.
    'dual_fpl': ({'fpl_stage3_navigator', 'fpl_stage3_part_fc'}, set(), set()),
    'use_fpl': ({f'fpl_{s}_{m}' for s in ('stage3', 'stage4') for m in ('navigator', 'part_fc')},
                {'fused_fc'}, {'boxes', 'box_valid'}),
}


@pytest.mark.parametrize('switch', sorted(SWITCHES))
def test_each_ablation_changes_exactly_what_it_names(full, switch):
  removed, reshaped, removed_outputs = SWITCHES[switch]
  _, variables, out = full
  _, ablated_variables, ablated = _run(**{switch: False})
  modules, ablated_modules = _modules(variables), _modules(ablated_variables)
  assert set(modules) - set(ablated_modules) == removed
  assert not set(ablated_modules) - set(modules)
  assert {m for m in ablated_modules if ablated_modules[m] != modules[m]} == reshaped
  gone = {k for k in out if k not in ablated}
  fpl_outputs = {k for k in out if k.startswith('fpl_')}
  if switch in ('dual_cpl', 'dual_fpl'):
    removed_outputs = removed_outputs | {k for k in fpl_outputs if 'stage3' in k}
  if switch == 'use_fpl':
    removed_outputs = removed_outputs | fpl_outputs
  assert gone == removed_outputs and not set(ablated) - set(out)
  if switch != 'use_fpl':   # The part budget stays NTS-Net's 6, however many FPLs.
    assert ablated['boxes'].shape[1] == 6


def test_counts_must_split_over_the_fpls():
  with pytest.raises(ValueError, match='split evenly over the 2 FPLs'):
    _run(proposal_num=5)


def test_shard_map_step_equals_pmap_step():
  """One train step of SCRIM (built as training builds it) under both mappings."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  config = demo.get_config('scrim')
  model, schedule, tx = train.build_model_and_optimizer(config, NUM_CLASSES, steps_per_epoch=10)
  state = ts.create_train_state(model, tx, jax.random.key(0), 64)
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(16) % NUM_CLASSES, 2).reshape(8, 4)   # [a, a, b, b] a device.
  batch = {'image': rng.integers(0, 256, (8, 4, 64, 64, 3), dtype=np.uint8),
           'label': labels.astype(np.int32), 'mask': np.ones((8, 4), np.float32)}
  results = {}
  for mode in ('pmap', 'shard_map'):
    parallel = ts.Parallel(mode, jax.devices()[:8])
    step = parallel.map(functools.partial(ts.train_step, model=model, tx=tx, schedule=schedule,
                                          rng=jax.random.key(1)))
    new, metrics = step(parallel.replicate(state), parallel.shard_batch(batch))
    results[mode] = parallel.to_host(new), parallel.to_host(metrics)
  (p_state, p_metrics), (s_state, s_metrics) = results['pmap'], results['shard_map']
  for a, b in zip(jax.tree.leaves(p_state.params), jax.tree.leaves(s_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p_metrics['loss'], s_metrics['loss'], rtol=1e-5)
  assert p_metrics['loss_contrast'] > 0   # Each device holds two pairs of two classes.


def test_each_fpl_picks_by_its_own_navigator_plus_its_cpls_attention(full):
  """Boxes = greedy NMS (a plain loop) of navigator scores + 2 x the prior of the CPL it
  refines (stage 3 for one FPL, stage 4 for the other), not of the other CPL."""
  from test_nms import greedy_loop  # pylint: disable=g-import-not-at-top
  from fgjax.models import regions  # pylint: disable=g-import-not-at-top
  _, _, out = full
  anchors = np.asarray(regions.anchors_and_sizes((64, 64), 224, 224, 448, 'feature')[0])
  priors = {s: np.asarray(regions.attention_prior(
      jnp.max(out[f'cpl_{s}_attention'], -1), anchors, (64, 64), stride))
            for s, stride in (('stage3', 16), ('stage4', 32))}
  for s in ('stage3', 'stage4'):
    order = np.asarray(out[f'fpl_{s}_anchor_scores']) + 2.0 * priors[s]
    for b in range(4):
      picks, _ = greedy_loop(anchors, list(order[b]), 3, 0.25)
      np.testing.assert_array_equal(out[f'fpl_{s}_boxes'][b], anchors[picks])
  other = np.asarray(out['fpl_stage3_anchor_scores']) + 2.0 * priors['stage4']
  own = np.asarray(out['fpl_stage3_anchor_scores']) + 2.0 * priors['stage3']
  assert any(list(greedy_loop(anchors, list(other[b]), 3, 0.25)[0]) !=
             list(greedy_loop(anchors, list(own[b]), 3, 0.25)[0]) for b in range(4))
