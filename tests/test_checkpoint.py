"""fgjax.checkpoint: what best/ keeps, and what happens to checkpoints that cannot be read."""

import json
import os
import socket
import subprocess
import sys

import chex
import grain
import jax
import numpy as np
import pytest

from fgjax import checkpoint
from fgjax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A small state and a grain iterator whose position is the step: checkpoints that
# differ in every array and in the data position.
def _state(step):
  return {'w': np.full((3,), step, np.float32), 'b': {'x': np.arange(4, dtype=np.int32) + step},
          # Large enough for a data file of its own, apart from the tree's metadata.
          'noise': np.random.default_rng(step).random(50_000, np.float32)}


def _target(**shapes):
  state = _state(0)
  for key, shape in shapes.items():
    state[key] = np.zeros(shape, np.float32)
  return checkpoint.abstract_like(state)


def _data_iter(position=0):
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(position):
    next(it)
  return it


def _save(workdir, steps, keep=3):
  ckpt = checkpoint.Checkpointer(str(workdir), keep)
  for step in steps:
    ckpt.save(step, _state(step), _data_iter(step))
  ckpt.close()


def _files(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return out


def _truncate_arrays(step_dir):
  """Cuts every array data file of the state in half, as a full disk or a crash would."""
  data = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
          if os.path.basename(root) == 'd' for n in names]
  assert data
  for path in data:
    os.truncate(path, os.path.getsize(path) // 2)


def _truncate_largest_array(step_dir):
  """Cuts the largest data file short: the metadata reads, the array data does not."""
  data = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
          for n in names]
  largest = max(data, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)


def _garble(path):
  with open(path, 'w') as f:
    f.write('{"not json')


CORRUPTIONS = {
    'truncated_arrays': _truncate_arrays,
    'truncated_array_data': _truncate_largest_array,
    'deleted_tree_metadata': lambda d: os.remove(os.path.join(d, 'state', '_METADATA')),
    'garbled_tree_metadata': lambda d: _garble(os.path.join(d, 'state', '_METADATA')),
    'garbled_data_iterator': lambda d: _garble(os.path.join(d, 'data_iter',
                                                            'process_0-of-1.json')),
}


def test_best_keeps_the_highest_accuracy_not_the_latest_or_lowest(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  accuracies = {1: 0.5, 2: 0.8, 3: 0.6, 4: 0.7}   # Best at step 2, neither first nor last.
  for step, accuracy in accuracies.items():
    ckpt.save_best(step, {'w': np.full((3,), step, np.float32)}, accuracy)
  ckpt.wait()
  ckpt.close()
  target = checkpoint.abstract_like({'w': np.zeros((3,), np.float32)})
  state, path = checkpoint.restore_state_only(str(tmp_path), target, prefer=('best',))
  best = max(accuracies, key=accuracies.get)
  np.testing.assert_array_equal(np.asarray(state['w']), np.full((3,), best, np.float32))
  assert path == str(tmp_path / 'best' / str(best))
  assert sorted(int(p.name) for p in (tmp_path / 'best').iterdir() if p.name.isdigit()) == [best]


def test_best_keeps_a_step_it_already_holds(tmp_path):
  """A resume from an older checkpoint evaluates a step again: orbax skips a save at or
  below its newest step (rather than raising), so best/ keeps its copy."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
  ckpt.save_best(6, _state(6), 0.5)
  ckpt.save_best(6, _state(7), 0.5)
  ckpt.close()
  state, _ = checkpoint.restore_state_only(str(tmp_path), _target(), prefer=('best',))
  chex.assert_trees_all_equal(jax.device_get(state), _state(6))


@pytest.mark.parametrize('corrupt', CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_unreadable_latest_is_moved_aside_and_the_previous_restored(tmp_path, corrupt):
  _save(tmp_path, [1, 2, 3])
  corrupt(str(tmp_path / 'checkpoints' / '3'))
  bad_files = _files(tmp_path / 'checkpoints' / '3')
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  data_iter = _data_iter()
  with pytest.warns(checkpoint.UnreadableCheckpointWarning) as record:
    state = ckpt.restore(_target(), data_iter)
  chex.assert_trees_all_equal(jax.device_get(state), _state(2))
  assert next(data_iter) == 2                  # The data position of step 2, too.
  moved = tmp_path / 'checkpoints_unreadable' / '3'
  assert _files(moved) == bad_files            # Moved whole, not deleted or changed.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  message = str(record[0].message)
  assert 'step 3' in message and str(moved) in message and 'Error' in message, message
  # The manager forgot step 3: training saves it again and a later rerun restores it.
  ckpt.save(3, _state(30), _data_iter(30))
  ckpt.close()
  state = checkpoint.Checkpointer(str(tmp_path), keep=3).restore(_target(), _data_iter())
  chex.assert_trees_all_equal(jax.device_get(state), _state(30))


def test_several_unreadable_steps_all_move_aside_under_free_names(tmp_path):
  _save(tmp_path, [1, 2, 3])
  (tmp_path / 'checkpoints_unreadable' / '3').mkdir(parents=True)   # From an earlier time.
  for step in (2, 3):
    _truncate_arrays(str(tmp_path / 'checkpoints' / str(step)))
  with pytest.warns(checkpoint.UnreadableCheckpointWarning) as record:
    state = checkpoint.Checkpointer(str(tmp_path), keep=3).restore(_target(), _data_iter())
  chex.assert_trees_all_equal(jax.device_get(state), _state(1))
  assert sorted(os.listdir(tmp_path / 'checkpoints_unreadable')) == ['2', '3', '3.1']
  assert os.listdir(tmp_path / 'checkpoints') == ['1']
  assert ['step 3' in str(r.message) for r in record] == [True, False]


def test_no_readable_checkpoint_is_an_error_naming_each_and_moves_nothing(tmp_path):
  _save(tmp_path, [1, 2])
  _truncate_arrays(str(tmp_path / 'checkpoints' / '2'))
  CORRUPTIONS['garbled_data_iterator'](str(tmp_path / 'checkpoints' / '1'))
  before = _files(tmp_path)
  with pytest.raises(checkpoint.UnreadableCheckpointError) as error:
    checkpoint.Checkpointer(str(tmp_path), keep=3).restore(_target(), _data_iter())
  message = str(error.value)
  assert str(tmp_path / 'checkpoints') in message
  assert 'step 2: ValueError: OUT_OF_RANGE' in message
  assert 'step 1: JSONDecodeError' in message
  assert _files(tmp_path) == before


@pytest.mark.parametrize('target, named', [
    (_target(w=(4,)), 'w: checkpoint (3,), expected (4,)'),        # Another size.
    (_target(head=(2,)), 'head not in the checkpoint'),             # Another model.
])
def test_checkpoint_of_another_model_is_a_mismatch_and_moves_nothing(tmp_path, target, named):
  _save(tmp_path, [1, 2])
  # The newest is also unreadable: a mismatch of the older one still moves nothing.
  _truncate_arrays(str(tmp_path / 'checkpoints' / '2'))
  before = _files(tmp_path)
  with pytest.raises(checkpoint.CheckpointMismatchError, match='another model') as error:
    checkpoint.Checkpointer(str(tmp_path), keep=3).restore(target, _data_iter())
  assert named in str(error.value) and str(tmp_path / 'checkpoints' / '1') in str(error.value)
  assert _files(tmp_path) == before
  with pytest.warns(checkpoint.UnreadableCheckpointWarning, match='checkpoints/2 is unreadable'):
    with pytest.raises(checkpoint.CheckpointMismatchError, match=named.split(':')[0]):
      checkpoint.restore_state_only(str(tmp_path), target, prefer=('checkpoints',))


def test_unreadable_best_falls_back_to_the_latest_and_stays_in_place(tmp_path):
  """evaluate/predict only read: a bad best/ is reported and skipped, never moved."""
  _save(tmp_path, [1, 2])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  ckpt.save_best(1, _state(10), accuracy=0.9)
  ckpt.close()
  _truncate_arrays(str(tmp_path / 'best' / '1'))
  before = _files(tmp_path)
  prefer = ('best', 'checkpoints')
  with pytest.warns(checkpoint.UnreadableCheckpointWarning,
                    match=f'{tmp_path / "best" / "1"} is unreadable .*OUT_OF_RANGE'):
    state, path = checkpoint.restore_state_only(str(tmp_path), _target(), prefer=prefer)
  chex.assert_trees_all_equal(jax.device_get(state), _state(2))
  assert path == str(tmp_path / 'checkpoints' / '2')
  assert _files(tmp_path) == before
  for step in (1, 2):
    _truncate_arrays(str(tmp_path / 'checkpoints' / str(step)))
  with pytest.warns(checkpoint.UnreadableCheckpointWarning):
    with pytest.raises(checkpoint.UnreadableCheckpointError) as error:
      checkpoint.restore_state_only(str(tmp_path), _target(), prefer=prefer)
  for where in ('best/1', 'checkpoints/2', 'checkpoints/1'):
    assert str(tmp_path / where) + ': ValueError' in str(error.value)
  assert not (tmp_path / 'checkpoints_unreadable').exists()


def test_rerun_on_an_unreadable_latest_checkpoint_resumes_from_the_one_before(tiny_config,
                                                                               tmp_path):
  """The crash loop of issue 12: the rerun resumes from step 3 and ends where an
  uninterrupted run does; with no readable checkpoint it stops instead of starting over."""
  straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config, str(workdir), stop_after_steps=6)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']    # Evaluated at 6, too.
  _truncate_arrays(str(workdir / 'checkpoints' / '6'))
  with pytest.warns(checkpoint.UnreadableCheckpointWarning, match='step 6'):
    resumed = train.train_and_evaluate(tiny_config, str(workdir))
  assert int(resumed['state'].step) == int(straight['state'].step) == 12
  chex.assert_trees_all_close(resumed['state'].params, straight['state'].params, atol=1e-6)
  chex.assert_trees_all_close(resumed['state'].batch_stats, straight['state'].batch_stats,
                              atol=1e-6)
  assert os.listdir(workdir / 'checkpoints_unreadable') == ['6']
  for step in os.listdir(workdir / 'checkpoints'):
    _truncate_arrays(str(workdir / 'checkpoints' / step))
  before = _files(workdir)
  with pytest.raises(checkpoint.UnreadableCheckpointError, match='could be read'):
    train.train_and_evaluate(tiny_config, str(workdir))
  assert _files(workdir) == before


_TWO_PROCESS_WORKER = r'''
import json, sys, warnings
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]), initialization_timeout=120)
sys.path.insert(0, sys.argv[4])
from jax.experimental import multihost_utils
from tests import test_checkpoint as t
from fgjax import checkpoint
t._save(sys.argv[3], [1, 2])
multihost_utils.sync_global_devices('saved')
if jax.process_index() == 0:  # Only process 1 fails to read step 2: its own iterator file.
  t._garble(sys.argv[3] + '/checkpoints/2/data_iter/process_1-of-2.json')
multihost_utils.sync_global_devices('garbled')
data_iter = t._data_iter()
with warnings.catch_warnings(record=True) as record:
  warnings.simplefilter('always')
  state = checkpoint.Checkpointer(sys.argv[3], keep=3).restore(t._target(), data_iter)
print('RESULT ' + json.dumps({
    'w': jax.device_get(state['w']).tolist(), 'position': next(data_iter),
    'warnings': [str(r.message) for r in record
                 if r.category is checkpoint.UnreadableCheckpointWarning]}))
'''


def test_two_processes_agree_when_only_one_cannot_read(tmp_path):
  """Both fall back to step 1 (neither waits for the other at a barrier), and the
  folder is moved and reported once, by process 0."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_PLATFORMS': 'cpu'}
  # Output goes to files: a full pipe would block one process, and with it the other.
  logs = [open(tmp_path / f'process{i}.log', 'w+') for i in range(2)]
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_WORKER, address, str(i),
                             str(tmp_path / 'run'), REPO], stdout=logs[i],
                            stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
  results = []
  try:
    for proc, log in zip(procs, logs):
      proc.wait(timeout=120)     # About 10 s; processes that disagree wait for each other.
      log.seek(0)
      out = log.read()
      assert proc.returncode == 0, out[-3000:]
      results.append(json.loads(out.split('RESULT ')[-1].splitlines()[0]))
  finally:
    for proc, log in zip(procs, logs):
      proc.kill()
      log.close()
  for result in results:
    assert (result['w'], result['position']) == ([1.0] * 3, 1)
  assert os.listdir(tmp_path / 'run' / 'checkpoints_unreadable') == ['2']
  assert len(results[0]['warnings']) == 1 and 'step 2' in results[0]['warnings'][0]
  assert results[1]['warnings'] == []
