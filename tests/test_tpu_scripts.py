"""launch/tpu scripts, run against fake gcloud, git, curl, gcsfuse, ... on PATH (fake_cli):
each test compares the commands run with those the scripts' documentation states."""

import os
import shlex
import signal
import subprocess
import time

import pytest

from fake_cli import REPO, SETTINGS, SLURM, TPU


# The commands, as the scripts' documentation states them.
WHERE = ['--zone=us-central2-b', '--project=my-project']
QR = ['gcloud', 'compute', 'tpus', 'queued-resources']
DESCRIBE = QR + ['describe', 'fgjax-pod'] + WHERE + ['--format=value(state.state)']
DELETE = QR + ['delete', 'fgjax-pod'] + WHERE + ['--force', '--quiet']
FINISHED = ['gcloud', 'storage', 'ls', 'gs://my-bucket/runs/cub_fdl/TRAINING_FINISHED']


def create(accelerator='v4-32', runtime='tpu-ubuntu2204-base', *tier):
  return QR + ['create', 'fgjax-pod', '--node-id=fgjax-pod'] + WHERE + [
      f'--accelerator-type={accelerator}', f'--runtime-version={runtime}', *tier]


def ssh_all(command):
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'fgjax-pod'] + WHERE + [
      '--worker=all', f'--command={command}']


def setup(tmp, worker_args='my-bucket /mnt/fgjax gs://my-bucket/tensorflow_datasets'):
  tarball = f'{tmp}/fgjax-fgjax-pod.tar.gz'
  return [
      ['git', '-C', str(REPO), 'status', '--porcelain', '--untracked-files=no'],
      ['git', '-C', str(REPO), 'archive', '--format=tar.gz', f'--output={tarball}', 'HEAD'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball, 'fgjax-pod:fgjax.tar.gz'] + WHERE +
      ['--worker=all'],
      ssh_all('rm -rf ~/fgjax && mkdir ~/fgjax && tar -xzf ~/fgjax.tar.gz -C ~/fgjax && '
              f'bash ~/fgjax/launch/tpu/worker_setup.sh {worker_args}'),
  ]


def train(train_args=''):
  return ssh_all('nohup bash ~/fgjax/launch/tpu/worker_train.sh configs/cub.py:fdl '
                 f'/mnt/fgjax/runs/cub_fdl{train_args} >> ~/fgjax_train.log 2>&1 < /dev/null &')


# --- create.sh ---------------------------------------------------------------------------------


def test_create_requests_the_queued_resource_and_waits_until_active(fakes):
  fakes.script('states', 'WAITING_FOR_RESOURCES', 'PROVISIONING', 'ACTIVE')
  result = fakes.run(TPU / 'create.sh', env=SETTINGS)
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [create(), DESCRIBE, DESCRIBE, DESCRIBE]
  assert result.stdout.split()[-1] == 'ACTIVE'


@pytest.mark.parametrize('accelerator, tier, expected', [
    ('v4-32', '', create('v4-32', 'tpu-ubuntu2204-base')),
    ('v5p-16', 'spot', create('v5p-16', 'v2-alpha-tpuv5', '--spot')),
    ('v5litepod-8', 'reserved', create('v5litepod-8', 'v2-alpha-tpuv5-lite', '--reserved')),
    ('v6e-8', 'guaranteed', create('v6e-8', 'v2-alpha-tpuv6e', '--guaranteed')),
])
def test_create_runtime_follows_the_accelerator_and_tier_adds_its_flag(fakes, accelerator, tier,
                                                                       expected):
  fakes.script('states', 'ACTIVE')
  result = fakes.run(TPU / 'create.sh',
                     env={**SETTINGS, 'FGJAX_ACCELERATOR': accelerator, 'FGJAX_TIER': tier})
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [expected, DESCRIBE]


def test_create_takes_an_explicit_runtime(fakes):
  fakes.script('states', 'ACTIVE')
  result = fakes.run(TPU / 'create.sh', env={**SETTINGS, 'FGJAX_ACCELERATOR': 'v9-8',
                                             'FGJAX_RUNTIME': 'my-runtime'})
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [create('v9-8', 'my-runtime'), DESCRIBE]


@pytest.mark.parametrize('setting, named', [({'FGJAX_ACCELERATOR': 'v9-8'}, 'FGJAX_RUNTIME'),
                                            ({'FGJAX_TIER': 'cheap'}, 'FGJAX_TIER')])
def test_create_refuses_an_accelerator_without_runtime_and_an_unknown_tier(fakes, setting, named):
  result = fakes.run(TPU / 'create.sh', env={**SETTINGS, **setting})
  assert result.returncode != 0
  assert named in result.stderr
  assert not fakes.calls()


def test_create_stops_when_the_request_fails(fakes):
  fakes.script('states', 'WAITING_FOR_RESOURCES', 'FAILED')
  result = fakes.run(TPU / 'create.sh', env=SETTINGS)
  assert result.returncode != 0
  assert 'fgjax-pod is FAILED' in result.stderr
  assert fakes.calls() == [create(), DESCRIBE, DESCRIBE]


# --- setup.sh, worker_setup.sh -----------------------------------------------------------------


def test_setup_ships_head_and_runs_worker_setup_on_every_worker(fakes):
  result = fakes.run(TPU / 'setup.sh', env=SETTINGS)
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == setup(fakes.tmp)
  assert 'warning' not in result.stderr


def test_setup_without_data_and_with_uncommitted_changes_warns(fakes):
  env = {**SETTINGS, 'FGJAX_DATA': '', 'FGJAX_BUCKET': 'plain-bucket', 'FAKE_GIT_STATUS': ' M x'}
  result = fakes.run(TPU / 'setup.sh', env=env)
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == setup(fakes.tmp, 'plain-bucket /mnt/fgjax')
  assert 'uncommitted changes' in result.stderr


@pytest.mark.parametrize('mounted', [False, True])
@pytest.mark.parametrize('data', ['gs://my-bucket/tensorflow_datasets', None])
def test_worker_setup_installs_mounts_and_copies_the_data(fakes, mounted, data):
  fakes.install(fakes.home / '.local' / 'bin' / 'uv')
  home, uid_gid = fakes.home, f'{os.getuid()}:{os.getgid()}'
  keyring = '/usr/share/keyrings/cloud.google.asc'
  install = [
      ['curl', '-LsSf', '--output', '/tmp/uv-install.sh', 'https://astral.sh/uv/install.sh'],
      ['sh', '/tmp/uv-install.sh', '--no-modify-path'],
      ['uv', 'venv', '--python=3.12', '--allow-existing', f'{home}/fgjax-venv'],
      ['uv', 'pip', 'install', f'--python={home}/fgjax-venv/bin/python', '--upgrade', 'jax[tpu]',
       '--editable', str(REPO)],
      ['mountpoint', '-q', '/mnt/fgjax'],
  ]
  mount = [
      ['sudo', 'curl', '-fsSL', '--output', keyring,
       'https://packages.cloud.google.com/apt/doc/apt-key.gpg'],
      ['lsb_release', '-cs'],
      ['sudo', 'tee', '/etc/apt/sources.list.d/gcsfuse.list'],
      ['sudo', 'apt-get', 'update', '-q'],
      ['sudo', 'apt-get', 'install', '-y', '-q', 'gcsfuse'],
      ['sudo', 'mkdir', '-p', '/mnt/fgjax'],
      ['sudo', 'chown', uid_gid, '/mnt/fgjax'],
      ['gcsfuse', '--implicit-dirs', '--rename-dir-limit=1000000', 'my-bucket', '/mnt/fgjax'],
  ]
  copy = [['gcloud', 'storage', 'rsync', '--recursive', data, f'{home}/tensorflow_datasets']]
  expected = install + ([] if mounted else mount) + (copy if data else [])

  args = ['my-bucket', '/mnt/fgjax'] + ([data] if data else [])
  result = fakes.run(TPU / 'worker_setup.sh', *args, env={'FAKE_MOUNTED': '1' if mounted else ''})
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == expected
  assert (home / 'tensorflow_datasets').is_dir() == bool(data)
  if not mounted:
    tee = next(e for e in fakes.entries() if e['argv'][:2] == ['sudo', 'tee'])
    assert tee['stdin'] == (f'deb [signed-by={keyring}] https://packages.cloud.google.com/apt '
                            'gcsfuse-jammy main\n')


# --- train.sh, worker_train.sh -----------------------------------------------------------------


def test_train_starts_the_same_command_on_every_worker_in_the_background(fakes):
  result = fakes.run(TPU / 'train.sh', '--config.train.batch_size=64',
                     '--config.data.data_dir=/data/my sets', env=SETTINGS)
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == [train(r' --config.train.batch_size=64 '
                                 r'--config.data.data_dir=/data/my\ sets')]
  remote = fakes.calls()[0][-1][len('--command='):]
  assert shlex.split(remote)[2:7] == [
      '~/fgjax/launch/tpu/worker_train.sh', 'configs/cub.py:fdl', '/mnt/fgjax/runs/cub_fdl',
      '--config.train.batch_size=64', '--config.data.data_dir=/data/my sets']


def test_train_command_runs_in_the_background_on_a_simulated_worker(fakes, tmp_path):
  (fakes.home / 'fgjax').symlink_to(REPO)
  fakes.install(fakes.home / 'fgjax-venv' / 'bin' / 'python')
  env = {**SETTINGS, 'FGJAX_MOUNT': str(tmp_path / 'mnt'), 'FAKE_SSH_RUNS': '1',
         'FAKE_SLEEP_python': '3'}
  workdir = tmp_path / 'mnt' / 'runs' / 'cub_fdl'
  workdir.mkdir(parents=True)
  result = fakes.run(TPU / 'train.sh', '--config.data.data_dir=/data/my sets', env=env)
  assert result.returncode == 0, result.stderr
  marker = workdir / 'TRAINING_FINISHED'
  assert not marker.exists()  # ssh returned while training runs on.
  start = time.monotonic()
  while not marker.exists() and time.monotonic() - start < 20:
    time.sleep(0.05)
  assert marker.exists()
  assert fakes.calls()[1:] == [
      ['python', 'launch/train.py', '--multihost', '--config=configs/cub.py:fdl',
       f'--workdir={workdir}', '--config.data.data_dir=/data/my sets']]
  assert '+ touch' in (fakes.home / 'fgjax_train.log').read_text()


@pytest.mark.parametrize('train_fails', [False, True])
def test_worker_train_runs_train_py_then_marks_the_run_finished(fakes, tmp_path, train_fails):
  fakes.install(fakes.home / 'fgjax-venv' / 'bin' / 'python')
  workdir = tmp_path / 'mnt' / 'run'
  workdir.mkdir(parents=True)
  result = fakes.run(TPU / 'worker_train.sh', 'configs/cub.py:fdl', str(workdir),
                     '--config.train.epochs=1', cwd=tmp_path,
                     env={'FAKE_EXIT_python': '1' if train_fails else '0'})
  assert (result.returncode != 0) == train_fails
  assert fakes.entries() == [{
      'argv': ['python', 'launch/train.py', '--multihost', '--config=configs/cub.py:fdl',
               f'--workdir={workdir}', '--config.train.epochs=1'],
      'cwd': str(REPO), 'JAX_LOCAL_DEVICE_IDS': None}]
  assert (workdir / 'TRAINING_FINISHED').exists() != train_fails


def test_worker_train_marks_nothing_after_a_sigterm(fakes, tmp_path):
  # A preemption signals every process of the VM; train.py (here a fake that sleeps) saves and
  # returns 0, the script's trap runs after it, and the run must not look finished.
  fakes.install(fakes.home / 'fgjax-venv' / 'bin' / 'python')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  job = subprocess.Popen(['bash', str(TPU / 'worker_train.sh'), 'configs/cub.py:fdl', str(workdir)],
                         env={**fakes.env, 'FAKE_SLEEP_python': '1'}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 10
  while not fakes.calls() and time.monotonic() < deadline:
    time.sleep(0.02)
  job.send_signal(signal.SIGTERM)
  _, stderr = job.communicate(timeout=10)
  assert job.returncode == 143
  assert 'is not marked finished' in stderr
  assert fakes.calls() == [['python', 'launch/train.py', '--multihost',
                            '--config=configs/cub.py:fdl', f'--workdir={workdir}']]
  assert not (workdir / 'TRAINING_FINISHED').exists()


# --- watch.sh ----------------------------------------------------------------------------------


def restart(tmp, train_args=''):
  """delete, create (the request is PROVISIONING, then ACTIVE), set up, train."""
  return [DELETE, create(), DESCRIBE, DESCRIBE] + setup(tmp) + [train(train_args)]


@pytest.mark.parametrize('delete_when_done', [False, True])
def test_watch_restarts_after_a_preemption_until_the_run_is_finished(fakes, delete_when_done):
  fakes.script('states', 'ACTIVE', 'ACTIVE', 'SUSPENDED', 'PROVISIONING', 'ACTIVE', 'ACTIVE')
  fakes.script('finished', 'no', 'no', 'no', 'no', 'yes')
  flags = ['--interval=0', '--max-restarts=3'] + ['--delete-when-done'] * delete_when_done
  result = fakes.run(TPU / 'watch.sh', *flags, '--', '--config.train.batch_size=64', env=SETTINGS)
  assert result.returncode == 0, result.stderr
  assert fakes.calls() == (
      [FINISHED, DESCRIBE, FINISHED, DESCRIBE, FINISHED, DESCRIBE] +
      restart(fakes.tmp, ' --config.train.batch_size=64') +
      [FINISHED, DESCRIBE, FINISHED] + ([DELETE] if delete_when_done else []))


def test_watch_gives_up_after_max_restarts(fakes):
  fakes.script('states', 'SUSPENDED', 'PROVISIONING', 'ACTIVE', 'FAILED')
  fakes.script('finished', 'no', 'no')
  result = fakes.run(TPU / 'watch.sh', '--interval=0', '--max-restarts=1', env=SETTINGS)
  assert result.returncode != 0
  assert 'all 1 restarts spent' in result.stderr
  assert fakes.calls() == [FINISHED, DESCRIBE] + restart(fakes.tmp) + [FINISHED, DESCRIBE]


def test_watch_retries_a_failed_restart_and_rides_out_a_failed_describe(fakes):
  # The first recreated request FAILS while create.sh waits; the next poll's describe fails.
  fakes.script('states', 'SUSPENDED', 'FAILED', 'ERROR', 'FAILED', 'PROVISIONING', 'ACTIVE')
  fakes.script('finished', 'no', 'no', 'no', 'yes')
  result = fakes.run(TPU / 'watch.sh', '--interval=0', '--max-restarts=2', env=SETTINGS)
  assert result.returncode == 0, result.stderr
  assert 'restart 1 failed' in result.stderr
  assert fakes.calls() == ([FINISHED, DESCRIBE, DELETE, create(), DESCRIBE] +
                           [FINISHED, DESCRIBE] +
                           [FINISHED, DESCRIBE] + restart(fakes.tmp) +
                           [FINISHED])


@pytest.mark.parametrize('flag', ['--interval=soon', '--max-restarts=-1', '--forever'])
def test_watch_refuses_bad_flags(fakes, flag):
  result = fakes.run(TPU / 'watch.sh', flag, env=SETTINGS)
  assert result.returncode != 0
  assert flag.split('=')[0] in result.stderr
  assert not fakes.calls()


# --- settings, help, dry run -------------------------------------------------------------------

REQUIRED = {
    'create.sh': ['FGJAX_PROJECT', 'FGJAX_ZONE', 'FGJAX_TPU'],
    'setup.sh': ['FGJAX_PROJECT', 'FGJAX_ZONE', 'FGJAX_TPU', 'FGJAX_BUCKET'],
    'train.sh': ['FGJAX_PROJECT', 'FGJAX_ZONE', 'FGJAX_TPU', 'FGJAX_RUN', 'FGJAX_CONFIG'],
    'watch.sh': ['FGJAX_PROJECT', 'FGJAX_ZONE', 'FGJAX_TPU', 'FGJAX_BUCKET', 'FGJAX_RUN',
                 'FGJAX_CONFIG'],
}


@pytest.mark.parametrize('script, missing', [(s, m) for s, names in REQUIRED.items()
                                             for m in names])
def test_a_missing_setting_is_named_and_nothing_runs(fakes, script, missing):
  fakes.script('states', 'ACTIVE')
  result = fakes.run(TPU / script, env={**SETTINGS, missing: ''})
  assert result.returncode != 0
  assert result.stderr.strip() == (f'{script}: not set: {missing} (export it; the settings are '
                                   'listed in launch/tpu/common.sh)')
  assert not fakes.calls()


@pytest.mark.parametrize('script', sorted(REQUIRED))
def test_every_missing_setting_is_named_at_once(fakes, script):
  result = fakes.run(TPU / script, env={'FGJAX_POLL_SECONDS': '0'})
  assert result.returncode != 0
  assert f'not set: {" ".join(REQUIRED[script])} (' in result.stderr
  assert not fakes.calls()


@pytest.mark.parametrize('script', [TPU / 'create.sh', TPU / 'setup.sh', TPU / 'train.sh',
                                    TPU / 'watch.sh', TPU / 'worker_setup.sh',
                                    TPU / 'worker_train.sh', SLURM / 'train.sbatch',
                                    SLURM / 'submit.sh'])
def test_help_prints_the_usage_and_runs_nothing(fakes, script):
  result = fakes.run(script, '-h')
  assert result.returncode == 0, result.stderr
  assert 'usage:' in result.stdout
  assert not result.stdout.startswith(('!', '#'))
  assert not fakes.calls()
  assert os.access(script, os.X_OK)


def test_dry_run_prints_the_commands_and_runs_none(fakes):
  env = {**SETTINGS, 'FGJAX_DRY_RUN': '1'}
  created = fakes.run(TPU / 'create.sh', env=env)
  trained = fakes.run(TPU / 'train.sh', '--config.train.epochs=1', env=env)
  assert created.returncode == trained.returncode == 0
  assert not fakes.calls()
  assert created.stderr == ('+ gcloud compute tpus queued-resources create fgjax-pod '
                            '--node-id=fgjax-pod --zone=us-central2-b --project=my-project '
                            '--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base\n')
  assert trained.stderr == ('+ gcloud compute tpus tpu-vm ssh fgjax-pod --zone=us-central2-b '
                            "--project=my-project --worker=all '--command=nohup bash "
                            '~/fgjax/launch/tpu/worker_train.sh configs/cub.py:fdl '
                            '/mnt/fgjax/runs/cub_fdl --config.train.epochs=1 >> '
                            "~/fgjax_train.log 2>&1 < /dev/null &'\n")
