"""Checkpoints: the only module that imports orbax.

A checkpoint is a composite of the train state (params, batch_stats, opt_state,
step) and the grain iterator's state, so a rerun resumes mid-epoch with the same
data order and the same learning-rate step. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a crash never leaves a
half-written checkpoint that looks valid.

Layout inside the workdir:
  checkpoints/<step>/             the last `keep` checkpoints (state + data iterator)
  best/<step>/                    the state with the best eval accuracy so far
  checkpoints_unreadable/<step>/  checkpoints that failed to restore, moved aside

A checkpoint that cannot be read (truncated or garbled files) is not fatal: the
restore falls back to the one before it, with a warning. Training moves the
unreadable one aside, so that saves and later reruns no longer meet it;
evaluate/predict only read, so they leave it in place. A checkpoint of another
model (another tree or other array shapes) is not unreadable: it stops the restore
with `CheckpointMismatchError`, and nothing is moved.
"""

import os
import warnings

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class CheckpointMismatchError(ValueError):
  """A checkpoint holds another model: its tree or array shapes differ from the target."""


class UnreadableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


class UnreadableCheckpointWarning(UserWarning):
  """A checkpoint could not be read; an older one is used instead."""


class Checkpointer:
  """Saves and restores train state + data iterator in `workdir`."""

  def __init__(self, workdir: str, keep: int):
    self._dir = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self._dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    # Its own barrier prefix: on multi-host runs both managers may save the same step,
    # and barriers with equal names would pair one manager's save with the other's.
    self._best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m['accuracy'], best_mode='max',
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='best')))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iter) -> None:
    """Saves host-side `state` (a pytree of arrays) and `data_iter`'s position."""
    self._best.wait_until_finished()  # One asynchronous save at a time.
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter)))

  def restore(self, abstract_state, data_iter, step: int | None = None):
    """Restores the state (shaped like `abstract_state`) and moves `data_iter`.

    Takes `step`, else the newest checkpoint that can be read. The newer ones that
    cannot are then moved to checkpoints_unreadable/, with a warning; only then, so
    a fault that makes every checkpoint fail moves none.

    Raises:
      CheckpointMismatchError: a checkpoint holds another model (nothing is moved).
      UnreadableCheckpointError: no checkpoint can be read (nothing is moved).
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for candidate in steps:
      state, error = _restore_step(os.path.join(self._dir, str(candidate)), abstract_state,
                                   data_iter)
      if error is None:
        self._move_aside(failures, restored_step=candidate)
        return state
      failures.append((candidate, error))
    raise UnreadableCheckpointError(
        _none_readable_message(self._dir, [(f'step {s}', e) for s, e in failures]))

  def _move_aside(self, failures, restored_step: int) -> None:
    """Moves the unreadable steps out of the folder orbax manages (process 0 only)."""
    if not failures:
      return
    if jax.process_index() == 0:
      aside = self._dir + '_unreadable'
      os.makedirs(aside, exist_ok=True)
      for step, error in failures:
        dest = _free_name(os.path.join(aside, str(step)))
        os.rename(os.path.join(self._dir, str(step)), dest)
        warnings.warn(
            f'Checkpoint step {step} in {self._dir} is unreadable ({_describe(error)}); '
            f'moved it to {dest} and restored step {restored_step} instead.',
            UnreadableCheckpointWarning, stacklevel=3)
    sync_processes('fgjax: unreadable checkpoints moved aside')
    # Forget the moved steps: orbax skips a save at or below its newest step.
    self._manager.reload()

  def save_best(self, step: int, state, accuracy: float) -> None:
    """Keeps `state` under best/ if `accuracy` beats every earlier one."""
    self._manager.wait_until_finished()  # One asynchronous save at a time.
    self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                    metrics={'accuracy': float(accuracy)})

  def wait(self) -> None:
    """Blocks until every asynchronous write is on disk."""
    self._manager.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
    self._best.close()


def abstract_like(tree):
  """Shape/dtype structs of `tree`, the restore target orbax expects."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_state_only(checkpoint_dir: str, abstract_state,
                       prefer: tuple[str, ...] = ('checkpoints', 'best', '')):
  """The train state of a run's checkpoint, without its data iterator.

  Args:
    checkpoint_dir: a run's workdir (or a folder of orbax step folders).
    abstract_state: the restore target (`abstract_like(fresh_state)`).
    prefer: sub-folders to look in, first match wins: ('checkpoints', ...) takes
      the newest checkpoint (init_from), ('best', ...) the best-accuracy one. A
      checkpoint that cannot be read is skipped with a warning and left in place:
      the next candidate is the step before it, then the next sub-folder.

  Returns:
    (state, path of the checkpoint folder it came from).
  """
  return _restore_newest(checkpoint_dir, prefer, abstract_state)


def restore_raw(checkpoint_dir: str, prefer: tuple[str, ...] = ('checkpoints', 'best')):
  """A run's newest (else best) saved train state as saved, without a restore target.

  For reading parts of a run of another model (fgjax.models.pretrained). Returns
  (the state as nested dicts of NumPy arrays, path of the checkpoint folder).
  """
  return _restore_newest(checkpoint_dir, prefer, None)


def _restore_newest(checkpoint_dir: str, prefer: tuple[str, ...], abstract_state):
  """(state, path) from the newest readable step of the first sub-folder of `prefer`."""
  checkpoint_dir = os.path.abspath(os.path.expanduser(checkpoint_dir))
  failures = []
  for sub in prefer:
    path = os.path.join(checkpoint_dir, sub)
    if not os.path.isdir(path):
      continue
    with ocp.CheckpointManager(path) as manager:
      steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
      state, error = _restore_step(os.path.join(path, str(step)), abstract_state)
      if error is None:
        return state, os.path.join(path, str(step))
      failures.append((os.path.join(path, str(step)), error))
      if jax.process_index() == 0:
        warnings.warn(f'Checkpoint {failures[-1][0]} is unreadable ({_describe(error)}); '
                      'trying the next one (left in place).', UnreadableCheckpointWarning,
                      stacklevel=3)
  if failures:
    raise UnreadableCheckpointError(_none_readable_message(checkpoint_dir, failures))
  looked = ', '.join(p + '/' for p in prefer if p)
  itself = ' and the folder itself' if '' in prefer else ''
  raise FileNotFoundError(f'No checkpoint found under {checkpoint_dir} (looked in '
                          f'{looked}{itself}).')


def _restore_step(step_dir: str, abstract_state, data_iter=None):
  """(state, None), or (None, the error that makes the checkpoint in `step_dir` unreadable).

  Moves `data_iter` (if given) to the checkpoint's position. Every process gets the
  same answer: a checkpoint that fails to read on one process fails on all.

  Raises:
    CheckpointMismatchError: the checkpoint holds another tree or other shapes than
      `abstract_state` (checked first, from its metadata; not for a None target).
  """
  path = epath.Path(step_dir)
  handler = ocp.StandardCheckpointHandler()
  state, error, differences = None, None, []
  try:
    try:
      if abstract_state is not None:
        differences = _differences(handler.metadata(path / 'state'), abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # Metadata that cannot be read: the checkpoint is unreadable.
    if _on_any_process(bool(differences)):
      shown = (f'{len(differences)} differences: ' + '; '.join(differences[:4])
               + ('; ...' if len(differences) > 4 else '')) if differences else 'on another process'
      raise CheckpointMismatchError(
          f'{step_dir} holds another model than the one being restored ({shown}). Was the '
          'workdir used with another model, class count or image size? Nothing was moved.')
    if not _on_any_process(error is not None):
      # Item by item through the handlers, not CheckpointManager.restore: its barrier
      # would keep the other processes waiting for one whose read failed.
      try:
        state = handler.restore(path / 'state', args=ocp.args.StandardRestore(abstract_state))
        if data_iter is not None:
          grain.checkpoint.CheckpointHandler().restore(
              path / 'data_iter', args=grain.checkpoint.CheckpointRestore(data_iter))
      except Exception as e:  # pylint: disable=broad-except
        error = e  # Any read or decoding failure of a checkpoint of this model.
  finally:
    handler.close()
  if _on_any_process(error is not None):
    return None, error or RuntimeError('it failed to read on another process')
  return state, None


def _differences(metadata, abstract_state) -> list[str]:
  """What tells the saved tree from the target: keys in one only, shapes that differ."""
  saved, wanted = _shapes_by_key(metadata), _shapes_by_key(abstract_state)
  out = [f'{k} only in the checkpoint' for k in saved if k not in wanted]
  out += [f'{k} not in the checkpoint' for k in wanted if k not in saved]
  out += [f'{k}: checkpoint {saved[k]}, expected {wanted[k]}' for k in wanted
          if k in saved and None not in (saved[k], wanted[k]) and saved[k] != wanted[k]]
  return out


def _shapes_by_key(tree) -> dict:
  """{'params/head/kernel': (64, 10), ...}: dict keys, attribute names, indices alike."""
  def name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(name(k) for k in path): tuple(leaf.shape) if hasattr(leaf, 'shape') else None
          for path, leaf in leaves}


def _none_readable_message(folder: str, failures) -> str:
  lines = [f'  {where}: {_describe(error)}' for where, error in failures]
  return (f'No checkpoint under {folder} could be read (nothing was moved or deleted; '
          'restore one by hand, or remove them to start from scratch):\n' + '\n'.join(lines))


def _describe(error: Exception, limit: int = 800) -> str:
  """'Type: message', its first line without tensorstore's spec, cut to `limit` characters."""
  lines = str(error).strip().splitlines() or ['']
  text = f'{type(error).__name__}: {lines[0].split(" [tensorstore_spec=")[0]}'
  return text if len(text) <= limit else text[:limit] + '...'


def _free_name(path: str) -> str:
  """`path`, else `path.1`, `path.2`, ...: the first that does not exist."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}.{n}'
  return candidate


def _on_any_process(flag: bool) -> bool:
  """`flag` or-ed over every JAX process, so that all take the same branch."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def sync_processes(name: str) -> None:
  """A barrier over every JAX process (nothing on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
