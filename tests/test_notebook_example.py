"""README's notebook example ("In a notebook"), run as it stands on a tiny trained run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from fgjax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_notebook_example() -> str:
  """The first python block under README.md's '## In a notebook' heading."""
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme.split('\n## In a notebook\n', 1)
  assert len(section) == 2, "README.md has no '## In a notebook' section"
  block = re.search(r'```python\n(.*?)```', section[1].split('\n## ', 1)[0], re.S)
  assert block, "README.md's notebook section has no python block"
  return block.group(1)


@pytest.fixture(scope='module')
def tiny_fdl_run(tmp_path_factory, demo_data_dir):
  """A 1-epoch FDL run on the tiny demo at 32 px (the example's 'runs/demo_fdl')."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config('fdl')
  c.data.data_dir = demo_data_dir
  c.data.builder_config = 'tiny'
  c.data.image_size, c.data.resize_size = 32, 36
  c.train.batch_size, c.train.epochs, c.eval.batch_size = 16, 1, 16
  c.train.log_every_steps = 2
  workdir = str(tmp_path_factory.mktemp('demo_fdl'))
  return workdir, train.train_and_evaluate(c, workdir)


def test_readme_notebook_example_runs_as_written(tiny_fdl_run, tmp_path):
  workdir, trained = tiny_fdl_run
  os.makedirs(tmp_path / 'runs')
  os.symlink(workdir, tmp_path / 'runs' / 'demo_fdl')
  photo = np.random.default_rng(0).integers(0, 256, (150, 200, 3), np.uint8)
  PIL.Image.fromarray(photo).save(tmp_path / 'photo.jpg', quality=95)
  code = readme_notebook_example()
  env = {**os.environ, 'PYTHONPATH': REPO}
  done = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()

  # The model built from the config: FDL's outputs at the example's 2 x 64 px batch.
  assert "'logits': (2, 10)" in lines[0] and "'boxes': (2, 6, 4)" in lines[0], lines[0]
  # One line per image: its name, its top-3 class names, a probability.
  assert lines[1].startswith('photo.jpg [') and lines[2].startswith('images[1] [')
  for line in lines[1:3]:
    names = re.findall(r"'(glyph_\d\d)'", line)
    assert len(names) == len(set(names)) == 3, line
    assert 0.1 <= float(line.rsplit(' ', 1)[1]) <= 1.0, line  # max of 10 probabilities.
  # Regions in photo.jpg's 200 x 150 pixels: 6 boxes inside the photo.
  boxes = np.array(json.loads(lines[3]))
  assert boxes.shape == (6, 4)
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200).all() and (boxes[:, 3] <= 150).all()
  assert (boxes[:, 2:] >= boxes[:, :2]).all()
  for picture, size in (('regions.png', (200, 150)), ('figure.png', None)):
    with PIL.Image.open(tmp_path / picture) as img:
      assert img.format == 'PNG' and (size is None or img.size == size), picture
  # Evaluation of the best checkpoint: the run's only evaluation, at its last step.
  accuracy, tta_accuracy, top5 = (float(v) for v in lines[4].split())
  assert accuracy == pytest.approx(trained['accuracy'])
  assert 0.0 <= tta_accuracy <= 1.0 and accuracy <= top5 <= 1.0
  assert os.path.isdir(os.path.join(workdir, 'eval'))
  # The log's eval columns, against metrics.jsonl read here.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [row for row in map(json.loads, f) if row['split'] == 'eval']
  assert lines[5] == f'{np.array([r["step"] for r in evals])} ' \
                      f'{np.array([r["accuracy"] for r in evals])}'
