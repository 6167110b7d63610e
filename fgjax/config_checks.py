"""The value rules behind `config_lib.validate`: types, ranges, and rules between keys.

Types: every key takes the type of its default in `config_lib.base_config()` (a bool key
True or False, an int key an integer, never a bool; a float key any real number; a tuple
key a tuple or a list; None only where the default is None). Ranges: every numeric and
tuple key has a `Rule` in RANGES (plus the stage names, which `validate` adds from the
models), so a value that cannot train is refused before anything compiles. Each error
names `config.<key>`, the value and what is allowed.
"""

import math
import numbers
from typing import Any, Callable, NamedTuple

import ml_collections


class Rule(NamedTuple):
  """`check(value)` is True for an allowed value (of the key's type); `allowed` says which."""
  check: Callable[[Any], bool]
  allowed: str


def integer_at_least(low: int) -> Rule:
  return Rule(lambda v: v >= low, f'an integer >= {low}')


def greater_than(low: float) -> Rule:
  return Rule(lambda v: math.isfinite(v) and v > low, f'a finite number > {low}')


def at_least(low: float) -> Rule:
  return Rule(lambda v: math.isfinite(v) and v >= low, f'a finite number >= {low}')


def within(low: float, high: float, brackets: str) -> Rule:
  """A number in an interval written with its `brackets`: '[)', '(]', '[]' or '()'."""
  def check(v):
    return ((v >= low if brackets[0] == '[' else v > low)
            and (v <= high if brackets[1] == ']' else v < high))
  return Rule(check, f'a number in {brackets[0]}{low}, {high}{brackets[1]}')


def or_none(rule: Rule, meaning: str) -> Rule:
  return Rule(lambda v: v is None or rule.check(v), f'None ({meaning}) or {rule.allowed}')


def stage_names(stages) -> Rule:
  """A non-empty tuple of distinct backbone stage names."""
  def check(v):
    return (len(v) > 0 and all(isinstance(s, str) and s in stages for s in v)
            and len(set(v)) == len(v))
  return Rule(check, f'a non-empty tuple of distinct stages from {list(stages)}')


def _finite_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


ODD_KERNEL = Rule(lambda v: v >= 1 and v % 2 == 1, 'an odd integer >= 1')
ANGLES = Rule(lambda v: len(v) > 0 and all(_finite_number(a) for a in v),
              'a non-empty tuple of finite angles in degrees')
# grain's shuffle takes seeds in [0, 2**32 - 1]; NumPy's generators refuse negative ones.
SEED = Rule(lambda v: 0 <= v < 2 ** 32, f'an integer in [0, {2 ** 32 - 1}]')

# Dotted key -> the values it takes (reasons where the rule is not plain counting).
RANGES = {
    'seed': SEED,
    'data.image_size': integer_at_least(1),  # Any size: the grids are ceil(size / stride).
    'data.resize_size': integer_at_least(1),  # And at least data.image_size (check_relations).
    'data.num_workers': integer_at_least(0),
    'data.classes_per_batch': integer_at_least(0),  # Read by the class-balanced sampler only.
    'model.regions.proposal_num': integer_at_least(1),
    'model.regions.cat_num': integer_at_least(1),  # And at most proposal_num.
    # A box is suppressed at IoU >= nms_iou: 0 would keep one box, 1 drops only duplicates.
    'model.regions.nms_iou': within(0, 1, '(]'),
    'model.regions.part_size': integer_at_least(1),
    'model.regions.pad': integer_at_least(0),
    'model.regions.reference_size': integer_at_least(1),
    'model.regions.dropout_rate': within(0, 1, '[)'),  # 1 would drop every feature.
    'model.regions.navigator_width': integer_at_least(1),
    'model.regions.guide_weight': at_least(0),
    'model.fdl.smooth_sigma': at_least(0),  # 0 switches the smoothing off.
    # fgjax.ops.cam_attention refuses even kernels (no centre tap).
    'model.fdl.smooth_kernel_size': or_none(ODD_KERNEL, '2 ceil(3 sigma) + 1'),
    'model.fdl.region_size': or_none(integer_at_least(1), 'the anchors of model.regions'),
    'model.ssanet.dsm_width': integer_at_least(1),
    'model.ssanet.dsm_lambda': greater_than(0),  # The ridge keeps the Fourier division finite.
    'model.ssanet.dsm_temperature': greater_than(0),
    'model.ssanet.dsm_sigma': greater_than(0),  # The Gaussian target divides by sigma^2.
    'model.ssanet.op_angles': ANGLES,
    'model.ssanet.op_bins': integer_at_least(1),
    # Even windows are fine: fgjax.ops.morphology pairs them as scipy does, unshifted.
    'model.ssanet.mac_kernel': integer_at_least(1),
    'model.ssanet.mac_weight': at_least(0),
    'model.scrim.cpl_parts': integer_at_least(1),
    'model.scrim.embed_width': integer_at_least(1),
    'model.scrim.temperature': greater_than(0),
    'model.scrim.contrastive_weight': at_least(0),
    'model.scrim.cpl_guide_weight': at_least(0),
    'train.batch_size': integer_at_least(1),
    'train.epochs': integer_at_least(1),
    'train.base_lr': greater_than(0),
    'train.pretrained_lr_mult': at_least(0),  # 0 freezes the pretrained backbone.
    'train.lr_decay_epochs': integer_at_least(1),  # Beyond train.epochs: no decay.
    'train.lr_decay_factor': within(0, 1, '(]'),  # 1: no decay.
    'train.warmup_epochs': at_least(0),
    'train.momentum': within(0, 1, '[)'),  # At 1 or more SGD's velocity never decays.
    'train.weight_decay': at_least(0),
    'train.grad_clip_norm': at_least(0),  # 0: off.
    'train.skip_nonfinite_steps': integer_at_least(0),
    'train.log_every_steps': integer_at_least(1),
    'train.eval_every_epochs': integer_at_least(1),
    'train.checkpoint_every_steps': integer_at_least(1),
    'train.keep_checkpoints': integer_at_least(1),
    'eval.batch_size': integer_at_least(1),
}

_TYPES = {
    bool: ('True or False', lambda v: isinstance(v, bool)),
    int: ('an integer', lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    float: ('a number', lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    str: ('a string', lambda v: isinstance(v, str)),
    tuple: ('a tuple', lambda v: isinstance(v, (tuple, list))),
}


def declared_types(section: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """Dotted key -> (type, whether None is allowed) of every field of `section`."""
  out = {}
  for name, value in section.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(declared_types(value, f'{prefix}{name}.'))
    else:
      out[f'{prefix}{name}'] = (section.get_ref(name).get_type(), value is None)
  return out


def check_types(flat: dict, types: dict) -> None:
  """Raises ValueError for the first value in `flat` not of its key's type in `types`."""
  for key, value in flat.items():
    declared, nullable = types[key]
    words, is_type = _TYPES[declared]
    if value is None and nullable:
      continue
    if value is None or not is_type(value):
      raise ValueError(f'config.{key}={value!r} is a {type(value).__name__}; it must be '
                       f'{words}{" or None" if nullable else ""}.')


def check_ranges(flat: dict, rules: dict) -> None:
  """Raises ValueError naming the key, the value and what is allowed for the first value
  (already of its type) outside its rule."""
  for key, rule in rules.items():
    if not rule.check(flat[key]):
      raise ValueError(f'config.{key}={flat[key]!r} is out of range; allowed: '
                       f'{rule.allowed}.')


def scrim_fpl_count(scrim) -> int:
  """How many FPLs `config.model.scrim` builds (fgjax.models.scrim.SCRIM.__call__)."""
  if not scrim.use_fpl:
    return 0
  cpls = len(scrim.cpl_stages) if scrim.dual_cpl else 1
  return cpls if scrim.dual_fpl else 1


def check_relations(config) -> None:
  """Raises ValueError where two keys' values do not fit together."""
  regions, data = config.model.regions, config.data
  if regions.cat_num > regions.proposal_num:
    raise ValueError(f'config.model.regions.cat_num={regions.cat_num} exceeds '
                     f'config.model.regions.proposal_num={regions.proposal_num}: '
                     'the concatenated feature takes the top cat_num of the proposals.')
  if data.resize_size < data.image_size:
    raise ValueError(f'config.data.resize_size={data.resize_size} is smaller than '
                     f'config.data.image_size={data.image_size}.')
  if data.sampler == 'class_balanced' and (
      data.classes_per_batch < 1 or config.train.batch_size % data.classes_per_batch):
    raise ValueError(
        f'config.data.classes_per_batch={data.classes_per_batch} must be >= 1 and divide '
        f'config.train.batch_size={config.train.batch_size} with '
        "config.data.sampler='class_balanced' (P classes x K images, K = batch_size / P).")
  fpls = scrim_fpl_count(config.model.scrim)
  if config.model.name == 'scrim' and fpls and (
      regions.proposal_num % fpls or regions.cat_num % fpls):
    raise ValueError(
        f'config.model.regions.proposal_num={regions.proposal_num} and '
        f'config.model.regions.cat_num={regions.cat_num} must split evenly over SCRIM\'s '
        f'{fpls} FPLs (config.model.scrim.cpl_stages={tuple(config.model.scrim.cpl_stages)}'
        ' with dual_cpl, dual_fpl, use_fpl).')
