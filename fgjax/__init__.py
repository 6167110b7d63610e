"""fgjax: fine-grained visual recognition in JAX/Flax (README.md).

Importing fgjax adds its XLA:CPU options to XLA_FLAGS (fgjax.xla_cpu; switched off by
FGJAX_XLA_CPU_DEFAULTS=0); it must therefore come before the first JAX computation.
"""

from fgjax import xla_cpu as _xla_cpu

_xla_cpu.apply_defaults()
