"""Where a train step's time goes: a jax.profiler trace of the compiled step, per part.

  python launch/benchmark.py --mode=profile --models=fdl --backbone=resnet_tiny \
      --image_size=224 --batch_size=16 --steps=3

Runs `warmup` steps, traces `steps` more with `jax.profiler.trace` (the trace stays in
`trace_dir` for TensorBoard or Perfetto), and matches the trace's operation events to the
instructions of the compiled step (their names are XLA's, e.g. `ynn_fusion.12`). Each
instruction is put in a group by where it comes from, read from XLA's metadata: the Flax
module path (`backbone/stage2`, `navigator`, ...) or JAX function, the direction
(forward, or backward: JAX's transpose of the forward) and what it computes (convolution,
matrix product, or else the kind XLA names the instruction by, e.g. `copy_bitcast` for a
fused layout change, `reduce-window`, `ynn` for a YNNPACK subgraph). One record per (model, group): milliseconds per step and the share of the
traced operation time; the largest groups first.

How to read it: operations that run at the same time overlap, so the traced time can
exceed the step's; XLA:CPU starts Eigen's convolutions asynchronously, so their time is
counted in the next operation that waits for them (on a CPU read a 'transpose_copy' or
other loop after a convolution together with it). The matching needs the trace's events
to carry XLA's instruction names, as XLA:CPU's thunks do; events named otherwise (GPU
kernels, untested here) are not counted, and the trace itself is the thing to read.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\((.*)$')
_COMPUTATION = re.compile(r'^%?([\w.\-]+) \(.*\) -> .* \{$')
_WRAPPERS = re.compile(r'^(?:jit|jvp|transpose|pjit|vmap|remat|checkpoint)\((.*)\)$')


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
  """{instruction name: {'op', 'body_ops', 'op_name'}} of a compiled module's text;
  'body_ops' lists the operations inside a fusion's computation. A fusion that XLA left
  without metadata takes the op_name of the last instruction inside it that has one (the
  root's, where it has one)."""
  bodies, body_names = collections.defaultdict(list), collections.defaultdict(list)
  current = None
  instructions = {}
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      continue
    if line.startswith('}'):
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, op, rest = m.groups()
    calls = re.search(r'calls=%([\w.\-]+)', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    op_name = op_name.group(1) if op_name else ''
    if current is not None:
      bodies[current].append(op)
      if op_name:
        body_names[current].append(op_name)
    instructions[name] = {'op': op, 'calls': calls.group(1) if calls else None,
                          'op_name': op_name}
  for info in instructions.values():
    calls = info.pop('calls')
    info['body_ops'] = bodies.get(calls, [])
    if not info['op_name'] and body_names.get(calls):
      info['op_name'] = body_names[calls][-1]
  return instructions


def _unwrap(part: str) -> str:
  while True:
    m = _WRAPPERS.match(part)
    if not m:
      return part
    part = m.group(1)


def group_of(name: str, info: dict, depth: int = 2) -> tuple[str, str, str]:
  """(where, direction, what) of the instruction `name` (module docstring)."""
  op_name = info['op_name']
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  parts = [_unwrap(p) for p in op_name.split('/')[1:-1]]  # Drop 'jit(...)' and the op.
  parts = [p for p in parts if p and not p.startswith('_')]
  if parts and parts[0][:1].isupper():  # The top Flax module (Classifier, FDL, ...).
    parts = parts[1:]
  where = '/'.join(parts[:depth]) or '(top level)'
  ops = [info['op']] + info['body_ops']
  if 'convolution' in ops:
    what = 'convolution'
  elif 'dot' in ops:
    what = 'matrix product'
  else:
    what = re.sub(r'^wrapped_|(_fusion)?(\.\d+)?$', '', name) or info['op']
  return where, direction, what


def trace_events(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the newest Perfetto trace under `trace_dir`."""
  paths = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'No *.trace.json.gz under {trace_dir}: was the trace written?')
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [e for e in events if e.get('ph') == 'X']


def attribute(events: list[dict], instructions: dict[str, dict], steps: int,
              depth: int = 2) -> list[dict]:
  """Milliseconds per step and share of each group (module docstring), largest first."""
  totals = collections.Counter()
  for e in events:
    name = e['name']
    if name in instructions:
      totals[group_of(name, instructions[name], depth)] += e.get('dur', 0.0)
  whole = sum(totals.values()) or 1.0
  return [{'where': w, 'direction': d, 'what': k, 'ms_per_step': us / 1e3 / steps,
           'share': us / whole} for (w, d, k), us in totals.most_common()]


def profile_train_step(name: str, *, backbone: str, image_size: int, batch_size: int,
                       dtype: str, steps: int, warmup: int, top: int, trace_dir: str | None,
                       num_classes: int = 200) -> list[dict]:
  """Traces one model's pmapped train step on one device; records as `attribute`'s."""
  import jax  # pylint: disable=g-import-not-at-top
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top
  from fgjax import train_step as ts  # pylint: disable=g-import-not-at-top
  parallel = ts.Parallel('pmap', jax.local_devices()[:1])
  step, record = benchmark_lib.prepare_train_step(
      name, backbone=backbone, image_size=image_size, batch_size=batch_size, dtype=dtype,
      num_classes=num_classes, parallel=parallel)
  for _ in range(warmup):
    step()
  trace_dir = trace_dir or tempfile.mkdtemp(prefix=f'fgjax_profile_{name}_')
  trace_dir = os.path.join(trace_dir, name)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      step()
  groups = attribute(trace_events(trace_dir), hlo_instructions(step.compiled.as_text()), steps)
  traced_ms = sum(g['ms_per_step'] for g in groups)
  context = {'mode': 'profile', 'model': name, 'backbone': backbone, 'image_size': image_size,
             'batch_per_device': batch_size, 'dtype': dtype, 'steps': steps,
             'device_kind': record['device_kind'], 'trace_dir': trace_dir,
             'traced_ms_per_step': traced_ms}
  return [{**context, **g} for g in groups[:top]]


def profile_mode(*, models, backbone, image_size, batch_size, dtype, steps, warmup, top,
                 trace_dir) -> list[dict]:
  """launch/benchmark.py's profile mode: `profile_train_step` for each model."""
  from fgjax import benchmark_lib  # pylint: disable=g-import-not-at-top  # It imports this.
  records = []
  for name in benchmark_lib.str_list(models):
    records += profile_train_step(name, backbone=backbone, image_size=image_size,
                                  batch_size=batch_size, dtype=dtype, steps=steps,
                                  warmup=warmup, top=top, trace_dir=trace_dir or None)
  return records


COLUMNS = (('model', 'model', 's'), ('where', 'where', 's'), ('direction', 'direction', 's'),
           ('what', 'what', 's'), ('ms/step', 'ms_per_step', '.1f'), ('share', 'share', '.3f'),
           ('traced ms/step', 'traced_ms_per_step', '.1f'))
