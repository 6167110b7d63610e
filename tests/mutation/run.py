"""Mutation check: plant one bug at a time in a copy of the committed tree, run the tests.

  python tests/mutation/run.py [--out=mutation.jsonl] [MUTANT_ID ...]

Each mutant of tests/mutation/mutants.py replaces one exact snippet of a library file.
The tests it names run first (fast); when none of them fails, the whole suite runs.
A mutant is caught when any test fails. Prints one JSON line per mutant and a summary.
The copy is `git archive HEAD`: commit before running. Not part of the test suite
(a full run takes about an hour on 2 cores).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mutants as mutants_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _pytest(copy: str, targets, workers: int = 1):
  """(return code, failed test ids, seconds) of pytest in `copy`, importing the copy."""
  args = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *targets]
  if workers > 1:
    args += ['-n', str(workers)]
  start = time.time()
  proc = subprocess.run(args, cwd=copy, capture_output=True, text=True, timeout=3600,
                        env={**os.environ, 'PYTHONPATH': copy})
  failed = [line.split()[1] for line in proc.stdout.splitlines()
            if line.startswith(('FAILED', 'ERROR'))]
  return proc.returncode, failed, time.time() - start


def check(mutant: mutants_lib.Mutant, copy: str) -> dict:
  path = os.path.join(copy, mutant.path)
  with open(path) as f:
    text = f.read()
  if text.count(mutant.old) != 1:
    raise ValueError(f'{mutant.id}: {mutant.path} holds its snippet {text.count(mutant.old)} '
                     'times, expected once.')
  with open(path, 'w') as f:
    f.write(text.replace(mutant.old, mutant.new))
  try:
    rc, failed, seconds = _pytest(copy, mutant.tests)
    how = 'named tests'
    if rc == 0:
      rc, failed, more = _pytest(copy, ['tests'], workers=2)
      how, seconds = 'whole suite', seconds + more
  finally:
    with open(path, 'w') as f:
      f.write(text)
  return {'id': mutant.id, 'caught': rc != 0, 'by': failed, 'run': how, 'rc': rc,
          'seconds': round(seconds)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('ids', nargs='*', help='mutant ids (default: all)')
  parser.add_argument('--out', default=None, help='also append the JSON lines here')
  args = parser.parse_args()
  unknown = set(args.ids) - {m.id for m in mutants_lib.MUTANTS}
  if unknown:
    parser.error(f'unknown mutant ids: {sorted(unknown)}')
  chosen = [m for m in mutants_lib.MUTANTS if not args.ids or m.id in args.ids]
  rows = []
  with tempfile.TemporaryDirectory() as copy:
    subprocess.run(f'git -C {REPO} archive HEAD | tar -x -C {copy}', shell=True, check=True)
    for mutant in chosen:
      rows.append(check(mutant, copy))
      print(json.dumps(rows[-1]), flush=True)
      if args.out:
        with open(args.out, 'a') as f:
          f.write(json.dumps(rows[-1]) + '\n')
  caught = sum(r['caught'] for r in rows)
  print(f'caught {caught} of {len(rows)} ({100 * caught / max(len(rows), 1):.0f} %)')


if __name__ == '__main__':
  main()
