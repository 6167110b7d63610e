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
from fgjax import metrics_log
from fgjax import models
from fgjax import preemption
from fgjax import tensorboard_log
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
    with open(path, 'a+b') as f:
      end = f.seek(0, os.SEEK_END)
      if end:  # A line a crash cut short has no newline: this row starts a line of its own.
        f.seek(end - 1)
        if f.read(1) != b'\n':
          f.write(b'\n')
      f.write((json.dumps(row) + '\n').encode())


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
    checkpoint.sync_processes('synthetic data')
  builder = registry.require_prepared(config.data.name, data_dir, builder_config,
                                      config.data.on_bad_image)
  train = pipeline.TfdsSource(config.data.name, data_dir, config.data.train_split,
                              config.data.builder_config)
  test = pipeline.TfdsSource(config.data.name, data_dir, config.data.eval_split,
                             config.data.builder_config)
  return train, test, builder.info.features['label'].num_classes


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


def _report_eval(workdir: str, tensorboard, row: dict, host_state) -> None:
  """An eval row's TensorBoard scalars and region pictures, and curves.png anew."""
  tensorboard.write_row(row)
  tensorboard.write_pictures(row['step'], host_state)
  if jax.process_index() == 0:
    try:
      metrics_log.write_curves(workdir)
    except Exception as e:  # pylint: disable=broad-except  # A picture never stops training.
      _log(f'{workdir}/curves.png not written ({type(e).__name__}: {e}); training goes on.')


def _heads_summary(metrics: dict) -> str:
  """' (global 0.91, part_top1 0.55)' for the heads other than the prediction, or ''
  (the prediction's top-5, 'accuracy_top5', is in the line itself)."""
  heads = [f'{k[len("accuracy_"):]} {v:.4f}' for k, v in sorted(metrics.items())
           if k.startswith('accuracy_') and k != 'accuracy_top5']
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


class _Progress:
  """Per-step metrics -> checks, progress lines and metrics.jsonl rows.

  Steps are read back from the devices only at a check (log steps, and before every
  evaluation and checkpoint), so the host does not wait for each step. A step whose update
  was skipped (train.skip_nonfinite_steps > 0) is counted and left out of the means; too
  many in a row, or any non-finite metric when skipping is off, raises before anything of
  those steps is evaluated or saved.
  """

  def __init__(self, config, parallel, metrics_path, total_steps, steps_per_epoch, start_step,
               tensorboard):
    self._config, self._parallel, self._path = config, parallel, metrics_path
    self._tensorboard = tensorboard
    self._total, self._per_epoch = total_steps, steps_per_epoch
    self._unread, self._rows, self._skipped, self._in_row = [], [], 0, 0
    self._time, self._step = time.time(), start_step

  def add(self, metrics) -> None:
    self._unread.append(metrics)

  def check(self, step: int) -> None:
    """Reads back the steps up to `step`; raises NonFiniteLossError as the class says."""
    limit = self._config.train.skip_nonfinite_steps
    first = step - len(self._unread) + 1
    for i, row in enumerate(self._parallel.to_host(self._unread)):
      if limit and row['skipped'] > 0:
        self._skipped, self._in_row = self._skipped + 1, self._in_row + 1
        if self._in_row >= limit:
          raise NonFiniteLossError(
              f'{self._in_row} steps in a row up to step {first + i} had a non-finite loss or '
              f'gradient (train.skip_nonfinite_steps={limit}); their updates were skipped, '
              'so the parameters are those of the last good step.')
        continue
      self._in_row = 0
      bad = {k: float(v) for k, v in row.items() if not math.isfinite(float(v))}
      if bad:
        raise NonFiniteLossError(f'Non-finite training metrics at step {first + i}: {bad}. '
                                 'Nothing after the last checkpoint was saved.')
      self._rows.append(row)
    self._unread = []

  def log(self, step: int) -> None:
    """Checks, then writes the progress line and the metrics.jsonl row of `step`."""
    self.check(step)
    now = time.time()
    rate = (step - self._step) * self._config.train.batch_size / max(now - self._time, 1e-9)
    eta = (self._total - step) * (now - self._time) / max(step - self._step, 1)
    row = {'step': step, 'split': 'train', 'images_per_s': rate}
    if self._rows:
      row.update({k: float(np.mean([r[k] for r in self._rows])) for k in self._rows[0]})
      _log(f'step {step}/{self._total} (epoch {step / self._per_epoch:.1f}) | '
           f'loss {row["loss"]:.4f} | acc {row["accuracy"]:.3f} | lr {row["lr"]:.2e} | '
           f'{rate:.1f} img/s | ETA {_format_eta(eta)}')
    if self._config.train.skip_nonfinite_steps:
      row['skipped_steps'] = self._skipped
      if self._skipped:
        _log(f'step {step}: {self._skipped} update(s) skipped for a non-finite loss or '
             'gradient since the last line.')
    _append_jsonl(self._path, row)
    self._tensorboard.write_row(row)
    self._rows, self._skipped, self._time, self._step = [], 0, now, step

  def pause(self) -> None:
    """Evaluation time is not training throughput."""
    self._time = time.time()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_steps: int | None = None) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  Args:
    config: a config from `configs/` (see fgjax.config_lib for every key).
    workdir: output folder: config.json, metrics.jsonl, checkpoints/, best/.
    stop_after_steps: stop (after saving) once this global step is reached, as a
      preemption would; the next call resumes. None: train to the end.

  Returns:
    The final eval metrics ({'accuracy', 'loss', 'count'}) plus 'step' and 'state'.

  Raises:
    preemption.TrainingStopped: after a SIGTERM or SIGINT, once the checkpoint of the
      step in progress is saved.
    NonFiniteLossError: a non-finite loss (see train.skip_nonfinite_steps).
  """
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  parallel = ts.Parallel(config.train.parallelism)
  num_devices = len(parallel.devices)
  for key in ('train', 'eval'):
    if config[key].batch_size % num_devices:
      raise ValueError(f'config.{key}.batch_size={config[key].batch_size} is not divisible '
                       f'by the device count {num_devices}.')
  _start_workdir(config, workdir)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')

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

  p_train = parallel.map(functools.partial(
      ts.train_step, model=model, tx=tx, schedule=schedule, rng=step_rng,
      skip_nonfinite=config.train.skip_nonfinite_steps > 0), donate_state=True)
  p_eval = parallel.map(functools.partial(ts.eval_step, model=model))
  _log(f'fgjax: {config.model.name}/{config.model.backbone} on {config.data.name}: '
       f'{len(train_source)} train / {len(test_source)} test images, {num_classes} classes, '
       f'{num_devices} devices, {steps_per_epoch} steps/epoch, {total_steps} steps'
       + (f', resuming at step {start_step}' if start_step else ''))

  tensorboard = tensorboard_log.open_log(config, workdir, start_step, model, test_source, spec)
  progress = _Progress(config, parallel, metrics_path, total_steps, steps_per_epoch,
                       start_step, tensorboard)
  eval_metrics = None
  end = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
  try:
    with preemption.StopSignals() as stop:
      for step in range(start_step + 1, end + 1):
        state, metrics = p_train(state, parallel.shard_batch(next(train_iter)))
        progress.add(metrics)
        stopping = stop.reached(step)
        evaluating = step % eval_every == 0 or step == total_steps
        saving = step % config.train.checkpoint_every_steps == 0 or step == end or stopping
        if step % config.train.log_every_steps == 0 or step == end:
          progress.log(step)
        elif evaluating or saving:
          progress.check(step)  # Never evaluate or save a non-finite state.
        # One host copy of the state for the best/ save, the pictures and the checkpoint.
        host_state = parallel.to_host(state) if evaluating or saving else None
        if evaluating:
          eval_metrics = evaluate(parallel, p_eval, state, test_source, spec, config)
          _log(f'eval at step {step}: accuracy {eval_metrics["accuracy"]:.4f} '
               f'(top-5 {eval_metrics["accuracy_top5"]:.4f}) loss {eval_metrics["loss"]:.4f} '
               f'on {eval_metrics["count"]} images{_heads_summary(eval_metrics)}')
          eval_row = {'step': step, 'split': 'eval', **eval_metrics}
          _append_jsonl(metrics_path, eval_row)
          ckpt.save_best(step, host_state, eval_metrics['accuracy'])
          _report_eval(workdir, tensorboard, eval_row, host_state)
          progress.pause()
        if saving:
          ckpt.save(step, host_state, train_iter)
        if stopping:
          _log(f'{stop.signal_name} received: stopped after step {step}.')
          raise preemption.TrainingStopped(step, stop.signal_name, workdir)
  finally:  # A save under way completes, also when training stops on an error.
    ckpt.wait()
    ckpt.close()
    tensorboard.close()
  if eval_metrics is None and end == total_steps:
    eval_metrics = evaluate(parallel, p_eval, state, test_source, spec, config)
  if eval_metrics is not None and end == total_steps:
    _log(f'final test accuracy: {eval_metrics["accuracy"]:.4f} '
         f'(top-5 {eval_metrics["accuracy_top5"]:.4f}, {eval_metrics["count"]} images)'
         f'{_heads_summary(eval_metrics)}')
  return {**(eval_metrics or {}), 'step': end, 'state': parallel.to_host(state)}


def _start_workdir(config, workdir: str) -> None:
  """Creates `workdir`, or checks a rerun's config against the config.json it holds.

  A difference in a key that decides the model, the data or the optimisation stops here,
  before anything is written (config_lib.rerun_differences). Keys that only extend or
  log may change: config.json is updated and each change appended to
  config_changes.jsonl. Files are written by process 0, config.json atomically.
  """
  path = os.path.join(workdir, 'config.json')
  allowed = []
  saved = config_lib.read_saved(workdir)
  if saved is not None:
    blocking, allowed = config_lib.rerun_differences(saved, config)
    if blocking:
      raise ValueError(config_lib.rerun_error_message(workdir, blocking))
    if not allowed:
      return
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    if allowed:
      _append_jsonl(os.path.join(workdir, 'config_changes.jsonl'), {
          'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
          'changed': {k: {'saved': old, 'now': new} for k, old, new in allowed}})
      _log('config changes allowed on a rerun: ' + ', '.join(
          f'{k} {old!r} -> {new!r}' for k, old, new in allowed))
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(path + '.tmp', path)


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
          '(expected a ResNet weight file: torchvision .pth, timm .safetensors / .bin / '
          'train.py checkpoint, or .npz; a Hugging Face hub snapshot folder; or a fgjax '
          'workdir).')
    if pretrained.is_fgjax_run(config.model.pretrained_path):
      variables = pretrained.load_backbone_from_run(config.model.pretrained_path, variables)
    else:
      variables = pretrained.load_pretrained_backbone(config.model.pretrained_path, variables)
    return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return state
