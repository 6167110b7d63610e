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
import json, sys
import jax
jax.config.update('jax_disable_most_optimizations', True)
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=120)
sys.path.insert(0, sys.argv[5])
from configs import demo
from fgjax import train
c = demo.get_config()
c.data.data_dir = sys.argv[3]
c.data.builder_config = 'tiny'
c.data.image_size, c.data.resize_size = 32, 36
c.train.batch_size, c.train.epochs, c.eval.batch_size = 16, 1, 16
c.train.checkpoint_every_steps = 4
c.train.parallelism = sys.argv[6]
result = train.train_and_evaluate(c, sys.argv[4])
leaf = jax.tree.leaves(result['state'].params)[0]
print('RESULT ' + json.dumps({'count': result['count'], 'accuracy': result['accuracy'],
                              'step': int(result['state'].step),
                              'checksum': float(abs(leaf).sum())}))
'''


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
    results.append(json.loads(out.split('RESULT ')[-1].splitlines()[0]))
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
  rows = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert rows  # Written once, by process 0.
