"""How much memory each model's train step needs, and the largest batch that fits.

  python launch/benchmark.py --mode=memory --image_size=448 --dtype=bfloat16 --memory_gib=80

From XLA's memory estimate of the compiled step (`benchmark_memory`); nothing runs.
"""

from typing import Sequence


def benchmark_memory(model_names: Sequence[str], *, backbone: str, image_size: int, dtype: str,
                     memory_gib: float, num_classes: int = 200) -> list[dict]:
  """XLA's memory estimate of each model's compiled train step (arguments + outputs +
  temporaries - donated) at 1 and 2 images per device, and the largest batch per device
  within `memory_gib` on the line through them:
    bytes(b) = fixed + b * per_image,  largest = floor((memory - fixed) / per_image).
  Nothing runs; the estimate is the compiling backend's (XLA:CPU's here: a GPU's buffers
  and its allocator's fragmentation differ, so measure there before relying on it)."""
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top  # It imports this.
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  parallel, records = ts.Parallel('pmap'), []
  for name in model_names:
    sizes = [benchmark_lib.prepare_train_step(
        name, backbone=backbone, image_size=image_size, batch_size=b, dtype=dtype,
        num_classes=num_classes, parallel=parallel)[1]['xla_memory_bytes'] for b in (1, 2)]
    per_image, fixed = sizes[1] - sizes[0], 2 * sizes[0] - sizes[1]
    largest = int((memory_gib * 2**30 - fixed) // per_image) if per_image > 0 else None
    records.append({'mode': 'memory', 'model': name, 'backbone': backbone,
                    'image_size': image_size, 'dtype': dtype, 'xla_batch1_bytes': sizes[0],
                    'xla_batch2_bytes': sizes[1], 'per_image_bytes': per_image,
                    'fixed_bytes': fixed, 'memory_gib': memory_gib,
                    'largest_batch_per_device': largest})
  return records


def memory_mode(*, models, backbone, image_size, dtype, memory_gib) -> list[dict]:
  """launch/benchmark.py's memory mode: `benchmark_memory` with a comma-separated list."""
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top
  return benchmark_memory(benchmark_lib.str_list(models), backbone=backbone,
                          image_size=image_size, dtype=dtype, memory_gib=memory_gib)
