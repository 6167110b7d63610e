"""The navigator guide (fgjax.models.regions): scores against a float64 reference, and how
NTS-Net and SSANet are wired to it (what NMS orders by, what the ranking loss reads, what
the guide's loss trains, and evaluation with 'train' being the paper's model)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cam_attention import nearest_centre_means
from test_cam_attention import smooth_loop

from fgjax.models import nts
from fgjax.models import regions
from fgjax.models import ssanet

NUM_CLASSES = 4
IMAGE_HW = (96, 128)   # A 3 x 4 stage4 map at stride 32.
BOXES = np.array([[0, 0, 96, 128], [0, 0, 24, 24], [40, 60, 64, 84], [70, 100, 96, 128],
                  [-20, -20, 30, 30], [50, 90, 130, 170], [10, 30, 58, 110],
                  [-48, -48, 0, 0]], np.float32)


class GuideOnly(nn.Module):
  guide: str
  weight: float

  @nn.compact
  def __call__(self, stage4, anchor_scores, train):
    return regions.guide_anchor_scores(stage4, anchor_scores, BOXES, IMAGE_HW,
                                       num_classes=NUM_CLASSES, guide=self.guide,
                                       weight=self.weight, train=train)


def guide_reference(stage4, kernel, bias, anchor_scores, weight):
  """Float64: CAMs with bias, max over classes, Gaussian sigma 1 (7 taps), box means of
  the nearest receptive-field centre (padding = min), standardised per image."""
  maps = np.einsum('bhwn,nc->bhwc', np.float64(stage4), np.float64(kernel)) + bias
  attention = smooth_loop(maps.max(axis=-1), 1.0, 7)
  prior = nearest_centre_means(attention, BOXES, IMAGE_HW, 32, 'min')
  prior = (prior - prior.mean(axis=1, keepdims=True)) / prior.std(axis=1, keepdims=True)
  return anchor_scores + weight * prior, maps.mean(axis=(1, 2))


def test_guide_scores_match_float64_reference():
  rng = np.random.default_rng(0)
  stage4 = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  scores = rng.normal(size=(2, len(BOXES))).astype(np.float32)
  model = GuideOnly('train', 2.5)
  variables = model.init(jax.random.PRNGKey(0), stage4, scores, True)
  params = variables['params']['guide_fc']
  want_selection, want_logits = guide_reference(stage4, params['kernel'], params['bias'],
                                                scores, 2.5)
  selection, logits = model.apply(variables, stage4, scores, True)
  np.testing.assert_allclose(np.asarray(selection), want_selection, atol=1e-4)
  np.testing.assert_allclose(np.asarray(logits), want_logits, atol=1e-4)
  # 'train' leaves evaluation to the navigator; 'always' guides it too.
  at_eval, _ = model.apply(variables, stage4, scores, False)
  np.testing.assert_array_equal(np.asarray(at_eval), scores)
  always, _ = GuideOnly('always', 2.5).apply(variables, stage4, scores, False)
  np.testing.assert_allclose(np.asarray(always), want_selection, atol=1e-4)


def test_no_guide_adds_nothing_and_unknown_guide_raises():
  scores = np.ones((1, len(BOXES)), np.float32)
  stage4 = np.ones((1, 3, 4, 2), np.float32)
  variables = GuideOnly('none', 2.0).init(jax.random.PRNGKey(0), stage4, scores, True)
  assert 'params' not in variables
  selection, logits = GuideOnly('none', 2.0).apply(variables, stage4, scores, True)
  assert logits is None
  np.testing.assert_array_equal(np.asarray(selection), scores)
  with pytest.raises(ValueError, match='navigator_guide'):
    GuideOnly('sometimes', 2.0).init(jax.random.PRNGKey(0), stage4, scores, True)


IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
LABELS = jnp.array([1, 3])
MODELS = {'nts': nts.NTSNet, 'ssanet': ssanet.SSANet}


def build(name, guide, weight=2.0):
  return MODELS[name](num_classes=NUM_CLASSES, backbone='resnet_tiny', navigator_guide=guide,
                      guide_weight=weight)


@functools.lru_cache(maxsize=None)
def guided_variables(name):
  return build(name, 'train').init(jax.random.PRNGKey(1), IMAGES, train=False)


def train_outputs(model, variables):
  out, _ = model.apply(variables, IMAGES, LABELS, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(2)})
  return out


@pytest.mark.parametrize('name', ['nts', 'ssanet'])
def test_train_guide_evaluates_as_the_papers_model(name):
  variables = guided_variables(name)
  assert 'guide_fc' in variables['params']
  plain = {'params': {k: v for k, v in variables['params'].items() if k != 'guide_fc'},
           'batch_stats': variables['batch_stats']}
  guided = build(name, 'train').apply(variables, IMAGES, train=False)
  paper = build(name, 'none').apply(plain, IMAGES, train=False)
  assert set(guided) == set(paper) | {'guide_logits'}
  for key in paper:
    np.testing.assert_array_equal(np.asarray(guided[key]), np.asarray(paper[key]), key)


@pytest.mark.parametrize('name', ['nts', 'ssanet'])
def test_guide_picks_the_parts_and_ranking_reads_the_navigator(name):
  """With an overwhelming weight NMS follows the prior; 'part_scores' stay the navigator's
  scores of the boxes actually picked."""
  variables = guided_variables(name)
  out = train_outputs(build(name, 'train', weight=1e6), variables)
  anchors = np.asarray(regions.anchors_and_sizes((64, 64), 224, 224, 448, 'feature')[0])
  scores = np.asarray(out['anchor_scores'])
  for b in range(2):
    for i, box in enumerate(np.asarray(out['boxes'][b])):
      index = np.flatnonzero(np.all(anchors == box, axis=1))
      assert len(index) >= 1
      assert np.float32(out['part_scores'][b, i]) in scores[b, index]
  # Away from the prior's choice: the navigator's own first box differs for some image.
  navigator_first = anchors[np.argmax(scores, axis=1)]
  assert not np.array_equal(navigator_first, np.asarray(out['boxes'][:, 0]))


@pytest.mark.parametrize('name', ['nts', 'ssanet'])
def test_guide_loss_trains_only_the_guide(name):
  model, variables = build(name, 'train'), guided_variables(name)
  losses_of = MODELS[name].per_example_losses

  def grads(terms):
    def loss_fn(params):
      out = train_outputs(model, {'params': params, 'batch_stats': variables['batch_stats']})
      losses = losses_of(out, LABELS)
      return jnp.mean(sum(losses[t] for t in terms))
    return jax.jit(jax.grad(loss_fn))(variables['params'])

  total = lambda tree: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(tree))
  from_guide = grads(['loss_guide'])
  assert total(from_guide['guide_fc']) > 0
  assert all(total(v) == 0.0 for k, v in from_guide.items() if k != 'guide_fc')
  others = grads(['loss_global', 'loss_concat', 'loss_part', 'loss_rank'])
  assert total(others['guide_fc']) == 0.0
  assert total(others['navigator']) > 0 and total(others['backbone']) > 0


def test_a_guided_run_evaluates_with_or_without_the_prior():
  from fgjax import config_lib  # pylint: disable=g-import-not-at-top
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.name, config.model.backbone = 'nts', 'resnet_tiny'
  config.model.regions.navigator_guide, config.model.regions.guide_weight = 'train', 1e6
  config.data.image_size = 64
  model, _, tx = train.build_model_and_optimizer(config, NUM_CLASSES, steps_per_epoch=1)
  state = ts.create_train_state(model, tx, jax.random.key(3), 64)
  run = inference.Run(config, model, state, [str(c) for c in range(NUM_CLASSES)], 'here')
  images = np.asarray(jax.random.randint(jax.random.key(4), (4, 64, 64, 3), 0, 256), np.uint8)
  _, alone = run.predict(images)
  always = inference.with_navigator_guide(run, 'always')
  assert always.config.model.regions.navigator_guide == 'always'
  assert run.config.model.regions.navigator_guide == 'train'
  _, guided = always.predict(images)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  want = build('nts', 'always', 1e6).apply(variables, ts.normalise(images), train=False)
  np.testing.assert_array_equal(guided, np.asarray(want['boxes']))
  anchors = np.asarray(regions.anchors_and_sizes((64, 64), 224, 224, 448, 'feature')[0])
  np.testing.assert_array_equal(alone[:, 0], anchors[np.argmax(want['anchor_scores'], 1)])
  assert not np.array_equal(alone, guided)
  with pytest.raises(ValueError, match="expected 'train' or 'always'"):
    inference.with_navigator_guide(run, 'none')
  unguided = dataclasses.replace(run, model=model.clone(navigator_guide='none'))
  with pytest.raises(ValueError, match='here: this nts run was trained without a navigator guide'):
    inference.with_navigator_guide(unguided, 'always')
