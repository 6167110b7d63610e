"""XLA:CPU options fgjax turns on by default: set in XLA_FLAGS when fgjax is imported.

JAX 0.10's XLA:CPU hands each convolution to YNNPACK, whose kernels for the backward
pass of a ResNet's convolutions are slow on x86 CPUs;
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` keeps convolutions on
XLA's own (Eigen) kernels and leaves the rest as it is. The ResNet-50 train step on the
2-core CPU then takes about 0.7x the time, and a small backbone's (resnet_tiny) the same
time (README, Benchmarks, with the other options measured; `launch/benchmark.py
--mode=compare` times it against PyTorch). The option affects the CPU backend only; GPU
and TPU runs are unchanged.

XLA reads XLA_FLAGS once, when JAX creates its first backend, so the option works when
`fgjax` is imported before the first JAX computation (launch/*.py do; in a notebook,
import fgjax first). It is not added when XLA_FLAGS already names the option (the user's
value wins), when the environment has FGJAX_XLA_CPU_DEFAULTS=0 (XLA's own defaults,
with which README's parts-benchmark figures were measured), or when the installed
jaxlib does not define it: XLA ends the process on a flag it does not know, and the
option is experimental, so fgjax looks for its name in jaxlib's libraries first.
"""

import glob
import logging
import mmap
import os
import sys
from typing import MutableMapping

DEFAULT_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
SWITCH = 'FGJAX_XLA_CPU_DEFAULTS'


def _flag_name(flag: str) -> str:
  return flag.split('=', 1)[0]


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
  """Appends DEFAULT_FLAGS to environ['XLA_FLAGS'] (module docstring); returns those added."""
  environ = os.environ if environ is None else environ
  switch = environ.get(SWITCH, '1').strip().lower()
  if switch not in ('0', '1', 'false', 'true', 'off', 'on'):
    raise ValueError(f'{SWITCH}={environ[SWITCH]!r}: expected 1 (fgjax\'s XLA:CPU options, '
                     'the default) or 0 (XLA\'s own).')
  if switch in ('0', 'false', 'off'):
    return ()
  present = {_flag_name(f) for f in environ.get('XLA_FLAGS', '').split()}
  added = tuple(f for f in DEFAULT_FLAGS
                if _flag_name(f) not in present and jaxlib_defines(_flag_name(f)))
  if added:
    environ['XLA_FLAGS'] = ' '.join([environ.get('XLA_FLAGS', '').strip(), *added]).strip()
    if _backends_started():
      logging.warning('fgjax: JAX had already started its backends, so %s will not apply to '
                      'this process; import fgjax before the first JAX computation.',
                      ' '.join(added))
  return added


def _backends_started() -> bool:
  if 'jax' not in sys.modules:  # Not imported yet, so nothing started (and no import cost).
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # A JAX without it: nothing to warn about.
    return False


def jaxlib_defines(flag: str) -> bool:
  """Whether one of the installed jaxlib's libraries holds the name of `flag` (e.g.
  '--xla_cpu_...'): XLA defines its flags there by name. Largest library first."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  folder = os.path.dirname(jaxlib.__file__)
  libraries = [p for ext in ('so', 'dylib', 'pyd') for p in glob.glob(f'{folder}/*.{ext}')]
  name = flag.lstrip('-').encode()
  for path in sorted(libraries, key=os.path.getsize, reverse=True):
    try:
      with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data.find(name) >= 0:
          return True
    except (OSError, ValueError):  # Unreadable, or empty (mmap refuses size 0).
      continue
  logging.info('fgjax: jaxlib in %s does not define %s; not adding it.', folder, flag)
  return False
