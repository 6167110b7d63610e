"""fgjax's default XLA:CPU options (fgjax.xla_cpu): how they enter XLA_FLAGS, and that the
ResNet train computation under them agrees with XLA's own kernels."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fgjax import xla_cpu

FLAG = xla_cpu.DEFAULT_FLAGS[0]


def test_defaults_are_appended_to_the_users_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.apply_defaults(env) == xla_cpu.DEFAULT_FLAGS
  assert env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=2 {FLAG}'
  assert xla_cpu.apply_defaults(env) == ()  # Once only.
  assert env['XLA_FLAGS'].count(FLAG) == 1
  empty = {}
  xla_cpu.apply_defaults(empty)
  assert empty['XLA_FLAGS'] == FLAG


def test_the_users_value_of_the_option_wins():
  mine = '--xla_cpu_experimental_ynn_fusion_type=eltwise,reduce'
  env = {'XLA_FLAGS': mine}
  assert xla_cpu.apply_defaults(env) == ()
  assert env['XLA_FLAGS'] == mine


@pytest.mark.parametrize('off', ['0', 'false', 'OFF'])
def test_switched_off_leaves_xla_flags_alone(off):
  env = {xla_cpu.SWITCH: off, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.apply_defaults(env) == ()
  assert env['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'
  env = {xla_cpu.SWITCH: off}
  xla_cpu.apply_defaults(env)
  assert 'XLA_FLAGS' not in env


def test_a_flag_this_jaxlib_does_not_define_is_not_added(monkeypatch):
  # XLA would end the process on it (an experimental flag may go in a later jaxlib).
  assert xla_cpu.jaxlib_defines(FLAG.split('=')[0])  # The jaxlib installed here has it.
  assert not xla_cpu.jaxlib_defines('--xla_cpu_fgjax_no_such_flag')
  monkeypatch.setattr(xla_cpu, 'jaxlib_defines', lambda flag: False)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  assert xla_cpu.apply_defaults(env) == ()
  assert env['XLA_FLAGS'] == '--xla_force_host_platform_device_count=2'


def test_too_late_to_apply_is_said(caplog):
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # This process's backends have started: XLA has read its flags.
  with caplog.at_level('WARNING'):
    assert xla_cpu.apply_defaults({}) == xla_cpu.DEFAULT_FLAGS
  assert 'import fgjax before the first JAX computation' in caplog.text


def test_a_bad_switch_value_names_the_variable():
  with pytest.raises(ValueError, match=f'{xla_cpu.SWITCH}=.yes please.: expected 1'):
    xla_cpu.apply_defaults({xla_cpu.SWITCH: 'yes please'})


# A train-mode ResNet forward and backward in a fresh process (XLA reads its flags once),
# with every XLA optimisation on, unlike the rest of the suite (conftest.py).
_CHILD = r'''
import json, os, sys
import fgjax
import jax, jax.numpy as jnp, numpy as np
from fgjax.models import resnet
net = resnet.get_backbone('resnet_tiny')
x = np.random.default_rng(1).normal(size=(4, 64, 64, 3)).astype(np.float32)
variables = net.init(jax.random.key(0), x, train=False)
def loss(params):
  features, _ = net.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
  return jnp.sum(features['stage4'] ** 2), features['pooled']
fn = jax.jit(jax.grad(loss, has_aux=True))
grads, pooled = fn(variables['params'])
leaves = jax.tree.leaves(grads)
np.savez(sys.argv[1], pooled=np.asarray(pooled), *[np.asarray(g) for g in leaves])
print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''),
                  'hlo': fn.lower(variables['params']).compile().as_text()}))
'''


def _run_child(tmp_path, name, switch):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update({xla_cpu.SWITCH: switch, 'JAX_PLATFORMS': 'cpu'})
  out = tmp_path / f'{name}.npz'
  proc = subprocess.run([sys.executable, '-c', _CHILD, str(out)], capture_output=True,
                        text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  with np.load(out) as arrays:
    return info, {k: arrays[k] for k in arrays.files}


def test_resnet_gradients_under_the_defaults_match_xlas_own_kernels(tmp_path):
  fast_info, fast = _run_child(tmp_path, 'fast', '1')
  plain_info, plain = _run_child(tmp_path, 'plain', '0')
  assert FLAG in fast_info['xla_flags'].split()
  assert FLAG not in plain_info['xla_flags'].split()
  # The option took effect: XLA compiled the same function differently.
  assert fast_info['hlo'] != plain_info['hlo']
  assert fast.keys() == plain.keys() and len(fast) > 10
  for key in fast:
    scale = np.abs(plain[key]).max() + 1e-6
    np.testing.assert_allclose(fast[key] / scale, plain[key] / scale, rtol=0, atol=2e-5,
                               err_msg=key)
