"""Train state, optimiser, and the per-core train/eval steps.

The steps are written for ONE core with the collective axis named 'batch'
(`lax.pmean` of gradients, metrics and BatchNorm statistics). `Parallel` maps
them over all devices either with `jax.pmap` or with `jax.jit(jax.shard_map)`
over a 1-D device mesh; the per-core code is the same for both.
"""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from fgjax.models import regions as regions_lib

AXIS = 'batch'
# ImageNet statistics on the 0..255 scale (the pretrained backbones expect them).
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


def normalise(images_uint8):
  """uint8 [..., H, W, 3] -> float32, ImageNet mean/std normalised."""
  return (images_uint8.astype(jnp.float32) - MEAN_RGB) / STDDEV_RGB


def lr_schedule(base_lr: float, steps_per_epoch: int, decay_epochs: int, decay_factor: float,
                total_epochs: int, warmup_epochs: float = 0.0) -> optax.Schedule:
  """Step decay: base_lr * decay_factor ** floor(epoch / decay_epochs).

  With `warmup_epochs` > 0 the lr first rises linearly from base_lr / warmup_steps
  to base_lr over that many epochs (not in the papers' recipe, where it is 0).
  """
  boundaries = {e * steps_per_epoch: decay_factor
                for e in range(decay_epochs, total_epochs, decay_epochs)}
  decay = optax.piecewise_constant_schedule(base_lr, boundaries)
  warmup_steps = int(round(warmup_epochs * steps_per_epoch))
  if warmup_steps <= 0:
    return decay
  return lambda step: jnp.minimum(1.0, (step + 1) / warmup_steps) * decay(step)


def make_optimizer(schedule: optax.Schedule, *, momentum: float, weight_decay: float,
                   backbone_lr_mult: float,
                   grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay; the backbone's lr is scaled.

  Weight decay is added to the gradient before momentum, as PyTorch's SGD does
  (the reference implementations are PyTorch). Parameters under the top-level
  'backbone' module get `backbone_lr_mult` times the lr (0.1 for a pretrained
  backbone in the papers' recipe). `grad_clip_norm` > 0 first scales the whole
  gradient down to at most that global L2 norm (not in the papers' recipe).
  """
  def sgd(mult):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lambda step: schedule(step) * mult, momentum=momentum))

  def label(params):
    return {k: jax.tree.map(lambda _, k=k: 'backbone' if k == 'backbone' else 'head', v)
            for k, v in params.items()}

  tx = optax.multi_transform({'backbone': sgd(backbone_lr_mult), 'head': sgd(1.0)}, label)
  if grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def create_train_state(model, tx, rng, image_size: int) -> TrainState:
  """Initialises parameters (on the host's default device) and the optimiser."""
  dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def train_step(state: TrainState, batch, *, model, tx, schedule, rng,
               skip_nonfinite: bool = False):
  """One SGD step on this core's share of the batch; returns (state, metrics).

  With `skip_nonfinite`, a step whose global loss or gradient norm is not finite leaves
  params, BatchNorm statistics and optimiser state as they were (only the step count
  moves on, with the data) and reports metrics['skipped'] = 1.
  """
  images, labels = normalise(batch['image']), batch['label']
  step_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), lax.axis_index(AXIS))

  def loss_fn(params):
    outputs, mutated = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images, labels, train=True,
        mutable=['batch_stats'], rngs={'dropout': step_rng})
    losses = type(model).per_example_losses(outputs, labels)
    return jnp.mean(losses['loss']), (outputs, losses, mutated)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (outputs, losses, mutated)), grads = grad_fn(state.params)
  grads = lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # BatchNorm averages its batch statistics over AXIS already when the model is
  # built with bn_axis_name=AXIS; the pmean keeps replicas identical otherwise.
  batch_stats = lax.pmean(mutated.get('batch_stats', state.batch_stats), AXIS)
  metrics = {k: jnp.mean(v) for k, v in losses.items()}
  metrics['accuracy'] = jnp.mean(jnp.argmax(outputs['logits'], -1) == labels)
  metrics = lax.pmean(metrics, AXIS)
  metrics['grad_norm'] = optax.tree.norm(grads)  # Before clipping and weight decay.
  metrics['lr'] = schedule(state.step)
  if skip_nonfinite:
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, batch_stats = keep(params, state.params), keep(batch_stats, state.batch_stats)
    opt_state = keep(opt_state, state.opt_state)
    metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def head_correct(outputs, labels) -> dict:
  """Per-example 0/1 correctness [B] of the prediction and of every other classifier head.

  'correct' is the prediction ('logits'); 'correct_<head>' for each other '<head>_logits'
  output ([B, C]), and for region heads ([B, m, C]) 'correct_<head>_top1', the region
  ranked first alone. Region models show here how much each branch knows on its own.
  """
  out = {}
  for key, logits in outputs.items():
    if key != 'logits' and not key.endswith('_logits'):
      continue
    name = 'correct' if key == 'logits' else 'correct_' + key[:-len('_logits')]
    if logits.ndim == 3:
      logits, name = logits[:, 0], name + '_top1'
    out[name] = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return out


def top_k_correct(logits, labels, k: int = 5):
  """1.0 where the label is among the k highest of logits [B, C], else 0.0; [B].

  Ties rank the lower class index first, as argmax does (so k=1 is argmax == label);
  k is capped at C (with C <= k every example counts as correct).
  """
  own = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  lower_index = jnp.arange(logits.shape[-1]) < labels[:, None]
  ahead = (logits > own) | ((logits == own) & lower_index)
  return (jnp.sum(ahead, axis=-1) < k).astype(jnp.float32)


def eval_sums(outputs, labels, mask, *, model) -> dict:
  """This core's masked sums: count, every head's correct, top-5 correct, every loss.

  'correct_top5': the label among the min(5, C) highest prediction logits (top_k_correct).
  """
  per_example = {**type(model).per_example_losses(outputs, labels),
                 **head_correct(outputs, labels),
                 'correct_top5': top_k_correct(outputs['logits'], labels, 5)}
  sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
  sums['count'] = jnp.sum(mask)
  return sums


def eval_step(state: TrainState, batch, *, model):
  """Masked sums (`eval_sums`) over the whole (global) batch."""
  outputs = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                        normalise(batch['image']), train=False)
  return lax.psum(eval_sums(outputs, batch['label'], batch['mask'], model=model), AXIS)


# Model outputs that predict_step's maps carry (a key equal to one, or ending in '_' + one).
MAP_OUTPUTS = ('attention', 'anchor_scores', 'orientation_weights', 'shift_probs')


def predict_step(state: TrainState, batch, *, model, with_maps: bool = False):
  """Per-example outputs: 'probs' [B, C] (softmax), and for region models 'boxes' [B, m, 4]
  (y0, x0, y1, x1 in model-input pixels; they may reach into the zero padding) and
  'box_valid' [B, m].

  With `with_maps`, also 'maps': what each method ranks its regions by (fgjax.heatmaps
  draws them): FDL's smoothed attention 'attention' [B, h, w]; the navigators' scores
  ('anchor_scores', SCRIM's 'fpl_<stage>_anchor_scores' [B, A]) and the scores NMS ordered
  the anchors by, prior included ('selection_scores', 'fpl_<stage>_selection_scores'
  [B, A], sown by the model in regions.RANKING_SCORES); SSANet's 'orientation_weights'
  [B, K] and 'shift_probs' [B, S]; SCRIM's 'cpl_<stage>_attention' [B, h, w, G].
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  if with_maps:
    outputs, sown = model.apply(variables, normalise(batch['image']), train=False,
                                mutable=[regions_lib.RANKING_SCORES])
  else:
    outputs = model.apply(variables, normalise(batch['image']), train=False)
  result = {'probs': jax.nn.softmax(outputs['logits'].astype(jnp.float32), -1)}
  if 'boxes' in outputs:
    result['boxes'] = outputs['boxes']
  if 'box_valid' in outputs:
    result['box_valid'] = outputs['box_valid']
  if with_maps:
    maps = {k: v for k, v in outputs.items()
            if any(k == name or k.endswith('_' + name) for name in MAP_OUTPUTS)}
    # sow keeps a tuple of every value sown under a name; the model sows each once.
    maps.update({k: v[-1] for k, v in sown.get(regions_lib.RANKING_SCORES, {}).items()})
    result['maps'] = maps
  return result


class Parallel:
  """Runs per-core functions on all devices: `jax.pmap` or `jit(shard_map)`.

  Host batches come as (local_devices, per_core, ...) arrays for both modes.
  The state lives replicated on every device; `to_host` brings one copy back.
  """

  def __init__(self, mode: str, devices=None):
    if mode not in ('pmap', 'shard_map'):
      raise ValueError(f"Unknown train.parallelism {mode!r}; valid: ['pmap', 'shard_map'].")
    self.mode = mode
    self._explicit_devices = devices is not None
    self.devices = list(devices) if devices is not None else jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    if mode == 'shard_map':
      self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))

  @property
  def num_local_devices(self) -> int:
    return len(self.local_devices)

  def replicate(self, tree):
    if self.mode == 'pmap':
      # A leading device axis, laid out one slice per local device.
      sharding = NamedSharding(jax.sharding.Mesh(np.array(self.local_devices), (AXIS,)),
                               P(AXIS))
      n = self.num_local_devices
      return jax.tree.map(lambda x: jax.device_put(
          np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding), tree)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

  def to_host(self, tree):
    """One replica of a replicated tree, as NumPy arrays."""
    if self.mode == 'pmap':  # Leading device axis; this process's first slice.
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard_batch(self, batch):
    if self.mode == 'pmap':
      return batch  # pmap splits the leading (device) axis itself.
    sharding = NamedSharding(self.mesh, P(AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, x.reshape((-1,) + x.shape[2:])), batch)

  def map(self, per_core: Callable, donate_state: bool = False) -> Callable:
    """per_core(state, batch) -> outputs replicated over AXIS."""
    donate = (0,) if donate_state else ()
    if self.mode == 'pmap':
      return jax.pmap(per_core, axis_name=AXIS, donate_argnums=donate,
                      devices=self.devices if self._explicit_devices else None)
    # check_vma=False: gradients of replicated params stay per-core (as under
    # pmap) instead of being summed by shard_map's autodiff; train_step pmeans them.
    mapped = jax.shard_map(per_core, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)
