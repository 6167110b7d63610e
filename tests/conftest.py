"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Small models compile much faster this way; numerics are unchanged.
jax.config.update('jax_disable_most_optimizations', True)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def demo_data_dir(tmp_path_factory):
  """A data_dir holding the prepared 'tiny' demo data set (96 train / 37 test)."""
  from fgjax.data import registry  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  registry.get_builder('demo', data_dir, builder_config='tiny').download_and_prepare()
  return data_dir


@pytest.fixture
def tiny_config(demo_data_dir):
  """The demo config shrunk for tests: tiny data, 32 px, a few steps."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.data.data_dir = demo_data_dir
  c.data.builder_config = 'tiny'
  c.data.image_size = 32
  c.data.resize_size = 36
  c.train.batch_size = 16
  c.train.epochs = 2
  c.train.log_every_steps = 2
  c.train.eval_every_epochs = 1
  c.train.checkpoint_every_steps = 3
  c.eval.batch_size = 16
  return c


@pytest.fixture
def fakes(tmp_path):
  """Fake gcloud, git, srun, sbatch, ... first on PATH, logging their calls (fake_cli)."""
  import fake_cli  # pylint: disable=g-import-not-at-top
  return fake_cli.Fakes(tmp_path)
