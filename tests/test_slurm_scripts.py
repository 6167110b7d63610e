"""launch/slurm scripts, run against fake srun, sbatch and scontrol on PATH (fake_cli): each
test compares the commands run with those the scripts' documentation states."""

import os
import signal
import subprocess
import time

import pytest

from fake_cli import REPO, SLURM


SLURM_JOB = {
    'SLURM_JOB_ID': '4242',
    'SLURM_JOB_NAME': 'fgjax',
    'SLURM_JOB_NUM_NODES': '2',
    'SLURM_GPUS_ON_NODE': '4',
    'SLURM_CPUS_PER_TASK': '24',
    'SLURM_SUBMIT_DIR': str(REPO),
    'FGJAX_CONFIG': 'configs/cub.py:fdl',
    'FGJAX_WORKDIR': '/shared/runs/cub_fdl',
    'FGJAX_PYTHON': '/shared/venv/bin/python',
}


def srun(log_dir, *train_args):
  return ['srun', '--ntasks-per-node=1', '--cpus-per-task=24', '--kill-on-bad-exit=1',
          '--open-mode=append', f'--output={log_dir}/fgjax_%j_node%n.log',
          '/shared/venv/bin/python', 'launch/train.py', '--multihost',
          '--config=configs/cub.py:fdl', '--workdir=/shared/runs/cub_fdl', *train_args]


def test_sbatch_directives():
  directives = [line for line in (SLURM / 'train.sbatch').read_text().splitlines()
                if line.startswith('#SBATCH')]
  assert directives == [
      '#SBATCH --job-name=fgjax',
      '#SBATCH --nodes=2',
      '#SBATCH --ntasks-per-node=1',
      '#SBATCH --gpus-per-node=8',
      '#SBATCH --cpus-per-task=32',
      '#SBATCH --time=24:00:00',
      '#SBATCH --requeue',
      '#SBATCH --signal=B:USR1@120',
      '#SBATCH --open-mode=append',
      '#SBATCH --output=logs/%x_%j.out',
  ]


@pytest.mark.parametrize('srun_status', [0, 3])
def test_sbatch_runs_one_training_process_per_node_on_all_its_gpus(fakes, srun_status):
  log_dir = fakes.tmp / 'logs'
  result = fakes.run(SLURM / 'train.sbatch', '--config.train.batch_size=64',
                     env={**SLURM_JOB, 'FGJAX_LOG_DIR': str(log_dir),
                          'FAKE_EXIT_srun': str(srun_status)})
  assert result.returncode == srun_status, result.stderr
  assert fakes.entries() == [{'argv': srun(log_dir, '--config.train.batch_size=64'),
                              'cwd': str(REPO), 'JAX_LOCAL_DEVICE_IDS': '0,1,2,3'}]
  assert log_dir.is_dir()


def test_sbatch_requeues_itself_when_the_time_limit_nears(fakes):
  log_dir = fakes.tmp / 'logs'
  env = {**fakes.env, **SLURM_JOB, 'FGJAX_LOG_DIR': str(log_dir), 'FAKE_SRUN_BLOCK': '1'}
  pid_file, stderr_file = fakes.dir / 'srun.pid', fakes.tmp / 'stderr'
  # Files, not pipes: the fake srun outlives the script and would hold a pipe open.
  with open(stderr_file, 'w') as stderr:
    job = subprocess.Popen(['bash', str(SLURM / 'train.sbatch')], env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert pid_file.exists(), 'the fake srun never started'
    time.sleep(0.2)  # The script is waiting for srun.
    job.send_signal(signal.SIGUSR1)
    job.wait(timeout=10)
  finally:
    job.kill()
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass
  assert job.returncode == 128 + signal.SIGUSR1
  assert 'requeueing job 4242' in stderr_file.read_text()
  assert fakes.calls() == [srun(log_dir), ['scontrol', 'requeue', '4242']]


@pytest.mark.parametrize('unset, named', [
    (['SLURM_JOB_ID'], 'not in a SLURM job'),
    (['FGJAX_CONFIG'], 'not set: FGJAX_CONFIG ('),
    (['FGJAX_WORKDIR', 'SLURM_GPUS_ON_NODE'], 'not set: FGJAX_WORKDIR SLURM_GPUS_ON_NODE ('),
    (['SLURM_CPUS_PER_TASK'], 'not set: SLURM_CPUS_PER_TASK ('),
])
def test_sbatch_names_what_is_missing_and_runs_nothing(fakes, unset, named):
  env = {**SLURM_JOB, 'FGJAX_LOG_DIR': str(fakes.tmp / 'logs'), **{name: '' for name in unset}}
  result = fakes.run(SLURM / 'train.sbatch', env=env)
  assert result.returncode != 0
  assert named in result.stderr
  assert not fakes.calls()


@pytest.mark.parametrize('flags, options', [
    ([], []),
    (['-n', '4', '-g', '8', '-c', '48', '-t', '48:00:00', '-p', 'gpu', '--',
      '--config.train.epochs=1'],
     ['--nodes=4', '--gpus-per-node=8', '--cpus-per-task=48', '--time=48:00:00',
      '--partition=gpu']),
])
def test_submit_passes_only_the_given_options_to_sbatch(fakes, flags, options):
  log_dir = fakes.tmp / 'logs'
  env = {'FGJAX_CONFIG': 'configs/cub.py:fdl', 'FGJAX_WORKDIR': '/shared/runs/cub_fdl',
         'FGJAX_LOG_DIR': str(log_dir)}
  result = fakes.run(SLURM / 'submit.sh', *flags, env=env)
  assert result.returncode == 0, result.stderr
  train_args = flags[flags.index('--') + 1:] if '--' in flags else []
  assert fakes.calls() == [['sbatch', *options, f'--output={log_dir}/%x_%j.out',
                            'launch/slurm/train.sbatch', *train_args]]
  assert log_dir.is_dir()


def test_submit_names_the_missing_settings_and_submits_nothing(fakes, tmp_path):
  result = fakes.run(SLURM / 'submit.sh', '-n', '2')
  assert result.returncode != 0
  assert 'not set: FGJAX_CONFIG FGJAX_WORKDIR' in result.stderr
  elsewhere = fakes.run(SLURM / 'submit.sh', cwd=tmp_path,
                        env={'FGJAX_CONFIG': 'c', 'FGJAX_WORKDIR': 'w'})
  assert elsewhere.returncode != 0
  assert 'repository root' in elsewhere.stderr
  assert not fakes.calls()
