"""Checkpoints: the only module that imports orbax.

A checkpoint is a composite of the train state (params, batch_stats, opt_state,
step) and the grain iterator's state, so a rerun resumes mid-epoch with the same
data order and the same learning-rate step. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a crash never leaves a
half-written checkpoint that looks valid.

Layout inside the workdir:
  checkpoints/<step>/  the last `keep` checkpoints (state + data iterator)
  best/<step>/         the state with the best eval accuracy so far
"""

import os

import grain
import jax
import orbax.checkpoint as ocp


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
    """Restores the state (shaped like `abstract_state`) and moves `data_iter`."""
    step = self._manager.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored['state']

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
      the newest checkpoint (init_from), ('best', ...) the best-accuracy one.

  Returns:
    (state, path of the checkpoint folder it came from).
  """
  return _restore_newest(checkpoint_dir, prefer, ocp.args.StandardRestore(abstract_state))


def _restore_newest(checkpoint_dir: str, prefer: tuple[str, ...], restore_args):
  """(state, path) from the newest step of the first sub-folder of `prefer` that has one."""
  checkpoint_dir = os.path.abspath(os.path.expanduser(checkpoint_dir))
  for sub in prefer:
    path = os.path.join(checkpoint_dir, sub)
    if not os.path.isdir(path):
      continue
    with ocp.CheckpointManager(path) as manager:
      step = manager.latest_step()
      if step is None:
        continue
      restored = manager.restore(step, args=ocp.args.Composite(state=restore_args))
      return restored['state'], os.path.join(path, str(step))
  looked = ', '.join(p + '/' for p in prefer if p)
  itself = ' and the folder itself' if '' in prefer else ''
  raise FileNotFoundError(f'No checkpoint found under {checkpoint_dir} (looked in '
                          f'{looked}{itself}).')


def restore_raw(checkpoint_dir: str, prefer: tuple[str, ...] = ('checkpoints', 'best')):
  """A run's newest (else best) saved train state as saved, without a restore target.

  For reading parts of a run of another model (fgjax.models.pretrained). Returns
  (the state as nested dicts of NumPy arrays, path of the checkpoint folder).
  """
  return _restore_newest(checkpoint_dir, prefer, ocp.args.StandardRestore())
