"""SSANet's circulant ridge regression: the Fourier solver against the explicit dense solve
(`launch/benchmark.py --mode=fft`)."""

import statistics
import time
from typing import Sequence

import numpy as np


def benchmark_fft(scales: Sequence[int], *, channels: int, batch_size: int,
                  repeats: int) -> list[dict]:
  """Circulant ridge regression: the Fourier solver against the explicit dense solve.

  Both are jitted (fgjax.ops.scale_mining.ridge_filter_fft / ridge_filter_dense)
  on `batch_size` problems of S scales x `channels`; each record has the median of
  `repeats` timed calls per S. The last record summarises: the first S where the
  FFT is faster (crossover) and the log-log growth exponent of each solver's time
  over the largest half of the S range.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fgjax.ops import scale_mining  # pylint: disable=g-import-not-at-top
  solvers = {'fft': jax.jit(scale_mining.ridge_filter_fft, static_argnums=2),
             'dense': jax.jit(scale_mining.ridge_filter_dense, static_argnums=2)}
  rng = np.random.default_rng(0)
  records = []
  for s in scales:
    x = jnp.asarray(rng.normal(size=(batch_size, s, channels)), jnp.float32)
    y = jnp.asarray(scale_mining.gaussian_shift_target(s, 0.5), jnp.float32)
    record = {'mode': 'fft', 'scales': s, 'channels': channels, 'batch_size': batch_size}
    for name, fn in solvers.items():
      fn(x, y, 1e-2).block_until_ready()  # Compile.
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x, y, 1e-2).block_until_ready()
        times.append(time.perf_counter() - t0)
      record[f'{name}_ms'] = 1e3 * statistics.median(times)
    record['speedup'] = record['dense_ms'] / record['fft_ms']
    records.append(record)
  faster = [r['scales'] for r in records if r['speedup'] > 1]
  summary = {'mode': 'fft', 'scales': 'summary', 'crossover_scales': faster[0] if faster else None}
  big = records[len(records) // 2:]
  if len(big) >= 2:
    log_s = np.log([r['scales'] for r in big])
    for name in solvers:
      summary[f'{name}_growth_exponent'] = float(np.polyfit(log_s, np.log([r[f'{name}_ms']
                                                                           for r in big]), 1)[0])
  return records + [summary]


def fft_mode(*, scales, channels, batch_size, repeats) -> list[dict]:
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top  # It imports this.
  return benchmark_fft(benchmark_lib.int_list(scales), channels=channels, batch_size=batch_size,
                       repeats=repeats)


# launch/benchmark.py's table: (header, record key, format).
COLUMNS = (('S', 'scales', 's'), ('FFT ms', 'fft_ms', '.3f'), ('dense ms', 'dense_ms', '.3f'),
           ('dense/FFT', 'speedup', '.2f'), ('crossover S', 'crossover_scales', 'd'),
           ('FFT growth', 'fft_growth_exponent', '.2f'),
           ('dense growth', 'dense_growth_exponent', '.2f'))
