"""Compare methods on one data set: same start, same budget, every seed.

`run_comparison` trains each (method, seed) pair in its own workdir
(`<workdir>/<method>_s<seed>`) with `train.train_and_evaluate`, evaluates its final
checkpoint (accuracy of the prediction and of every head; for region models where their
boxes go, fgjax.localization), and writes `<run>/result.json` once the pair is done. A
rerun skips pairs that have a result.json and resumes the others from their checkpoints;
a run whose stored config.json differs from the requested one in a key that decides it
(every key but the other methods' sections) stops the comparison with the keys named.
The summary goes to `<workdir>/comparison.json`, a text table (`format_table`) and a bar
chart (`comparison.png`, `draw_chart`).

Figures are the FINAL checkpoint's (never the best on the test split); train time is
the sum of the logged training intervals (compilation and evaluation excluded).
"""

import ast
import importlib.util
import json
import os
import time

import numpy as np
import PIL.Image
import PIL.ImageDraw

from fgjax import config_lib

SUMMARY_KEYS = ('accuracy', 'top1', 'any_top', 'same_top')


def load_config_module(path: str):
  """The module of a config file (`configs/parts.py`), loaded by path like train.py."""
  spec = importlib.util.spec_from_file_location('fgjax_compare_config', path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path!r} not found.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config, overrides) -> None:
  """Sets 'train.epochs=2'-style overrides; the value is a Python literal or a string."""
  config.unlock()
  for item in overrides:
    if '=' not in item:
      raise ValueError(f'Override {item!r} is not KEY=VALUE (e.g. train.epochs=2).')
    key, text = item.split('=', 1)
    if key not in config_lib.valid_keys():
      raise ValueError(config_lib.unknown_keys_message([key]))
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  config.lock()


def method_config(config_path: str, method: str, seed: int, overrides=()):
  config = load_config_module(config_path).get_config(method)
  apply_overrides(config, [f'seed={seed}', *overrides])
  config_lib.validate(config)
  return config


def config_differences(config, run_dir: str) -> list[str]:
  """'key: stored X, requested Y' for each key of this run that differs from the config
  stored in `run_dir` (none when it holds no config.json yet): the differences a rerun of
  training refuses and those it allows (config_lib.rerun_differences), since a finished
  run's result.json is only reused for the very same config."""
  saved = config_lib.read_saved(run_dir)
  if saved is None:
    return []
  blocking, allowed = config_lib.rerun_differences(saved, config)
  return [f'{k}: stored {old!r}, requested {new!r}' for k, old, new in sorted(blocking + allowed)]


def _train_seconds(metrics_path: str, batch_size: int) -> tuple[float, float]:
  """(seconds of logged training, images/s) from a run's metrics.jsonl."""
  seconds, images, last = 0.0, 0, 0
  with open(metrics_path) as f:
    for line in f:
      row = json.loads(line)
      if row.get('split') == 'train' and row.get('images_per_s'):
        step_images = (row['step'] - last) * batch_size
        seconds += step_images / row['images_per_s']
        images += step_images
        last = row['step']
  return seconds, images / max(seconds, 1e-9)


def run_one(config, run_dir: str, log=print) -> dict:
  """Trains (or resumes) one run, evaluates its final checkpoint, writes result.json."""
  from fgjax import inference  # pylint: disable=g-import-not-at-top
  from fgjax import localization  # pylint: disable=g-import-not-at-top
  from fgjax import train  # pylint: disable=g-import-not-at-top
  result_path = os.path.join(run_dir, 'result.json')
  differences = config_differences(config, run_dir)
  if differences:
    raise ValueError(f'{run_dir} holds a run of another config ({"; ".join(differences)}); '
                     'compare into another --workdir, or delete that run to retrain it.')
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  start = time.time()
  # The final evaluation of the run (also when it had already finished and only resumes).
  metrics = train.train_and_evaluate(config, run_dir)
  result = {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and k != 'step'}
  if config.model.name in config_lib.REGION_METHODS:
    run = inference.load_run(run_dir, 'latest')
    try:
      result.update(localization.localization(run, split=config.data.eval_split))
    except localization.NoBoxesError:
      pass  # An ablation without regions: accuracy only.
  result['train_seconds'], result['images_per_s'] = _train_seconds(
      os.path.join(run_dir, 'metrics.jsonl'), config.train.batch_size)
  result['wall_seconds_last_call'] = time.time() - start
  result.update(method=config.model.name, seed=int(config.seed))
  tmp = result_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, result_path)
  log(f'{config.model.name} seed {config.seed}: accuracy {result["accuracy"]:.4f}')
  return result


def summarise(results: list[dict]) -> dict:
  """Per method: every per-seed figure, and mean / std / min / max of each number."""
  by_method = {}
  for r in results:
    by_method.setdefault(r['method'], []).append(r)
  out = {}
  for method, rows in by_method.items():
    rows = sorted(rows, key=lambda r: r['seed'])
    keys = sorted({k for r in rows for k, v in r.items()
                   if isinstance(v, (int, float)) and k != 'seed'})
    stats = {}
    for k in keys:
      values = np.array([r[k] for r in rows if k in r], np.float64)
      stats[k] = {'per_seed': values.tolist(), 'mean': float(values.mean()),
                  'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                  'min': float(values.min()), 'max': float(values.max())}
    out[method] = {'seeds': [r['seed'] for r in rows], **stats}
  return out


def _pct(stat) -> str:
  if stat is None:
    return '-'
  seeds = ' / '.join(f'{100 * v:.1f}' for v in stat['per_seed'])
  return f'{100 * stat["mean"]:.1f} ± {100 * stat["std"]:.1f} ({seeds})'


def format_table(summary: dict) -> str:
  """A Markdown table: accuracy, heads, localization and speed per method."""
  head_keys = sorted({k for s in summary.values() for k in s
                      if k.startswith('accuracy_')})
  cols = ['method', 'accuracy % mean ± std (per seed)'] + [
      f'{k[len("accuracy_"):]} %' for k in head_keys] + [
      'detail in top-1 box %', 'in top-k %', 'same top box %', 'train s', 'img/s']
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + ' --- |' * len(cols)]
  for method, s in summary.items():
    mean = lambda k: '-' if k not in s else f'{100 * s[k]["mean"]:.1f}'
    cells = [method, _pct(s.get('accuracy'))] + [mean(k) for k in head_keys] + [
        _pct(s.get('top1')), mean('any_top'), mean('same_top'),
        '-' if 'train_seconds' not in s else f'{s["train_seconds"]["mean"]:.0f}',
        '-' if 'images_per_s' not in s else f'{s["images_per_s"]["mean"]:.1f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


_BAR_COLOURS = {'accuracy': '#3060c0', 'top1': '#d04030', 'any_top': '#f0a020',
                'same_top': '#808080'}
_BAR_LABELS = {'accuracy': 'test accuracy', 'top1': 'detail in top-1 box',
               'any_top': 'detail in top-k boxes', 'same_top': 'most common top box'}


def draw_chart(summary: dict, path: str, title: str = '') -> None:
  """Grouped bars per method (mean over seeds, whiskers min..max) of SUMMARY_KEYS."""
  width, height, left, bottom, top = 140 * len(summary) + 120, 360, 50, 40, 60
  img = PIL.Image.new('RGB', (width, height), 'white')
  draw = PIL.ImageDraw.Draw(img)
  plot_h = height - bottom - top
  y_of = lambda v: height - bottom - v * plot_h
  for tick in range(0, 101, 20):
    y = y_of(tick / 100)
    draw.line([left, y, width - 10, y], fill='#e0e0e0')
    draw.text((8, y - 6), f'{tick}%', fill='black')
  bar = 24
  for i, (method, s) in enumerate(summary.items()):
    x0 = left + 20 + 140 * i
    for j, key in enumerate(SUMMARY_KEYS):
      if key not in s:
        continue
      x = x0 + j * (bar + 4)
      draw.rectangle([x, y_of(s[key]['mean']), x + bar, y_of(0)], fill=_BAR_COLOURS[key])
      cx = x + bar // 2
      draw.line([cx, y_of(s[key]['min']), cx, y_of(s[key]['max'])], fill='black', width=1)
    draw.text((x0, height - bottom + 8), method, fill='black')
  for j, key in enumerate(SUMMARY_KEYS):  # Legend.
    x = left + 10 + (width - left) // len(SUMMARY_KEYS) * j
    draw.rectangle([x, 28, x + 10, 38], fill=_BAR_COLOURS[key])
    draw.text((x + 14, 27), _BAR_LABELS[key], fill='black')
  draw.text((left, 6), title, fill='black')
  img.save(path)


def run_comparison(config_path: str, methods, seeds, workdir: str, overrides=(),
                   log=print) -> dict:
  """Trains and evaluates every (method, seed); writes comparison.json and .png.

  Returns {'summary': per-method statistics (`summarise`), 'results': the runs,
  'table': `format_table`}.
  """
  os.makedirs(workdir, exist_ok=True)
  results = []
  for seed in seeds:
    for method in methods:
      config = method_config(config_path, method, seed, overrides)
      results.append(run_one(config, os.path.join(workdir, f'{method}_s{seed}'), log))
  summary = summarise(results)
  out = {'config': config_path, 'methods': list(methods), 'seeds': list(seeds),
         'overrides': list(overrides), 'summary': summary, 'results': results}
  tmp = os.path.join(workdir, 'comparison.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'comparison.json'))
  draw_chart(summary, os.path.join(workdir, 'comparison.png'),
             f'{os.path.basename(config_path)}, seeds {",".join(map(str, seeds))}')
  out['table'] = format_table(summary)
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(out['table'] + '\n')
  return out
