"""Configs: every data set config loads and validates; bad keys and names are named."""

import ast
import importlib
import math
import re
import subprocess
import sys

import ml_collections
import pytest

from fgjax import config_lib


@pytest.mark.parametrize('name', ['demo', 'cub', 'aircraft', 'cars'])
@pytest.mark.parametrize('method', config_lib.METHODS)
def test_configs_validate(name, method):
  config = importlib.import_module(f'configs.{name}').get_config(method)
  config_lib.validate(config)
  assert (config.data.name, config.model.name) == (name, method)


def test_parts_configs_give_every_method_the_same_start_and_budget():
  configs = {m: importlib.import_module('configs.parts').get_config(m) for m in config_lib.METHODS}
  for method, config in configs.items():
    config_lib.validate(config)
    assert (config.data.name, config.model.name) == ('parts', method)
    assert config.model.pretrained_path == 'runs/parts_pretrain'
    for section in ('data', 'train', 'eval'):
      got, want = config[section].to_dict(), configs['resnet'][section].to_dict()
      if method == 'scrim' and section == 'data':  # The same images, in P x K batches.
        assert (got.pop('sampler'), got.pop('classes_per_batch')) == ('class_balanced', 8)
        want = {k: v for k, v in want.items() if k not in ('sampler', 'classes_per_batch')}
      assert got == want, (method, section)
  pretrain = importlib.import_module('configs.parts_pretrain').get_config()
  config_lib.validate(pretrain)
  assert (pretrain.data.builder_config, pretrain.model.pretrained_path) == ('pretrain', '')
  assert pretrain.model.backbone == configs['resnet'].model.backbone


def test_unknown_method_after_colon_lists_valid_ones():
  with pytest.raises(ValueError, match=r"'ntsnet'.*'fdl'"):
    importlib.import_module('configs.cub').get_config('ntsnet')


@pytest.mark.parametrize('name', ['cub', 'aircraft', 'cars', 'nabirds', 'dogs', 'folder'])
def test_real_data_configs_follow_the_papers_recipe(name):
  c = importlib.import_module(f'configs.{name}').get_config()
  r = c.model.regions
  assert (r.proposal_num, r.cat_num, r.nms_iou, r.part_size) == (6, 4, 0.25, 224)
  assert (c.model.backbone, c.model.pretrained_path) == ('resnet50', '')
  assert (c.data.image_size, c.data.resize_size, c.train.batch_size) == (448, 600, 16)
  assert (c.train.base_lr, c.train.lr_decay_epochs, c.train.lr_decay_factor) == (0.01, 40, 0.1)
  assert (c.train.momentum, c.train.weight_decay, c.train.epochs) == (0.9, 5e-4, 100)
  assert c.train.pretrained_lr_mult == 0.1


@pytest.mark.parametrize('method', config_lib.METHODS)
def test_folder_config_is_cubs_recipe_and_needs_a_data_set_name(method):
  folder = importlib.import_module('configs.folder').get_config(method)
  with pytest.raises(ValueError) as raised:  # The placeholder never trains on anything.
    config_lib.validate(folder)
  assert str(raised.value).startswith('config.data.name is empty')
  assert '--config.data.name=NAME' in str(raised.value)
  assert 'launch/prepare_data.py --dataset=folder' in str(raised.value)
  folder.data.name = 'my_birds'
  config_lib.validate(folder)
  cub = importlib.import_module('configs.cub').get_config(method)
  cub.data.name = 'my_birds'
  assert folder.to_dict() == cub.to_dict()  # Written out in the file, the same numbers.


def test_adding_a_key_fails():
  config = config_lib.base_config()
  with pytest.raises(AttributeError):
    config.train.batchsize = 3


# The validation rules, stated here independently of config_lib's own lists.
_CHOICES = {
    'data.sampler': ('random', 'class_balanced'),
    'data.on_bad_image': ('error', 'skip'),
    'model.name': ('resnet', 'nts', 'fdl', 'ssanet', 'scrim'),
    'model.backbone': ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet_tiny'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.pointwise_conv': ('conv', 'dot'),
    'model.regions.anchor_grid': ('scaled', 'feature'),
    'model.regions.navigator_guide': ('none', 'train', 'always'),
    'model.fdl.cam_mode': ('max', 'single'),
    'model.fdl.map_alignment': ('receptive_field', 'top_left'),
    'model.fdl.padding_score': ('min', 'inside'),
    'model.ssanet.map_alignment': ('receptive_field', 'top_left'),
    'train.parallelism': ('pmap', 'shard_map'),
}


def _config(values: dict):
  """base_config() with {dotted key: value} set."""
  config = config_lib.base_config()
  for key, value in values.items():
    *sections, name = key.split('.')
    section = config
    for s in sections:
      section = section[s]
    section[name] = value
  return config


@pytest.mark.parametrize('key', sorted(_CHOICES))
def test_each_choice_accepts_its_values_and_names_them_on_a_bad_one(key):
  for value in _CHOICES[key]:  # (The class-balanced sampler also needs its class count.)
    config_lib.validate(_config({'data.classes_per_batch': 4, key: value}))
  with pytest.raises(ValueError) as raised:
    config_lib.validate(_config({key: 'bogus'}))
  msg = str(raised.value)
  assert f"config.{key}='bogus'" in msg
  listed = re.search(r'valid values: (\[.*\])', msg)
  assert listed and set(ast.literal_eval(listed.group(1))) == set(_CHOICES[key]), msg


# data.name: a built-in data set, or the name of one prepared from class folders.
_BUILT_IN = ('demo', 'parts', 'cub', 'aircraft', 'cars', 'nabirds', 'dogs')
_FOLDER_RULE = ("lowercase ASCII letters, digits and _, starting with a letter, at most 64 "
                "characters, e.g. 'my_birds'")


def test_data_name_is_a_built_in_or_a_folder_data_set_name():
  for name in _BUILT_IN + ('my_birds', 'x', 'cub2', 'a_1_', 'a' * 64):
    config_lib.validate(_config({'data.name': name}))
  for name in ('Bogus', 'my-birds', 'my birds', '2birds', '_birds', 'a' * 65, 'vögel', 'cub/1'):
    with pytest.raises(ValueError) as raised:
      config_lib.validate(_config({'data.name': name}))
    msg = str(raised.value)
    listed = re.fullmatch(r"config\.data\.name=(.*) is not valid; valid values: (\[.*\]) "
                          r"\(built in\), or a folder data set's name: (.*)\.", msg)
    assert listed, msg
    assert ast.literal_eval(listed.group(1)) == name
    assert set(ast.literal_eval(listed.group(2))) == set(_BUILT_IN)
    assert listed.group(3) == _FOLDER_RULE


def test_data_name_empty_or_folder_says_what_to_give():
  with pytest.raises(ValueError,
                     match=r'^config\.data\.name is empty: .*--config\.data\.name=NAME'):
    config_lib.validate(_config({'data.name': ''}))
  with pytest.raises(ValueError, match=r"^config\.data\.name='folder' is not a data set name: "
                     r"'folder' is the --dataset of launch/prepare_data\.py"):
    config_lib.validate(_config({'data.name': 'folder'}))


_STAGES = "['stage1', 'stage2', 'stage3', 'stage4']"
# key -> (accepted values, boundaries included; refused values; what the error allows).
_RANGES = {
    'seed': ([0, 2 ** 32 - 1], [-1, 2 ** 32], 'an integer in [0, 4294967295]'),
    'data.image_size': ([1], [0, -3], 'an integer >= 1'),
    'data.resize_size': ([600], [0], 'an integer >= 1'),
    'data.num_workers': ([0, 8], [-1], 'an integer >= 0'),
    'data.classes_per_batch': ([0, 5], [-1], 'an integer >= 0'),
    'model.regions.proposal_num': ([4, 1], [0, -3], 'an integer >= 1'),
    'model.regions.cat_num': ([1], [0, -3], 'an integer >= 1'),
    'model.regions.nms_iou': ([1.0, 1e-6], [0.0, -0.1, 1.01], 'a number in (0, 1]'),
    'model.regions.part_size': ([1], [0], 'an integer >= 1'),
    'model.regions.pad': ([0], [-1], 'an integer >= 0'),
    'model.regions.reference_size': ([1], [0], 'an integer >= 1'),
    'model.regions.dropout_rate': ([0.0, 0.99], [1.0, -0.1], 'a number in [0, 1)'),
    'model.regions.navigator_width': ([1], [0], 'an integer >= 1'),
    'model.regions.guide_weight': ([0.0], [-1.0, math.inf], 'a finite number >= 0'),
    'model.fdl.smooth_sigma': ([0.0, 2.5], [-1.0, math.nan], 'a finite number >= 0'),
    'model.fdl.smooth_kernel_size': ([None, 1, 7], [0, 4, -1],
                                     'None (2 ceil(3 sigma) + 1) or an odd integer >= 1'),
    'model.fdl.region_size': ([None, 1], [0], 'None (the anchors of model.regions) or an '
                              'integer >= 1'),
    'model.ssanet.dsm_stages': ([('stage1',), ('stage4', 'stage2')],
                                [(), ('stage5',), ('pooled',), ('stage3', 'stage3')],
                                f'a non-empty tuple of distinct stages from {_STAGES}'),
    'model.ssanet.dsm_width': ([1], [0], 'an integer >= 1'),
    'model.ssanet.dsm_lambda': ([1e-9], [0.0, -1.0], 'a finite number > 0'),
    'model.ssanet.dsm_temperature': ([1e-3], [0.0, math.inf], 'a finite number > 0'),
    'model.ssanet.dsm_sigma': ([1e-3], [0.0], 'a finite number > 0'),
    'model.ssanet.op_angles': ([(0.0,), (-30.0, 400.0)], [(), (math.nan,), ('a',)],
                               'a non-empty tuple of finite angles in degrees'),
    'model.ssanet.op_bins': ([1], [0], 'an integer >= 1'),
    'model.ssanet.mac_kernel': ([1, 2, 5], [0], 'an integer >= 1'),
    'model.ssanet.mac_weight': ([0.0], [-0.5], 'a finite number >= 0'),
    'model.scrim.cpl_stages': ([('stage4',), ('stage1', 'stage2')], [(), ('stage4', 'stage4')],
                               f'a non-empty tuple of distinct stages from {_STAGES}'),
    'model.scrim.cpl_parts': ([1], [0], 'an integer >= 1'),
    'model.scrim.embed_width': ([1], [0], 'an integer >= 1'),
    'model.scrim.temperature': ([1e-3], [0.0, -0.1], 'a finite number > 0'),
    'model.scrim.contrastive_weight': ([0.0], [-1.0], 'a finite number >= 0'),
    'model.scrim.cpl_guide_weight': ([0.0], [-1.0], 'a finite number >= 0'),
    'train.batch_size': ([1], [0, -3], 'an integer >= 1'),
    'train.epochs': ([1], [0, -3], 'an integer >= 1'),
    'train.base_lr': ([1e-9, 10.0], [0.0, -1.0, math.nan, math.inf], 'a finite number > 0'),
    'train.pretrained_lr_mult': ([0.0, 2.0], [-0.1], 'a finite number >= 0'),
    'train.lr_decay_epochs': ([1, 1000], [0], 'an integer >= 1'),
    'train.lr_decay_factor': ([1.0, 0.01], [0.0, 1.5, -0.1], 'a number in (0, 1]'),
    'train.warmup_epochs': ([0.0, 0.5], [-1.0], 'a finite number >= 0'),
    'train.momentum': ([0.0, 0.99], [1.0, -0.1], 'a number in [0, 1)'),
    'train.weight_decay': ([0.0], [-1e-4], 'a finite number >= 0'),
    'train.grad_clip_norm': ([0.0, 1.0], [-1.0], 'a finite number >= 0'),
    'train.skip_nonfinite_steps': ([0, 5], [-1], 'an integer >= 0'),
    'train.log_every_steps': ([1], [0], 'an integer >= 1'),
    'train.eval_every_epochs': ([1], [0], 'an integer >= 1'),
    'train.checkpoint_every_steps': ([1], [0], 'an integer >= 1'),
    'train.keep_checkpoints': ([1], [0], 'an integer >= 1'),
    'eval.batch_size': ([1], [0, -3], 'an integer >= 1'),
}
# Other keys set with a key above, so that only the range decides.
_WITH = {'model.regions.proposal_num': {'model.regions.cat_num': 1},
         'data.image_size': {'data.resize_size': 1}}


def test_every_number_and_tuple_key_has_a_range_stated_here():
  flat = config_lib.flatten(config_lib.base_config())
  assert {k for k, v in flat.items() if not isinstance(v, (bool, str))} == set(_RANGES)


@pytest.mark.parametrize('key', sorted(_RANGES))
def test_each_number_is_checked_against_its_range(key):
  accepted, refused, allowed = _RANGES[key]
  for value in accepted:
    config_lib.validate(_config({**_WITH.get(key, {}), key: value}))
  for value in refused:
    config = _config({**_WITH.get(key, {}), key: value})
    with pytest.raises(ValueError) as raised:
      config_lib.validate(config)
    stored = config_lib.flatten(config)[key]  # As the config holds it: -1 in a float key is -1.0.
    assert str(raised.value) == f'config.{key}={stored!r} is out of range; allowed: {allowed}.'


def test_the_reported_base_lr_of_minus_one_is_refused():
  config = importlib.import_module('configs.demo').get_config()
  config.train.base_lr = -1  # What --config.train.base_lr=-1 sets: the float -1.0.
  with pytest.raises(ValueError, match=re.escape(
      'config.train.base_lr=-1.0 is out of range; allowed: a finite number > 0.')):
    config_lib.validate(config)


def _rebuilt(values: dict) -> ml_collections.ConfigDict:
  """base_config() with {dotted key: value} set in its dict, rebuilt as a ConfigDict (as a
  config.json would be), so that ml_collections' own type checks do not apply."""
  tree = config_lib.base_config().to_dict()
  for key, value in values.items():
    *sections, name = key.split('.')
    node = tree
    for s in sections:
      node = node[s]
    node[name] = value
  return ml_collections.ConfigDict(tree)


@pytest.mark.parametrize('key, value, must_be', [
    ('model.regions.separate_part_stats', 1, 'True or False'),
    ('model.fdl.image_level_only', 0.0, 'True or False'),
    ('train.batch_size', 16.0, 'an integer'),
    ('train.epochs', True, 'an integer'),
    ('train.base_lr', False, 'a number'),
    ('model.fdl.region_size', 96.5, 'an integer or None'),
    ('seed', None, 'an integer'),
    ('data.name', 3, 'a string'),
    ('model.ssanet.op_angles', 45.0, 'a tuple'),
])
def test_a_value_of_the_wrong_type_is_named(key, value, must_be):
  with pytest.raises(ValueError) as raised:
    config_lib.validate(_rebuilt({key: value}))
  assert str(raised.value) == (f'config.{key}={value!r} is a {type(value).__name__}; '
                               f'it must be {must_be}.')


def test_a_bool_in_an_int_key_which_ml_collections_lets_through_is_refused():
  with pytest.raises(ValueError, match=r'config\.train\.epochs=True is a bool; it must be an '
                     'integer'):
    config_lib.validate(_config({'train.epochs': True}))


def test_class_balanced_batches_need_a_class_count_dividing_the_batch():
  balanced = {'data.sampler': 'class_balanced', 'train.batch_size': 16}
  for classes in (1, 4, 16):
    config_lib.validate(_config({**balanced, 'data.classes_per_batch': classes}))
  for classes in (0, 3, 32):
    with pytest.raises(ValueError, match=re.escape(
        f'config.data.classes_per_batch={classes} must be >= 1 and divide '
        'config.train.batch_size=16')):
      config_lib.validate(_config({**balanced, 'data.classes_per_batch': classes}))
  config_lib.validate(_config({'data.classes_per_batch': 3}))  # The random sampler ignores it.


def test_scrim_splits_its_proposals_evenly_over_its_fpls():
  three = {'model.name': 'scrim', 'model.scrim.cpl_stages': ('stage2', 'stage3', 'stage4')}
  with pytest.raises(ValueError, match=r"proposal_num=6 and .*cat_num=4 must split evenly "
                     r"over SCRIM's 3 FPLs"):
    config_lib.validate(_config(three))
  config_lib.validate(_config({**three, 'model.regions.cat_num': 3}))
  config_lib.validate(_config({**three, 'model.scrim.dual_fpl': False}))  # One FPL.
  config_lib.validate(_config({**three, 'model.scrim.dual_cpl': False}))  # One CPL, one FPL.
  config_lib.validate(_config({**three, 'model.scrim.use_fpl': False}))  # None.
  config_lib.validate(_config({**three, 'model.name': 'nts'}))  # Only SCRIM splits them.
  with pytest.raises(ValueError, match=r"proposal_num=5 .* over SCRIM's 2 FPLs"):
    config_lib.validate(_config({'model.name': 'scrim', 'model.regions.proposal_num': 5}))


def test_resize_size_may_equal_but_not_undercut_image_size():
  config_lib.validate(_config({'data.image_size': 64, 'data.resize_size': 64}))
  with pytest.raises(ValueError, match=r'resize_size=63 .*image_size=64'):
    config_lib.validate(_config({'data.image_size': 64, 'data.resize_size': 63}))


def test_concatenated_parts_are_at_most_the_proposals():
  config_lib.validate(_config({'model.regions.proposal_num': 3, 'model.regions.cat_num': 3}))
  with pytest.raises(ValueError, match=r'cat_num=4 exceeds .*proposal_num=3'):
    config_lib.validate(_config({'model.regions.proposal_num': 3, 'model.regions.cat_num': 4}))


# Keys the region models each carried before they shared model.regions.
_MOVED = {'model.nts.proposal_num': 'model.regions.proposal_num',
          'model.ssanet.cat_num': 'model.regions.cat_num',
          'model.fdl.num_regions': 'model.regions.proposal_num',
          'model.fdl.hybrid_regions': 'model.regions.cat_num',
          'model.fdl.pad': 'model.regions.pad',
          'model.nts.navigator_guide': 'model.regions.navigator_guide',
          'model.ssanet.dropout_rate': 'model.regions.dropout_rate'}


@pytest.mark.parametrize('old', sorted(_MOVED))
def test_a_moved_key_names_its_new_name(old):
  assert f'{old} is now {_MOVED[old]}' in config_lib.unknown_keys_message([old])


def test_an_older_runs_config_reads_its_own_methods_moved_keys():
  old = {'model.name': 'fdl', 'model.fdl.hybrid_regions': 2, 'model.fdl.num_regions': 5,
         'model.fdl.cam_mode': 'single', 'model.nts.cat_num': 1, 'model.nts.pad': 7}
  assert config_lib.upgrade(old) == {
      'model.name': 'fdl', 'model.regions.cat_num': 2, 'model.regions.proposal_num': 5,
      'model.fdl.cam_mode': 'single'}


def test_unknown_key_is_named_with_a_suggestion():
  config = config_lib.base_config()
  config_lib.validate(config)
  config.unlock()
  config.train.batchsize = 3
  with pytest.raises(ValueError, match=r"'train\.batchsize'.*-> train\.batch_size"):
    config_lib.validate(config)


def test_unknown_key_message_suggests_and_lists():
  msg = config_lib.unknown_keys_message(['train.batchsize'])
  assert 'train.batch_size' in msg and 'data.image_size' in msg


def test_command_line_override_and_unknown_key(tmp_path):
  script = ('import sys; sys.argv[0] = "launch/train.py"; '
            'import runpy; runpy.run_path("launch/train.py", run_name="__main__")')
  bad = subprocess.run(
      [sys.executable, '-c', script, '--config=configs/demo.py', f'--workdir={tmp_path}',
       '--config.train.batchsize=32'], capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert 'train.batchsize -> train.batch_size' in bad.stderr
  good = subprocess.run(
      [sys.executable, '-c',
       'import sys; from absl import flags; from ml_collections import config_flags; '
       'config_flags.DEFINE_config_file("config", lock_config=True); flags.FLAGS(sys.argv); '
       'print(flags.FLAGS.config.train.batch_size)',
       '--config=configs/demo.py', '--config.train.batch_size=48'],
      capture_output=True, text=True, timeout=120)
  assert good.stdout.strip() == '48', good.stderr
