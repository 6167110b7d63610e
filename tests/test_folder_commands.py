"""Folder data sets from the command line: launch/prepare_data.py, then training on one."""

import os
import re
import subprocess
import sys

import pytest

from fgjax.data import registry
from test_folder import _one_tree, _reference_test_set, _write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dirs(tmp_path):
  return tmp_path / 'images', str(tmp_path / 'tfds')


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'prepare_data.py'),
                         *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_prepare_data_command_line(dirs):
  source, data_dir = dirs
  files = _one_tree(source, {'cat': 5, 'dog': 8})  # Skipping dog/i9 leaves a test dog.
  _write(source, {'dog/i9.jpg': b'broken', 'notes.txt': b'x'})
  test = _reference_test_set([*files, 'dog/i9.jpg'], 0.25, 0) - {'dog/i9.jpg'}
  command = ['--dataset=folder', f'--manual_dir={source}', '--name=pets',
             f'--data_dir={data_dir}', '--on_bad_image=skip', '--test_fraction=0.25']
  first = _cli(*command)
  assert first.returncode == 0, first.stderr[-2000:]
  assert 'Prepared pets in ' in first.stdout
  assert f'Examples per split: test {len(test)}, train {13 - len(test)}.' in first.stdout
  assert '2 classes (folder names, sorted): cat, dog.' in first.stdout
  assert f'Source: {source} (one tree, test_fraction 0.25, split_seed 0).' in first.stdout
  assert ('1 file(s) below the source folder were ignored (not images, or hidden):\n'
          '  notes.txt') in first.stdout
  assert f'1 bad image(s) were skipped:\n  {source}/dog/i9.jpg' in first.stdout
  assert '--config=configs/folder.py --config.data.name=pets' in first.stdout
  second = _cli(*command)
  assert 'pets is already prepared' in second.stdout and 'nothing to do' in second.stdout
  assert f'{source}/dog/i9.jpg' in second.stdout
  for args, message in [
      (command[:-1] + ['--split_seed=2'], 'already prepared in'),
      (['--dataset=folder', f'--manual_dir={source}/dog', '--name=loose', f'--data_dir={data_dir}'],
       f'image file(s) outside a class folder; expected {source}/dog/<class>/i0.'),
      (['--dataset=cub', '--test_fraction=0.3'], '--test_fraction: only for --dataset=folder'),
      (['--dataset=folder', f'--manual_dir={source}'], '--dataset=folder needs --name=NAME')]:
    failed = _cli(*args)
    assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1].startswith('ERROR: ')
    assert message in failed.stderr and 'Traceback' not in failed.stderr, failed.stderr[-2000:]


def test_a_folder_data_set_trains_end_to_end(dirs, tmp_path):
  from configs import folder as folder_config  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  source, data_dir = dirs
  _one_tree(source, {'ant': 6, 'bee': 6, 'cat': 6})  # 15 train, 3 test (0.2 x 6 -> 1 each).
  prepared = _cli('--dataset=folder', f'--manual_dir={source}', '--name=bugs',
                  f'--data_dir={data_dir}')
  assert 'Examples per split: test 3, train 15.' in prepared.stdout, prepared.stderr[-2000:]
  c = folder_config.get_config('resnet')
  c.data.name, c.data.data_dir, c.data.num_workers = 'bugs', data_dir, 0
  c.data.image_size, c.data.resize_size, c.model.backbone = 32, 36, 'resnet_tiny'
  c.train.batch_size, c.eval.batch_size, c.train.epochs = 8, 8, 2
  c.train.tensorboard, c.train.log_every_steps = False, 1
  result = train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert result['step'] == 2 and result['count'] == 3  # 15 // 8 steps per epoch.
  assert result['state'].params['head']['kernel'].shape[-1] == 3
  c.data.name = 'beetles'  # Not prepared: the exact command to prepare it.
  with pytest.raises(registry.DataNotPreparedError, match=re.escape(
      f'--dataset=folder --manual_dir=DIR --name=beetles --data_dir={data_dir}')):
    train.train_and_evaluate(c, str(tmp_path / 'run2'))
