"""Two JAX processes on this machine train together like a two-host job."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = r'''
import builtins, json, os, sys
import jax
jax.config.update('jax_disable_most_optimizations', True)
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=120)
sys.path.insert(0, sys.argv[5])
from configs import demo
from fgjax import train
# Records every file this process opens for writing at the top of the workdir
# (checkpoints live in folders below it).
written, _open = [], builtins.open
def _recording_open(file, mode='r', *args, **kwargs):
  if isinstance(file, str) and set(mode) & set('wax') and (
      os.path.dirname(os.path.abspath(file)) == os.path.abspath(sys.argv[4])):
    written.append(os.path.basename(file))
  return _open(file, mode, *args, **kwargs)
builtins.open = _recording_open
c = demo.get_config()
c.data.data_dir = sys.argv[3]
c.data.builder_config = 'tiny'
c.data.image_size, c.data.resize_size = 32, 36
c.train.batch_size, c.train.epochs, c.eval.batch_size = 16, 1, 16
c.train.checkpoint_every_steps = 4
c.train.log_every_steps = 2
c.train.parallelism = sys.argv[6]
result = train.train_and_evaluate(c, sys.argv[4])
leaf = jax.tree.leaves(result['state'].params)[0]
print('RESULT ' + json.dumps({'count': result['count'], 'accuracy': result['accuracy'],
                              'step': int(result['state'].step),
                              'checksum': float(abs(leaf).sum()), 'written': written,
                              'config': json.loads(c.to_json_best_effort())}))
'''


# The worker's metrics.jsonl: 6 steps, a train row every log_every_steps = 2, and one
# evaluation, at the last step (eval_every_epochs = 5 > epochs = 1).
_EXPECTED_ROWS = [(2, 'train'), (4, 'train'), (6, 'train'), (6, 'eval')]


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(demo_data_dir, workdir, parallelism, log_dir):
  address = f'127.0.0.1:{_free_port()}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  # Output goes to files: a full pipe would block one process, and with it the other.
  logs = [open(os.path.join(log_dir, f'process{i}.log'), 'w+') for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, '-c', _WORKER, address, str(i), demo_data_dir, workdir, REPO,
       parallelism], stdout=logs[i], stderr=subprocess.STDOUT, text=True, env=env)
           for i in range(2)]
  results = []
  for p, log in zip(procs, logs):
    p.wait(timeout=600)
    log.seek(0)
    out = log.read()
    log.close()
    assert p.returncode == 0, out[-3000:]
    results.append({**json.loads(out.split('RESULT ')[-1].splitlines()[0]), 'log': out})
  return results


@pytest.mark.parametrize('parallelism', ['pmap', 'shard_map'])
def test_two_process_training_agrees_and_evaluates_every_image(demo_data_dir, tmp_path,
                                                               parallelism):
  results = _run_two_processes(demo_data_dir, str(tmp_path / 'run'), parallelism,
                               str(tmp_path))
  # 96 images / global batch 16 = 6 steps; both processes hold the same parameters.
  assert results[0]['step'] == results[1]['step'] == 6
  np.testing.assert_allclose(results[0]['checksum'], results[1]['checksum'], rtol=1e-6)
  # Evaluation is global: 37 images split over both processes, each counted once.
  assert results[0]['count'] == results[1]['count'] == 37
  assert results[0]['accuracy'] == results[1]['accuracy']
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['4', '6']
  # Process 0 alone writes config.json (a .tmp, renamed), metrics.jsonl and, after the
  # evaluation, curves.png (a .tmp, renamed), and prints progress: had process 1 written
  # too, rows would come twice and show in its record.
  assert results[0]['written'] == (['config.json.tmp'] + ['metrics.jsonl'] * len(_EXPECTED_ROWS)
                                   + ['curves.png.tmp'])
  assert results[1]['written'] == []
  # One TensorBoard event file: process 0's.
  assert len(os.listdir(tmp_path / 'run' / 'tensorboard')) == 1
  progress = ['step 2/6 ', 'eval at step 6', 'final test accuracy']
  assert all(line in results[0]['log'] for line in progress)
  assert not any(line in results[1]['log'] for line in progress)
  with open(tmp_path / 'run' / 'config.json') as f:
    assert json.load(f) == results[0]['config'] == results[1]['config']
  assert results[0]['config']['train']['parallelism'] == parallelism
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [(r['step'], r['split']) for r in rows] == _EXPECTED_ROWS
  assert all(np.isfinite(r['loss']) for r in rows)
  assert rows[-1]['count'] == 37 and rows[-1]['accuracy'] == results[0]['accuracy']
