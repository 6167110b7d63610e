"""train_and_evaluate: the training loop behind `launch/train.py`.

Resume order (first that applies): the newest checkpoint in the workdir (state
and data iterator: exact resume) -> `model.init_from` (params and BatchNorm
statistics of another run of the same model) -> `model.pretrained_path` (torchvision
backbone weights, or the backbone of another fgjax run of any method) -> random
initialisation.
"""

import functools
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np

from fgjax import checkpoint
from fgjax import config_lib
from fgjax import models
from fgjax import train_step as ts
from fgjax.data import pipeline
from fgjax.data import registry


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _append_jsonl(path: str, row: dict) -> None:
  if jax.process_index() == 0:
    with open(path, 'a') as f:
      f.write(json.dumps(row) + '\n')


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def open_sources(config):
  """Train and eval sources and the class count; stops if data is not prepared."""
  data_dir = os.path.expanduser(config.data.data_dir)
  builder_config = config.data.builder_config or None
  if config.data.name in registry.SYNTHETIC:
    # Synthetic sets need no download: generate them on first use (main process only).
    if jax.process_index() == 0:
      registry.prepare(config.data.name, data_dir, builder_config=builder_config)
    _sync_processes('synthetic data')
  builder = registry.require_prepared(config.data.name, data_dir, builder_config,
                                      config.data.on_bad_image)
  train = pipeline.TfdsSource(config.data.name, data_dir, config.data.train_split,
                              config.data.builder_config)
  test = pipeline.TfdsSource(config.data.name, data_dir, config.data.eval_split,
                             config.data.builder_config)
  return train, test, builder.info.features['label'].num_classes


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def evaluate(parallel, p_eval, state, source, spec, config) -> dict:
  """Exact metrics over every example of `source`.

  'accuracy' (the prediction), 'loss' and 'count'; region models add each head's own
  accuracy ('accuracy_global', 'accuracy_part_top1', ...; train_step.head_correct) and the
  mean of each loss term ('loss_rank', ...).
  """
  totals = {}
  for batch in pipeline.eval_batches(
      source, spec, global_batch_size=config.eval.batch_size,
      num_devices=parallel.num_local_devices, process_index=jax.process_index(),
      process_count=jax.process_count(), num_workers=config.data.num_workers):
    sums = parallel.to_host(p_eval(state, parallel.shard_batch(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = int(round(totals.pop('count')))
  if count != len(source):
    raise RuntimeError(f'Evaluation saw {count} examples, the split has {len(source)}.')
  metrics = {('accuracy' + k[len('correct'):] if k.startswith('correct') else k): v / count
             for k, v in totals.items()}
  return {**metrics, 'count': count}


def _heads_summary(metrics: dict) -> str:
  """' (global 0.91, part_top1 0.55)' for the heads other than the prediction, or ''."""
  heads = [f'{k[len("accuracy_"):]} {v:.4f}' for k, v in sorted(metrics.items())
           if k.startswith('accuracy_')]
  return f' (heads: {", ".join(heads)})' if heads else ''


def build_model_and_optimizer(config, num_classes: int, steps_per_epoch: int):
  """(model, lr schedule, optax transformation) as `config` describes them."""
  model = models.build_model(config.model, num_classes, bn_axis_name=ts.AXIS)
  schedule = ts.lr_schedule(config.train.base_lr, steps_per_epoch, config.train.lr_decay_epochs,
                            config.train.lr_decay_factor, config.train.epochs,
                            config.train.warmup_epochs)
  tx = ts.make_optimizer(
      schedule, momentum=config.train.momentum, weight_decay=config.train.weight_decay,
      backbone_lr_mult=config.train.pretrained_lr_mult if config.model.pretrained_path else 1.0,
      grad_clip_norm=config.train.grad_clip_norm)
  return model, schedule, tx


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_steps: int | None = None) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Args:
    config: a config from `configs/` (see fgjax.config_lib for every key).
    workdir: output folder: config.json, metrics.jsonl, checkpoints/, best/.
    stop_after_steps: stop (after saving) once this global step is reached, as a
      preemption would; the next call resumes. None: train to the end.

  Returns:
    The final eval metrics ({'accuracy', 'loss', 'count'}) plus 'step'.
  """
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')

  parallel = ts.Parallel(config.train.parallelism)
  num_devices = len(parallel.devices)
  if config.train.batch_size % num_devices:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible '
                     f'by the device count {num_devices}.')
  if config.eval.batch_size % num_devices:
    raise ValueError(f'config.eval.batch_size={config.eval.batch_size} is not divisible '
                     f'by the device count {num_devices}.')

  train_source, test_source, num_classes = open_sources(config)
  spec = pipeline.ImageSpec(config.data.image_size, config.data.resize_size)
  steps_per_epoch = len(train_source) // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} exceeds the '
                     f'{len(train_source)} training examples.')
  total_steps = config.train.epochs * steps_per_epoch
  eval_every = config.train.eval_every_epochs * steps_per_epoch

  model, schedule, tx = build_model_and_optimizer(config, num_classes, steps_per_epoch)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = ts.create_train_state(model, tx, init_rng, config.data.image_size)

  train_iter = pipeline.make_train_iterator(
      train_source, spec, global_batch_size=config.train.batch_size, seed=config.seed,
      num_devices=parallel.num_local_devices, process_index=jax.process_index(),
      process_count=jax.process_count(), num_workers=config.data.num_workers,
      sampler=config.data.sampler, classes_per_batch=config.data.classes_per_batch)
  ckpt = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  state = _initial_state(config, ckpt, state, train_iter)
  start_step = int(state.step)
  state = parallel.replicate(state)

  p_train = parallel.map(functools.partial(ts.train_step, model=model, tx=tx,
                                           schedule=schedule, rng=step_rng), donate_state=True)
  p_eval = parallel.map(functools.partial(ts.eval_step, model=model))
  _log(f'fgjax: {config.model.name}/{config.model.backbone} on {config.data.name}: '
       f'{len(train_source)} train / {len(test_source)} test images, {num_classes} classes, '
       f'{num_devices} devices, {steps_per_epoch} steps/epoch, {total_steps} steps'
       + (f', resuming at step {start_step}' if start_step else ''))

  pending, last_time, last_step = [], time.time(), start_step
  eval_metrics = None
  end = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
  for step in range(start_step + 1, end + 1):
    state, metrics = p_train(state, parallel.shard_batch(next(train_iter)))
    pending.append(metrics)
    if step % config.train.log_every_steps == 0 or step == end:
      rows = [parallel.to_host(m) for m in pending]
      mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
      if not all(math.isfinite(v) for v in mean.values()):
        raise NonFiniteLossError(f'Non-finite training metrics at step {step}: {mean}.')
      now = time.time()
      rate = (step - last_step) * config.train.batch_size / max(now - last_time, 1e-9)
      eta = (total_steps - step) * (now - last_time) / max(step - last_step, 1)
      _log(f'step {step}/{total_steps} (epoch {step / steps_per_epoch:.1f}) | '
           f'loss {mean["loss"]:.4f} | acc {mean["accuracy"]:.3f} | lr {mean["lr"]:.2e} | '
           f'{rate:.1f} img/s | ETA {_format_eta(eta)}')
      _append_jsonl(metrics_path, {'step': step, 'split': 'train', 'images_per_s': rate,
                                   **mean})
      pending, last_time, last_step = [], now, step
    if step % eval_every == 0 or step == total_steps:
      eval_metrics = evaluate(parallel, p_eval, state, test_source, spec, config)
      _log(f'eval at step {step}: accuracy {eval_metrics["accuracy"]:.4f} '
           f'loss {eval_metrics["loss"]:.4f} on {eval_metrics["count"]} images'
           f'{_heads_summary(eval_metrics)}')
      _append_jsonl(metrics_path, {'step': step, 'split': 'eval', **eval_metrics})
      ckpt.save_best(step, parallel.to_host(state), eval_metrics['accuracy'])
      last_time = time.time()  # Evaluation time is not training throughput.
    if step % config.train.checkpoint_every_steps == 0 or step == end:
      ckpt.save(step, parallel.to_host(state), train_iter)
  ckpt.wait()
  ckpt.close()
  if eval_metrics is None and end == total_steps:
    eval_metrics = evaluate(parallel, p_eval, state, test_source, spec, config)
  if eval_metrics is not None and end == total_steps:
    _log(f'final test accuracy: {eval_metrics["accuracy"]:.4f} '
         f'({eval_metrics["count"]} images){_heads_summary(eval_metrics)}')
  return {**(eval_metrics or {}), 'step': end, 'state': parallel.to_host(state)}


def _initial_state(config, ckpt, state, train_iter):
  """Applies the resume order of the module docstring to a fresh `state`."""
  if ckpt.latest_step() is not None:
    return ckpt.restore(checkpoint.abstract_like(state), train_iter)
  if config.model.init_from:
    restored, _ = checkpoint.restore_state_only(config.model.init_from,
                                                checkpoint.abstract_like(state))
    return state.replace(params=restored.params, batch_stats=restored.batch_stats)
  if config.model.pretrained_path:
    from fgjax.models import pretrained  # pylint: disable=g-import-not-at-top
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    if not os.path.exists(os.path.expanduser(config.model.pretrained_path)):
      raise FileNotFoundError(
          f'config.model.pretrained_path={config.model.pretrained_path!r} does not exist '
          f'(expected torchvision weights or a fgjax workdir).')
    if pretrained.is_fgjax_run(config.model.pretrained_path):
      variables = pretrained.load_backbone_from_run(config.model.pretrained_path, variables)
    else:
      variables = pretrained.load_pretrained_backbone(config.model.pretrained_path, variables)
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return state
