"""launch/compare.py's library: end to end on tiny data, resume, and the statistics."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from fgjax import compare
from fgjax import train
from fgjax.data import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS_CONFIG = os.path.join(REPO, 'configs', 'parts.py')


def _tiny_overrides(data_dir):
  return [f'data.data_dir={data_dir}', 'data.builder_config=tiny', 'data.image_size=64',
          'data.resize_size=72', "model.pretrained_path=''", 'train.batch_size=16',
          'train.epochs=1', 'train.log_every_steps=1', 'eval.batch_size=16']


def test_compare_runs_end_to_end_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'tfds')
  registry.get_builder('parts', data_dir, builder_config='tiny').download_and_prepare()
  workdir = str(tmp_path / 'compare')
  out = compare.run_comparison(PARTS_CONFIG, ['resnet', 'fdl'], [0], workdir,
                               _tiny_overrides(data_dir), log=lambda _: None)
  assert set(out['summary']) == {'resnet', 'fdl'}
  for method in ('resnet', 'fdl'):
    with open(os.path.join(workdir, f'{method}_s0', 'config.json')) as f:
      config = json.load(f)
    assert (config['model']['name'], config['seed'], config['train']['epochs']) == (method, 0, 1)
  fdl = next(r for r in out['results'] if r['method'] == 'fdl')
  resnet = next(r for r in out['results'] if r['method'] == 'resnet')
  assert fdl['count'] == resnet['count'] == 20
  assert 0 <= fdl['top1'] <= fdl['any_top'] <= fdl['any'] <= fdl['ceiling'] <= 1
  assert 'top1' not in resnet and 'accuracy_image' in fdl
  assert fdl['train_seconds'] > 0 and fdl['images_per_s'] > 0
  with open(os.path.join(workdir, 'comparison.json')) as f:
    written = json.load(f)
  assert written['summary']['fdl']['accuracy']['per_seed'] == [fdl['accuracy']]
  assert '| fdl |' in out['table'] and '| resnet |' in out['table']
  with PIL.Image.open(os.path.join(workdir, 'comparison.png')) as img:
    assert img.size[0] > 200 and len(img.getcolors(1 << 16)) > 3

  def no_training(*args, **kwargs):
    raise AssertionError('A finished run was trained again.')
  monkeypatch.setattr(train, 'train_and_evaluate', no_training)
  again = compare.run_comparison(PARTS_CONFIG, ['resnet', 'fdl'], [0], workdir,
                                 _tiny_overrides(data_dir), log=lambda _: None)
  assert again['results'] == out['results']
  # A shared region key neither resnet nor fdl has does not decide these runs; a key that
  # does stops the rerun.
  other = compare.run_comparison(PARTS_CONFIG, ['resnet', 'fdl'], [0], workdir,
                                 _tiny_overrides(data_dir) + ['model.regions.navigator_guide=train'],
                                 log=lambda _: None)
  assert other['results'] == out['results']
  with pytest.raises(ValueError, match=r'resnet_s0 holds a run of another config '
                                       r'\(train.epochs: stored 1, requested 2\)'):
    compare.run_comparison(PARTS_CONFIG, ['resnet'], [0], workdir,
                           _tiny_overrides(data_dir) + ['train.epochs=2'], log=lambda _: None)


def test_summary_statistics_by_hand():
  rows = [{'method': 'a', 'seed': s, 'accuracy': acc} for s, acc in ((2, 0.5), (0, 0.7), (1, 0.6))]
  summary = compare.summarise(rows + [{'method': 'b', 'seed': 0, 'accuracy': 0.9}])
  a = summary['a']
  assert a['seeds'] == [0, 1, 2]
  assert a['accuracy']['per_seed'] == [0.7, 0.6, 0.5]
  np.testing.assert_allclose(a['accuracy']['mean'], 0.6)
  np.testing.assert_allclose(a['accuracy']['std'], 0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
  assert (a['accuracy']['min'], a['accuracy']['max']) == (0.5, 0.7)
  assert summary['b']['accuracy']['std'] == 0.0


def test_overrides_are_typed_and_checked():
  config = compare.method_config(PARTS_CONFIG, 'nts', 3, ['train.epochs=2', 'data.name=parts'])
  assert (config.seed, config.train.epochs, config.model.name) == (3, 2, 'nts')
  with pytest.raises(ValueError, match='train.epochs'):
    compare.method_config(PARTS_CONFIG, 'nts', 0, ['train.epoch=2'])
  with pytest.raises(ValueError, match='KEY=VALUE'):
    compare.method_config(PARTS_CONFIG, 'nts', 0, ['train.epochs'])
  with pytest.raises(ValueError, match='Unknown method'):
    compare.method_config(PARTS_CONFIG, 'nope', 0)
