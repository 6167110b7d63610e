"""The one place where every config key is declared, with its meaning.

Configs under `configs/` call `base_config()` and override values; they cannot
add keys (the returned ConfigDict is locked, so a misspelt key fails at once,
also from the command line). `validate()` checks every value before anything
compiles: its type, its choices or range (fgjax.config_checks) and the rules
between keys, naming the key, the value and what is allowed. `rerun_differences()`
tells what a rerun in a workdir may change of the config saved there.
"""

import difflib
import json
import os
import shlex

import ml_collections

from fgjax import config_checks
from fgjax.data import registry

# Per-method keyword arguments live under config.model.<method>; the model
# registry (fgjax.models.MODELS) lists the valid model names.


def base_config() -> ml_collections.ConfigDict:
  """Every key fgjax reads, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, dropout and the data order.

  c.data = ml_collections.ConfigDict()
  # Data set: built in (fgjax.data.registry.BUILDERS: 'demo', 'parts', 'cub', 'aircraft',
  # 'cars', 'nabirds', 'dogs') or the --name of one prepared from class folders.
  c.data.name = 'demo'
  c.data.builder_config = ''  # TFDS builder config ('' = default; aircraft: variant/family/manufacturer).
  c.data.data_dir = '~/tensorflow_datasets'  # Where prepared data sets live.
  c.data.train_split = 'train'  # Split to train on (aircraft: 'trainval').
  c.data.eval_split = 'test'  # Split to evaluate on.
  c.data.image_size = 448  # Side of the square model input.
  c.data.resize_size = 600  # Images are resized to this square before cropping.
  c.data.num_workers = 0  # grain worker processes per host (0: decode in the main process).
  c.data.sampler = 'random'  # 'random' or 'class_balanced' (P classes x K images per batch).
  c.data.classes_per_batch = 0  # P of the class-balanced sampler.
  c.data.on_bad_image = 'error'  # Bad images when preparing (the command train.py suggests).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet'  # Method: see fgjax.models.MODELS.
  c.model.backbone = 'resnet50'  # See fgjax.models.resnet.BACKBONES.
  c.model.dtype = 'float32'  # Computation dtype: 'float32' or 'bfloat16' (params stay float32).
  # 1x1 convolutions as XLA convolutions ('conv') or matrix products ('dot': the same
  # function and parameters, faster to train on XLA:CPU; fgjax.models.resnet).
  c.model.pointwise_conv = 'conv'
  # torchvision ResNet weights (.pth or .npz), or a fgjax workdir whose backbone to start
  # from (any method); '' trains from scratch.
  c.model.pretrained_path = ''
  c.model.init_from = ''  # A checkpoint folder of another run to start from (params only).

  # Shared by the region models (nts, fdl, ssanet, scrim): how candidate boxes become parts.
  # Each model takes the keys it has (fgjax.models.build_model); pixel sizes are given
  # at reference_size and scaled by min(H, W) / reference_size for other inputs.
  c.model.regions = ml_collections.ConfigDict()
  c.model.regions.proposal_num = 6  # Regions kept after NMS (NTS-Net's PROPOSAL_NUM, FDL's m).
  c.model.regions.cat_num = 4  # Top regions in the concatenated / hybrid feature (CAT_NUM, l).
  c.model.regions.nms_iou = 0.25  # NMS keeps a box only if its IoU with every kept box is below.
  c.model.regions.part_size = 224  # Side of a zoomed region at reference_size.
  c.model.regions.pad = 224  # Zero padding around the image at reference_size.
  c.model.regions.reference_size = 448  # Input size the pixel sizes above refer to.
  c.model.regions.separate_part_stats = True  # Own BatchNorm running averages for parts (README).
  c.model.regions.anchor_grid = 'feature'  # Map strides; 'scaled': the 448 layout at any size.
  c.model.regions.dropout_rate = 0.5  # nts, ssanet, scrim: dropout on pooled features (training).
  c.model.regions.navigator_width = 128  # nts, ssanet, scrim: the navigator convolutions' width.
  # nts, ssanet: class activation prior on the navigator's scores before NMS, our reading
  # (README): 'none' (the paper), 'train' (training only) or 'always'.
  c.model.regions.navigator_guide = 'none'
  c.model.regions.guide_weight = 2.0  # Weight of the prior, standardised per image.

  # NTS-Net (fgjax/models/nts.py) has no keys beyond model.regions.

  # FDL, "Learning to Focus and Discriminate" (fgjax/models/fdl.py).
  c.model.fdl = ml_collections.ConfigDict()
  c.model.fdl.image_level_only = False  # Ablation: image-level classifier only, no regions.
  c.model.fdl.cam_mode = 'max'  # 'max' over all class maps (Eq. 2) or 'single' (ablation).
  c.model.fdl.smooth_sigma = 1.0  # Gaussian smoothing of the attention map, in map cells.
  c.model.fdl.smooth_kernel_size = ml_collections.config_dict.placeholder(int)  # None: 2*ceil(3 sigma)+1.
  # None: the anchors of model.regions; an int (160 in the paper) uses one box of this size
  # per map cell.
  c.model.fdl.region_size = ml_collections.config_dict.placeholder(int)
  c.model.fdl.classifier_bias = True  # Bias in the image-level classifier (Eq. 1 has none).
  # 'receptive_field': stage4 cell u centred on pixel 32u; 'top_left' (original): [32u, 32u+32).
  c.model.fdl.map_alignment = 'receptive_field'
  # 'min': box parts outside the image count as min M; 'inside' (original): mean over box ∩ image.
  c.model.fdl.padding_score = 'min'

  # SSANet (fgjax/models/ssanet.py): our reading of the abstract; see README.md.
  c.model.ssanet = ml_collections.ConfigDict()
  c.model.ssanet.use_dsm = True  # Discriminative scale mining (FFT circulant ridge regression).
  c.model.ssanet.use_op = True  # Oriented pooling with a learned orientation gate.
  c.model.ssanet.use_mac = True  # Morphological alignment constraint on the proposals.
  c.model.ssanet.dsm_stages = ('stage2', 'stage3', 'stage4')  # Pyramid levels (the scale axis).
  c.model.ssanet.dsm_width = 256  # Channels each level is projected to.
  c.model.ssanet.dsm_lambda = 1e-2  # Ridge regulariser of the circulant regression.
  c.model.ssanet.dsm_temperature = 0.1  # Softmax temperature over scale shifts.
  c.model.ssanet.dsm_sigma = 0.5  # Width (in levels) of the Gaussian regression target.
  c.model.ssanet.op_angles = (0.0, 45.0, 90.0, 135.0)  # Pooling orientations in degrees.
  c.model.ssanet.op_bins = 3  # Bands each orientation pools into.
  c.model.ssanet.mac_kernel = 3  # Window of the closing/opening of the object mask.
  c.model.ssanet.mac_weight = 1.0  # Weight of the alignment penalty.
  # How the object mask lies on the input: 'receptive_field' (cell u on pixel 32u) or 'top_left'.
  c.model.ssanet.map_alignment = 'receptive_field'

  # SCRIM (fgjax/models/scrim.py): our reading of the abstract; see README.md. Its FPLs
  # split model.regions.proposal_num and cat_num evenly between them.
  c.model.scrim = ml_collections.ConfigDict()
  c.model.scrim.cpl_stages = ('stage3', 'stage4')  # Backbone stages of the two CPLs.
  c.model.scrim.cpl_parts = 4  # G: part attentions per CPL.
  c.model.scrim.embed_width = 128  # Width of each part's contrastive embedding.
  c.model.scrim.temperature = 0.1  # Of the supervised contrastive loss.
  c.model.scrim.contrastive_weight = 1.0  # Weight of the contrastive loss.
  c.model.scrim.cpl_guide_weight = 2.0  # A CPL's attention prior on its FPL's scores (0: off).
  c.model.scrim.dual_cpl = True  # Ablation False: one CPL (the last stage).
  c.model.scrim.dual_fpl = True  # Ablation False: one FPL (refining the last CPL).
  c.model.scrim.use_fpl = True  # Ablation False: no fine parts.
  c.model.scrim.use_contrastive = True  # Ablation False: no contrastive loss.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # Global batch size (all devices, all hosts).
  c.train.epochs = 100  # Training length; converted to steps once.
  c.train.base_lr = 0.01  # Learning rate of new layers.
  c.train.pretrained_lr_mult = 0.1  # Multiplier on the base lr for pretrained backbone params.
  c.train.lr_decay_epochs = 40  # The lr is multiplied by lr_decay_factor every this many epochs.
  c.train.lr_decay_factor = 0.1  # See lr_decay_epochs.
  c.train.warmup_epochs = 0.0  # Linear lr warm-up from ~0 over this many epochs (papers: none).
  c.train.momentum = 0.9  # SGD momentum.
  c.train.weight_decay = 5e-4  # L2 added to the gradient (PyTorch SGD convention).
  c.train.grad_clip_norm = 0.0  # > 0: clip the gradient's global L2 norm to this (0: off).
  # > 0: skip an update whose loss or gradient is not finite and stop after this many in a
  # row; 0: stop at the first.
  c.train.skip_nonfinite_steps = 0
  c.train.parallelism = 'pmap'  # 'pmap' or 'shard_map' (jit over a device mesh).
  c.train.log_every_steps = 50  # Progress line and metrics.jsonl row every this many steps.
  c.train.tensorboard = True  # TensorBoard scalars and region pictures in <workdir>/tensorboard/.
  c.train.eval_every_epochs = 10  # Evaluate every this many epochs (and at the end).
  c.train.checkpoint_every_steps = 1000  # Save every this many steps (and at the end).
  c.train.keep_checkpoints = 2  # Keep the last k checkpoints (the best one is kept apart).

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64  # Global eval batch size; the last batch is padded and masked.

  c.lock()
  return c


METHODS = ('resnet', 'nts', 'fdl', 'ssanet', 'scrim')
REGION_METHODS = ('nts', 'fdl', 'ssanet', 'scrim')  # The methods that read model.regions.

# Keys that moved: old dotted name -> new one (old runs' config.json are read with them).
_SHARED = ('nms_iou', 'part_size', 'pad', 'reference_size', 'separate_part_stats',
           'anchor_grid')
_NTS_AND_SSANET = ('proposal_num', 'cat_num', 'dropout_rate', 'navigator_width',
                   'navigator_guide', 'guide_weight')
RENAMED = {
    **{f'model.{m}.{k}': f'model.regions.{k}' for m in ('nts', 'fdl', 'ssanet') for k in _SHARED},
    **{f'model.{m}.{k}': f'model.regions.{k}' for m in ('nts', 'ssanet') for k in _NTS_AND_SSANET},
    'model.fdl.num_regions': 'model.regions.proposal_num',
    'model.fdl.hybrid_regions': 'model.regions.cat_num',
}


def upgrade(flat: dict) -> dict:
  """A flattened config of an older fgjax with its moved keys renamed (RENAMED): the
  values of the run's own method win; other methods' moved keys are dropped."""
  method = flat.get('model.name')
  out = {k: v for k, v in flat.items() if k not in RENAMED}
  for old, new in RENAMED.items():
    if old in flat and old.startswith(f'model.{method}.'):
      out[new] = flat[old]
  return out


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r} after the config path; valid: {list(METHODS)}.')


CHOICES = {
    'data.sampler': ('random', 'class_balanced'),
    'data.on_bad_image': ('error', 'skip'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.pointwise_conv': ('conv', 'dot'),
    'train.parallelism': ('pmap', 'shard_map'),
    'model.regions.anchor_grid': ('scaled', 'feature'),
    'model.fdl.cam_mode': ('max', 'single'),
    'model.fdl.map_alignment': ('receptive_field', 'top_left'),
    'model.fdl.padding_score': ('min', 'inside'),
    'model.ssanet.map_alignment': ('receptive_field', 'top_left'),
}


def flatten(tree, prefix: str = '') -> dict:
  """Dotted key -> value of a nested config or dict ({'train.batch_size': 16, ...})."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def valid_keys() -> list[str]:
  """Every config key, dotted ('train.batch_size')."""
  return sorted(flatten(base_config()))


def unknown_keys_message(unknown) -> str:
  """An error text for misspelt keys: closest matches and the full list."""
  known = valid_keys()
  moved = {k: RENAMED[k] for k in unknown if k in RENAMED}
  hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown if k not in moved}
  hints = ', '.join(f'{k} -> {m[0]}' for k, m in hints.items() if m)
  return (f'Unknown config keys {sorted(unknown)}'
          + ''.join(f'; {old} is now {new}' for old, new in sorted(moved.items()))
          + (f' (did you mean {hints}?)' if hints else '') + f'. Valid keys: {known}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key, its value and the valid values for a bad config."""
  # Imported here: models import jax/flax, which configs must not need.
  from fgjax import models  # pylint: disable=g-import-not-at-top
  from fgjax.models import regions  # pylint: disable=g-import-not-at-top
  from fgjax.models import resnet  # pylint: disable=g-import-not-at-top
  from fgjax.models import scrim  # pylint: disable=g-import-not-at-top
  flat = flatten(config)
  unknown = set(flat) - set(valid_keys())
  if unknown:
    raise ValueError(unknown_keys_message(unknown))
  config_checks.check_types(flat, config_checks.declared_types(base_config()))
  choices = {**CHOICES, 'model.name': tuple(models.MODELS),
             'model.backbone': tuple(resnet.BACKBONES),
             'model.regions.navigator_guide': regions.GUIDES}
  for key, valid in choices.items():
    if flat[key] not in valid:
      raise ValueError(f'config.{key}={flat[key]!r} is not valid; valid values: {list(valid)}.')
  # Not a list of choices: any valid name may be a data set prepared from class folders.
  registry.check_data_name(flat['data.name'], 'config.data.name')
  stages = config_checks.stage_names(tuple(scrim.STAGE_STRIDES))  # The backbone's pyramid.
  config_checks.check_ranges(flat, {**config_checks.RANGES, 'model.ssanet.dsm_stages': stages,
                                    'model.scrim.cpl_stages': stages})
  config_checks.check_relations(config)


# What a rerun in a workdir that holds a run may change: these only extend the run or
# change what it logs, evaluates with and keeps (rerun_differences). Not data.num_workers:
# grain's saved iterator state has one entry per worker process, and a state saved with
# one count does not restore into another (tests/test_rerun.py).
RERUN_MAY_CHANGE = (
    'train.epochs',  # The lr of the steps taken does not depend on it (train_step.lr_schedule).
    'train.eval_every_epochs',
    'train.log_every_steps',
    'train.tensorboard',
    'train.checkpoint_every_steps',
    'train.keep_checkpoints',
    'train.skip_nonfinite_steps',
    'train.parallelism',  # Checkpoints hold the host state; both modes run the same step.
    'eval.batch_size',  # Evaluation is exact (padded and masked) at any batch size.
    'data.data_dir',  # Where the prepared data lie; the data set is data.name and its split.
    'data.on_bad_image',  # Read only when the data are prepared.
)


def _keys_the_run_reads(config) -> set:
  """The keys of `config` that its run reads: not the other methods' sections, not the
  model.regions keys its model lacks, not classes_per_batch for the random sampler."""
  from fgjax import models  # pylint: disable=g-import-not-at-top
  settings = models.model_settings(config.model)
  others = tuple(f'model.{m}.' for m in METHODS if m != config.model.name)
  keys = {k for k in flatten(config) if not k.startswith(others)}
  keys -= {f'model.regions.{k}' for k in config.model.regions if k not in settings}
  if config.data.sampler != 'class_balanced':
    keys.discard('data.classes_per_batch')
  return keys


def _as_config_value(value):
  """A JSON value as the config holds it: lists (JSON's tuples) become tuples."""
  return tuple(_as_config_value(v) for v in value) if isinstance(value, list) else value


def read_saved(workdir: str) -> dict | None:
  """A workdir's config.json, flattened as saved (older key names kept); None without one."""
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return flatten(json.load(f))


def rerun_differences(saved_flat: dict, config: ml_collections.ConfigDict):
  """(blocking, allowed): how `config` differs from the config saved in a workdir.

  Args:
    saved_flat: the workdir's config.json, flattened (`read_saved`). An older
      fgjax's moved keys are renamed (`upgrade`), and a key it lacks counts as its
      default (a key is added with the default that keeps the older behaviour).
    config: the rerun's (validated) config.

  Returns:
    Two lists of (dotted key, saved value, new value), sorted by key, for the keys the
    run reads (`_keys_the_run_reads`) whose values differ (a JSON list equals the tuple).
    Allowed: the keys of RERUN_MAY_CHANGE. Blocking: every other key, since it changes
    the model, the data or the optimisation already done.
  """
  saved, new, defaults = upgrade(saved_flat), flatten(config), flatten(base_config())
  blocking, allowed = [], []
  for key in sorted(_keys_the_run_reads(config)):
    old = _as_config_value(saved.get(key, defaults[key]))
    if old != _as_config_value(new[key]):
      (allowed if key in RERUN_MAY_CHANGE else blocking).append((key, old, new[key]))
  return blocking, allowed


def _override(key: str, value) -> str:
  """The command-line flag that sets `key` to `value`, quoted for the shell."""
  if key == 'model.name':  # Given after the config path: --config=configs/cub.py:fdl.
    return f'--config=CONFIG.py:{value}'
  if isinstance(value, (tuple, list)):
    items = [json.dumps(v) if isinstance(v, str) else repr(v) for v in value]
    text = f'({", ".join(items)}{"," if len(items) == 1 else ""})'
  else:
    text = value if isinstance(value, str) else repr(value)
  return shlex.quote(f'--config.{key}={text}')


def rerun_error_message(workdir: str, blocking) -> str:
  """The error for a rerun whose config changes what `workdir`'s run already did."""
  lines = [f'{workdir} holds a run of another config: its config.json differs in keys a '
           'rerun cannot change (they decide the model, the data or the optimisation '
           'already done):']
  lines += [f'  config.{key}: saved {old!r}, now {new!r}' for key, old, new in blocking]
  flags = [_override(key, old) for key, old, _ in blocking if old is not None]
  unset = [key for key, old, _ in blocking if old is None]
  lines.append('Train the new config in a new --workdir, or rerun with the saved values'
               + (':' if flags or unset else '.'))
  if flags:
    lines.append('  ' + ' '.join(flags))
  if unset:  # No command-line flag sets None.
    lines.append(f'  and None for {", ".join(unset)} in the config file')
  return '\n'.join(lines)
