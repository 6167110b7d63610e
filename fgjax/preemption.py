"""Stopping cleanly when asked: SIGTERM (how Cloud TPU VMs and SLURM announce preemption)
and SIGINT (Ctrl-C, a notebook's interrupt).

While a `StopSignals` is active, the first such signal only sets a flag; the training loop
asks `reached(step)` after every step and, when it says so, saves a checkpoint at that
step and raises `TrainingStopped`. A second SIGINT interrupts at once (KeyboardInterrupt).

One process: the flag is this process's. Several processes (jax.distributed): they must
stop at the same step, or their collectives would wait for each other forever. JAX's
preemption sync manager does that: it catches SIGTERM on any host, and every host's
`reached_preemption_sync_point(step)` turns true at the same step. A SIGINT is sent on to
this process as SIGTERM so that it takes the same path.
"""

import os
import signal
import threading

import jax


class TrainingStopped(Exception):
  """Training stopped on a signal after saving a checkpoint; rerunning resumes."""

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(f'Stopped by {signal_name} after step {step}; the checkpoint of step '
                     f'{step} is saved in {workdir}. Rerun the same command to resume.')
    self.step, self.signal_name, self.workdir = step, signal_name, workdir


def _sync_manager_active() -> bool:
  """Whether jax.distributed.initialize() started JAX's preemption sync manager."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


class StopSignals:
  """Context manager: SIGTERM and SIGINT ask for a stop at the end of the current step."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    self._collective = False

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Python takes signals in the main thread only: nothing to install.
    self._collective = jax.process_count() > 1 and _sync_manager_active()
    for sig in (signal.SIGTERM, signal.SIGINT):
      if sig == signal.SIGTERM and self._collective:
        continue  # JAX's preemption notifier handles SIGTERM.
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *unused):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, unused_frame):
    if signum == signal.SIGINT and self.signal_name == 'SIGINT':
      raise KeyboardInterrupt  # Asked twice: stop now.
    self.signal_name = signal.Signals(signum).name
    if self._collective:
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process). Call every step."""
    if self._collective:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or 'SIGTERM'
        return True
      return False
    return self.signal_name is not None
