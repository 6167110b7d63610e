"""Fake command-line tools for the launch/tpu and launch/slurm script tests.

Every fake appends its argv to a log (and answers from a scripted queue where the script reads
an answer: the queued resource's state, whether the run is finished). The tests compare the
log with the commands that the scripts' documentation says they run, written out there.
"""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / 'launch' / 'tpu'
SLURM = REPO / 'launch' / 'slurm'

FAKE = '''#!{python} -S
import json, os, sys, time
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
fake_dir = os.environ['FAKE_DIR']
entry = {{'argv': [name] + args, 'cwd': os.getcwd(),
          'JAX_LOCAL_DEVICE_IDS': os.environ.get('JAX_LOCAL_DEVICE_IDS')}}
if name == 'sudo' and args[:1] == ['tee']:
  entry['stdin'] = sys.stdin.read()
with open(os.path.join(fake_dir, 'calls.jsonl'), 'a') as f:
  f.write(json.dumps(entry) + '\\n')


def answer(queue):
  path = os.path.join(fake_dir, queue)
  lines = open(path).read().splitlines() if os.path.exists(path) else []
  if not lines:
    sys.exit(f'fake {{name}}: no scripted answer left in {{queue}}')
  with open(path, 'w') as f:
    f.writelines(line + '\\n' for line in lines[1:])
  return lines[0]


joined = ' '.join(args)
if name == 'gcloud' and 'queued-resources describe' in joined:
  state = answer('states')
  if state == 'ERROR':
    sys.exit('fake gcloud: describe failed')
  print(state)
elif name == 'gcloud' and 'tpu-vm ssh' in joined and os.environ.get('FAKE_SSH_RUNS'):
  # One simulated worker: the command runs in a shell in $HOME, as ssh would run it.
  command = next(a for a in args if a.startswith('--command='))[len('--command='):]
  import subprocess
  sys.exit(subprocess.run(['bash', '-c', command], cwd=os.environ['HOME']).returncode)
elif name == 'gcloud' and joined.startswith('storage ls'):
  sys.exit(0 if answer('finished') == 'yes' else 1)
elif name == 'mountpoint':
  sys.exit(0 if os.environ.get('FAKE_MOUNTED') else 1)
elif name == 'lsb_release':
  print('jammy')
elif name == 'git' and 'status' in args:
  print(os.environ.get('FAKE_GIT_STATUS', ''), end='')
elif name == 'srun' and os.environ.get('FAKE_SRUN_BLOCK'):
  with open(os.path.join(fake_dir, 'srun.pid'), 'w') as f:
    f.write(str(os.getpid()))
  time.sleep(15)
time.sleep(float(os.environ.get('FAKE_SLEEP_' + name, '0')))
sys.exit(int(os.environ.get('FAKE_EXIT_' + name, '0')))
'''
FAKES_ON_PATH = ('gcloud', 'git', 'sudo', 'curl', 'sh', 'mountpoint', 'lsb_release', 'gcsfuse',
                 'srun', 'sbatch', 'scontrol')

# The settings every TPU test starts from.
SETTINGS = {
    'FGJAX_PROJECT': 'my-project',
    'FGJAX_ZONE': 'us-central2-b',
    'FGJAX_TPU': 'fgjax-pod',
    'FGJAX_BUCKET': 'gs://my-bucket',
    'FGJAX_RUN': 'runs/cub_fdl',
    'FGJAX_CONFIG': 'configs/cub.py:fdl',
    'FGJAX_DATA': 'gs://my-bucket/tensorflow_datasets',
    'FGJAX_POLL_SECONDS': '0',
}


class Fakes:
  """A folder of fake commands, their call log and their scripted answers."""

  def __init__(self, root):
    self.dir = root / 'fake'
    self.home = root / 'home'
    self.tmp = root / 'tmp'
    bin_dir = self.dir / 'bin'
    for folder in (bin_dir, self.home, self.tmp):
      folder.mkdir(parents=True)
    for name in FAKES_ON_PATH:
      self.install(bin_dir / name)
    self.env = {
        'PATH': f'{bin_dir}:{os.environ["PATH"]}',
        'HOME': str(self.home),
        'TMPDIR': str(self.tmp),
        'FAKE_DIR': str(self.dir),
        'CLOUDSDK_CONFIG': str(root / 'no-gcloud-config'),  # A real gcloud would find no account.
        'LC_ALL': 'C.UTF-8',
    }

  def install(self, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)

  def script(self, queue, *answers):
    (self.dir / queue).write_text(''.join(a + '\n' for a in answers))

  def entries(self):
    log = self.dir / 'calls.jsonl'
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  def calls(self):
    return [e['argv'] for e in self.entries()]

  def run(self, script, *args, env=(), cwd=REPO, timeout=60):
    return subprocess.run(['bash', str(script), *args], env={**self.env, **dict(env)}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)
