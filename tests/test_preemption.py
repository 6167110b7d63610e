"""Stops and crashes of `launch/train.py` lose nothing: SIGTERM / SIGINT save and exit 0,
kill -9 at three points resumes to the same final parameters, several hosts stop together.

Each run is a subprocess of the real command. Faults are planted by a small wrapper that
patches one fgjax function before running the command, so each lands at a known point.
Every wait is bounded: a hang fails the test instead of stalling CI.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import pytest

from fgjax import inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300

# argv: fault ('none', 'sigterm@K', 'sigint@K', 'kill_step@K', 'kill_save@K', 'kill_eval@K')
# then launch/train.py's arguments. K counts this process's train steps, checkpoint saves
# or evaluations from 1.
_WRAPPER = r'''
import itertools, os, runpy, signal, sys
import jax
jax.config.update('jax_disable_most_optimizations', True)
sys.path.insert(0, os.getcwd())
from fgjax import checkpoint, train_step as ts
from fgjax.data import pipeline
fault, k = (sys.argv[1].split('@') + ['0'])[:2]
k = int(k)
kill = lambda sig: os.kill(os.getpid(), sig)
if fault in ('sigterm', 'sigint', 'kill_step'):
  mapped = ts.Parallel.map
  def map_(self, fn, donate_state=False):
    f = mapped(self, fn, donate_state)
    if not donate_state:  # Only the train step donates its state.
      return f
    calls = itertools.count(1)
    def g(*a):
      this = next(calls)
      if this == k and fault != 'kill_step':  # Arrives as step k starts: it runs, then stops.
        kill(signal.SIGTERM if fault == 'sigterm' else signal.SIGINT)
      out = f(*a)
      if this == k and fault == 'kill_step':  # Step k dispatched and still running.
        kill(signal.SIGKILL)
      return out
    return g
  ts.Parallel.map = map_
elif fault == 'kill_save':  # The asynchronous write of the k-th checkpoint under way: kill.
  save, calls = checkpoint.Checkpointer.save, itertools.count(1)
  def save_(self, *a, **kw):
    save(self, *a, **kw)
    if next(calls) == k:
      kill(signal.SIGKILL)
  checkpoint.Checkpointer.save = save_
elif fault == 'kill_eval':  # The k-th evaluation, after its first batch: kill.
  batches, calls = pipeline.eval_batches, itertools.count(1)
  def eval_batches(*a, **kw):
    this = next(calls)
    for i, b in enumerate(batches(*a, **kw)):
      if this == k and i == 1:
        kill(signal.SIGKILL)
      yield b
  pipeline.eval_batches = eval_batches
sys.argv = ['launch/train.py'] + sys.argv[2:]
runpy.run_path('launch/train.py', run_name='__main__')
'''


def _train_args(data_dir, workdir, epochs=2):
  # 96 tiny images / batch 16: 6 steps per epoch; checkpoints every 3 steps, an
  # evaluation every epoch (after which the step's checkpoint is saved).
  return ['--config=configs/demo.py', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in (
          ('data.data_dir', data_dir), ('data.builder_config', 'tiny'),
          ('data.image_size', 32), ('data.resize_size', 36), ('train.batch_size', 16),
          ('train.epochs', epochs), ('eval.batch_size', 16), ('train.log_every_steps', 1),
          ('train.checkpoint_every_steps', 3), ('train.eval_every_epochs', 1))]


def _env(devices=1):
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_PLATFORMS': 'cpu'}


def _run(fault, data_dir, workdir, extra=(), **popen):
  return subprocess.Popen([sys.executable, '-c', _WRAPPER, fault,
                           *_train_args(data_dir, workdir), *extra],
                          cwd=REPO, env=_env(), text=True, **popen)


def _finish(fault, data_dir, workdir):
  """Runs to completion; (return code, output)."""
  proc = _run(fault, data_dir, workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out, _ = proc.communicate(timeout=TIMEOUT)
  return proc.returncode, out


def _final_params(workdir):
  state = inference.load_run(str(workdir), 'latest').state
  return int(state.step), state.params, state.batch_stats


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                if s.isdigit())


@pytest.fixture(scope='module')
def uninterrupted(demo_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  code, out = _finish('none', demo_data_dir, workdir)
  assert code == 0, out[-3000:]
  return _final_params(workdir)


def _assert_same_end(workdir, uninterrupted):
  step, params, stats = _final_params(workdir)
  assert step == uninterrupted[0] == 12
  chex.assert_trees_all_equal(params, uninterrupted[1])
  chex.assert_trees_all_equal(stats, uninterrupted[2])


@pytest.mark.parametrize('fault', ['sigterm', 'sigint'])
def test_a_signal_finishes_the_step_saves_and_exits_0(demo_data_dir, tmp_path, uninterrupted,
                                                      fault):
  workdir = tmp_path / 'run'
  code, out = _finish(f'{fault}@5', demo_data_dir, workdir)
  assert code == 0, out[-3000:]
  assert f'Stopped by {fault.upper()} after step 5' in out
  assert _steps(workdir) == [3, 5] and 'step 6/' not in out
  code, out = _finish('none', demo_data_dir, workdir)
  assert code == 0 and 'resuming at step 5' in out, out[-3000:]
  _assert_same_end(workdir, uninterrupted)


@pytest.mark.parametrize('fault, resumes_at', [
    ('kill_step@7', (3, 6)),      # Step 7 lost; 6's asynchronous write may be too.
    ('kill_save@2', (3, 6)),      # Killed while writing step 6: 3, or 6 if it completed.
    ('kill_eval@1', (3,)),        # Killed evaluating step 6, before its checkpoint.
])
def test_kill_9_then_rerun_ends_where_an_uninterrupted_run_does(demo_data_dir, tmp_path,
                                                                 uninterrupted, fault,
                                                                 resumes_at):
  workdir = tmp_path / 'run'
  code, out = _finish(fault, demo_data_dir, workdir)
  assert code == -signal.SIGKILL, out[-3000:]
  code, out = _finish('none', demo_data_dir, workdir)
  assert code == 0, out[-3000:]
  assert any(f'resuming at step {s}' in out for s in resumes_at), out[-3000:]
  _assert_same_end(workdir, uninterrupted)


def test_sigterm_from_outside_stops_at_a_saved_step(demo_data_dir, tmp_path):
  """The real thing: a SIGTERM sent by another process while training runs."""
  workdir, log = tmp_path / 'run', tmp_path / 'log.txt'
  with open(log, 'w') as f:
    proc = subprocess.Popen([sys.executable, '-c', _WRAPPER, 'none',
                             *_train_args(demo_data_dir, workdir, epochs=200)],
                            cwd=REPO, env=_env(), text=True, stdout=f,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + TIMEOUT
    while 'step 3/' not in log.read_text():
      assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
  out = log.read_text()
  stopped = int(out.split('Stopped by SIGTERM after step ')[1].split(';')[0])
  assert 3 <= stopped < 1200 and _steps(workdir)[-1] == stopped


_MULTIHOST_WRAPPER = r'''
import os, runpy, signal, sys
import jax
jax.config.update('jax_disable_most_optimizations', True)
sys.path.insert(0, os.getcwd())
from fgjax import train_step as ts
if sys.argv[1] == 'sigterm':  # This process alone is preempted, as its 5th step starts.
  mapped = ts.Parallel.map
  def map_(self, fn, donate_state=False):
    f, n = mapped(self, fn, donate_state), [0]
    def g(*a):
      n[0] += 1
      if n[0] == 5:
        os.kill(os.getpid(), signal.SIGTERM)
      return f(*a)
    return g if donate_state else f
  ts.Parallel.map = map_
sys.argv = ['launch/train.py'] + sys.argv[2:]
runpy.run_path('launch/train.py', run_name='__main__')
'''


def test_two_hosts_stop_at_the_same_step_when_one_is_preempted(demo_data_dir, tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  workdir = tmp_path / 'run'
  logs = [open(tmp_path / f'process{i}.log', 'w+') for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, '-c', _MULTIHOST_WRAPPER, 'sigterm' if i == 1 else 'none',
       *_train_args(demo_data_dir, workdir, epochs=20), '--multihost',
       f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=_env(devices=2), text=True, stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  codes = [p.wait(timeout=TIMEOUT) for p in procs]
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    log.close()
  assert codes == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  # Process 0 reports the stop; the step is the one both saved, a few steps after 5.
  stopped = int(outs[0].split('Stopped by SIGTERM after step ')[1].split(';')[0])
  assert 5 <= stopped < 120 and _steps(workdir)[-1] == stopped
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert max(r['step'] for r in rows) == stopped
