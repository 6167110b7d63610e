"""fgjax.checkpoint: what best/ keeps."""

import numpy as np

from fgjax import checkpoint


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
