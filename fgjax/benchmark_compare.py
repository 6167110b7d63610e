"""fgjax against PyTorch: the same ResNet train step, timed alternately in one process.

  python launch/benchmark.py --mode=compare --backbone=resnet50 --image_size=224 \
      --batch_size=8 --dtypes=float32,bfloat16 --layouts=nchw,channels_last --steps=5

Needs torch (`pip install -e '.[compare]'`, torch 2.13.0). Both sides train the same
network (fgjax's `resnet` model; its torch twin fgjax.torch_resnet, torchvision's layout)
with the same step: forward in train mode (BatchNorm batch statistics), softmax
cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4, on one fixed
random batch of `batch_size` images of `image_size` pixels and `num_classes` classes.
fgjax runs on one device (its pmapped step over that device); torch on the GPU when
there is one, else on the CPU with its default threads. bfloat16 is each framework's
mixed precision: fgjax's `model.dtype='bfloat16'` (parameters and optimiser in float32),
torch's `autocast(dtype=torch.bfloat16)`. torch's layout is NCHW or channels_last
(fgjax is NHWC throughout). Beside fgjax's default step ('fgjax_*' in the records), each
of `variants` is timed too ('fgjax_<variant>_*'): 'dot', 1x1 convolutions as matrix
products (`model.pointwise_conv='dot'`, fgjax.models.resnet); 'shard_map', the step as
`jax.jit(jax.shard_map(...))` instead of `jax.pmap` (`train.parallelism`); 'no_donation',
the state's buffers not donated to the step.

After compiling (fgjax) and `warmup` untimed steps of every contender, `steps` rounds
time one step of each in turn, so that a change in the machine's load falls on all of
them alike; each record has the medians and their ratio, fgjax over torch (> 1: fgjax
is slower).
"""

import statistics
import time
from typing import Callable, Sequence

import numpy as np

MOMENTUM, WEIGHT_DECAY, LEARNING_RATE = 0.9, 5e-4, 0.01
LAYOUTS = ('nchw', 'channels_last')
# fgjax steps timed beside the default one: name -> how it differs (module docstring).
VARIANTS = {'dot': {'pointwise_conv': 'dot'}, 'shard_map': {'parallelism': 'shard_map'},
            'no_donation': {'donate': False}}


def alternate_timing(steps_by_name: dict[str, Callable[[], None]], *, steps: int, warmup: int,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
  """Runs every step function `warmup` times, then `steps` rounds of one call each, in
  the dict's order; returns {name: [seconds of each timed call]}."""
  for fn in steps_by_name.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in steps_by_name}
  for _ in range(steps):
    for name, fn in steps_by_name.items():
      t0 = clock()
      fn()
      times[name].append(clock() - t0)
  return times


def torch_train_step(*, backbone: str, image_size: int, batch_size: int, dtype: str,
                     layout: str, num_classes: int, seed: int = 0):
  """(step, info): `step()` runs one torch train step and waits for it (module docstring)."""
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown torch layout {layout!r}; valid: {list(LAYOUTS)}.')
  import torch  # pylint: disable=g-import-not-at-top
  from fgjax import torch_resnet  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(seed)
  model = torch_resnet.build(backbone, num_classes).train().to(device)
  rng = np.random.default_rng(seed)
  images = torch.from_numpy(rng.integers(0, 256, (batch_size, 3, image_size, image_size))
                            .astype(np.float32) / 255).to(device)
  labels = torch.from_numpy(rng.integers(0, num_classes, batch_size)).to(device)
  if layout == 'channels_last':
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                              weight_decay=WEIGHT_DECAY)

  def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  info = {'torch': torch.__version__, 'torch_device': device,
          'torch_threads': torch.get_num_threads()}
  return step, info


def compare_mode(*, backbone, image_size, batch_size, dtypes, layouts, variants, steps,
                 warmup) -> list[dict]:
  """launch/benchmark.py's compare mode: `compare_train` with comma-separated lists."""
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top  # It imports this.
  return compare_train(backbone=backbone, image_size=image_size, batch_size=batch_size,
                       dtypes=benchmark_lib.str_list(dtypes),
                       layouts=benchmark_lib.str_list(layouts),
                       variants=benchmark_lib.str_list(variants), steps=steps, warmup=warmup)


# launch/benchmark.py's table: (header, record key, format).
COLUMNS = (('dtype', 'dtype', 's'), ('torch layout', 'torch_layout', 's'),
           ('fgjax step s', 'fgjax_step_s', '.3f'), ('torch step s', 'torch_step_s', '.3f'),
           ('fgjax/torch', 'fgjax_over_torch', '.2f'),
           *((f'{v}/torch', f'fgjax_{v}_over_torch', '.2f') for v in VARIANTS),
           ('fgjax img/s', 'fgjax_images_per_s', '.1f'),
           ('torch img/s', 'torch_images_per_s', '.1f'),
           ('fgjax compile s', 'fgjax_compile_s', '.1f'))


def compare_train(*, backbone: str, image_size: int, batch_size: int, dtypes: Sequence[str],
                  layouts: Sequence[str], steps: int, warmup: int,
                  variants: Sequence[str] = ('dot',), num_classes: int = 200) -> list[dict]:
  """One record per (dtype, torch layout): the medians and fgjax / torch, for fgjax's
  default step and each of `variants` (module docstring)."""
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f'Unknown fgjax variants {unknown}; valid: {list(VARIANTS)}.')
  fgjax_names = ['fgjax'] + [f'fgjax_{v}' for v in variants]
  records = []
  for dtype in dtypes:
    contenders, fgjax_records = {}, {}
    for name, variant in zip(fgjax_names, [None, *variants]):
      options = dict(VARIANTS.get(variant, {}))
      parallel = ts.Parallel(options.pop('parallelism', 'pmap'), jax.local_devices()[:1])
      contenders[name], fgjax_records[name] = benchmark_lib.prepare_train_step(
          'resnet', backbone=backbone, image_size=image_size, batch_size=batch_size,
          dtype=dtype, num_classes=num_classes, parallel=parallel, **options)
    fgjax_record = fgjax_records['fgjax']
    info = {}
    for layout in layouts:
      contenders[layout], info = torch_train_step(
          backbone=backbone, image_size=image_size, batch_size=batch_size, dtype=dtype,
          layout=layout, num_classes=num_classes)
    times = alternate_timing(contenders, steps=steps, warmup=warmup)
    medians = {name: statistics.median(times[name]) for name in fgjax_names}
    fgjax_s = medians['fgjax']
    for layout in layouts:
      torch_s = statistics.median(times[layout])
      records.append({
          'mode': 'compare', 'backbone': backbone, 'image_size': image_size,
          'batch_size': batch_size, 'dtype': dtype, 'torch_layout': layout, 'steps': steps,
          'warmup': warmup, 'device_kind': fgjax_record['device_kind'],
          'fgjax_compile_s': fgjax_record['compile_s'], 'fgjax_step_s': fgjax_s,
          'torch_step_s': torch_s, 'fgjax_over_torch': fgjax_s / torch_s,
          **{f'{n}_step_s': medians[n] for n in fgjax_names[1:]},
          **{f'{n}_over_torch': medians[n] / torch_s for n in fgjax_names[1:]},
          'fgjax_images_per_s': batch_size / fgjax_s, 'torch_images_per_s': batch_size / torch_s,
          'fgjax_loss_finite': all(contenders[n].loss_finite() for n in fgjax_names),
          **info})
  return records
