"""A run's metrics.jsonl as tables, and its training curves as a PNG.

Training (fgjax.train) appends one JSON row per log step ('split': 'train': the means
of loss, accuracy, grad_norm, lr, ... since the last row, and images_per_s) and one per
evaluation ('split': 'eval': accuracy, every head's 'accuracy_<head>', loss, count). In
a notebook:

  from fgjax import metrics_log
  log = metrics_log.read_metrics('runs/cub_fdl')     # a workdir or its metrics.jsonl
  log.train['step'], log.train['loss']                # NumPy columns, in step order
  log.eval['accuracy_global'], log.eval.rows[-1]      # a column; a row as written
  metrics_log.write_curves('runs/cub_fdl')            # -> runs/cub_fdl/curves.png

A resumed run appends to the same file, so steps after its checkpoint come twice
(`read_metrics` keeps the later attempt's rows), and a crash can leave a line cut short
(skipped with a warning). No pandas: `pandas.DataFrame(log.train.rows)` if you have it.
"""

import dataclasses
import functools
import json
import math
import os
from typing import NamedTuple
import warnings

import numpy as np

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'
SPLITS = ('train', 'eval')  # In the order they are written at one step.


@dataclasses.dataclass(frozen=True)
class Table:
  """The rows of one split, in step order, one per step.

  Attributes:
    rows: each row as metrics.jsonl holds it (a dict with 'step', 'split', ...).
  """
  rows: tuple

  def __len__(self) -> int:
    return len(self.rows)

  @functools.cached_property
  def names(self) -> list[str]:
    """Every column name, in the order first seen ('step' first)."""
    names = {'step': None}
    for row in self.rows:
      names.update(dict.fromkeys(row))
    return list(names)

  def __contains__(self, name: str) -> bool:
    return name in self.names

  def __getitem__(self, name: str) -> np.ndarray:
    """Column `name`, [len(self)]: int64 where every row holds an integer, else float64
    with NaN in rows that lack it (object dtype, None for missing, for other values)."""
    if name not in self.names:
      raise KeyError(f'No column {name!r}; columns: {self.names}.')
    values = [row.get(name) for row in self.rows]
    present = [v for v in values if v is not None]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
      return np.array(values, np.int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
      return np.array([math.nan if v is None else v for v in values], np.float64)
    return np.array(values, object)



class MetricsLog(NamedTuple):
  """A run's metrics.jsonl: the train rows (one per log step) and the eval rows."""
  train: Table
  eval: Table


class CutLineWarning(UserWarning):
  """metrics.jsonl holds a line cut short (a crash while it was written); it was skipped."""


def metrics_path(path: str) -> str:
  """`path` itself if it is a file, else `path`/metrics.jsonl."""
  path = os.path.expanduser(path)
  return path if os.path.isfile(path) else os.path.join(path, METRICS_FILE)


def _order(row: dict) -> tuple:
  """Where a row falls in one training attempt: by step, the train row before the eval."""
  return row['step'], SPLITS.index(row['split'])


def read_metrics(path: str, strict: bool = False) -> MetricsLog:
  """The rows of a run's metrics.jsonl, one per (split, step), the latest attempt's.

  A resumed run (after a crash or preemption) restarts from its last checkpoint and
  writes again the rows of the steps after it: within one attempt rows come in strictly
  increasing (step, train before eval) order, so a row not after the last one kept
  starts a new attempt and replaces every kept row at or after it. Rows of the old
  attempt between the checkpoint and the new attempt's first row stay (the file does not
  say where the checkpoint was; with an unchanged train.log_every_steps there are none).

  Args:
    path: a workdir, or a metrics.jsonl file.
    strict: raise on a line that is not complete JSON, instead of skipping it with a
      CutLineWarning (a crash in the middle of a write leaves such a line).

  Returns:
    MetricsLog(train, eval) of `Table`s.

  Raises:
    FileNotFoundError: no metrics.jsonl at `path`.
    ValueError: a line that is JSON but not a metrics row (naming file and line), or with
      `strict`, a line that is not JSON.
  """
  path = metrics_path(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: training writes it at its first log step '
                            '(is this a fgjax workdir?).')
  kept, cut = [], []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        if strict:
          raise ValueError(f'{path}:{number}: not a complete JSON row ({e}): {line[:80]!r}') from e
        cut.append(number)
        continue
      _check_row(row, path, number)
      if kept and _order(row) <= _order(kept[-1]):  # A new attempt (resumed run).
        kept = [r for r in kept if _order(r) < _order(row)]
      kept.append(row)
  if cut:
    warnings.warn(f'{path}: skipped line(s) {cut}: not complete JSON (a write cut short by '
                  'a crash?).', CutLineWarning, stacklevel=2)
  return MetricsLog(*(Table(tuple(r for r in kept if r['split'] == s)) for s in SPLITS))


def _check_row(row, path: str, number: int) -> None:
  if not (isinstance(row, dict) and isinstance(row.get('step'), int)
          and row.get('split') in SPLITS):
    raise ValueError(f'{path}:{number}: not a metrics row (expected a JSON object with an '
                     f"integer 'step' and 'split' in {list(SPLITS)}): {str(row)[:80]}")


def plot_curves(log: MetricsLog, title: str = ''):
  """A matplotlib Figure (Agg, no pyplot state): loss, accuracy and learning rate by step.

  Loss: train (its mean over each log interval) and eval, and each train loss term
  ('loss_*') thinner. Accuracy: train, and at each evaluation the prediction and every
  head ('accuracy_<head>'). Learning rate: the lr at the last step of each log interval,
  on a log scale.
  """
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(15, 4.2), dpi=100, layout='constrained')
  loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
  train, evals = log.train, log.eval
  _plot(loss_ax, train, 'loss', 'train', lw=1.5)
  for name in train.names:
    if name.startswith('loss_'):
      _plot(loss_ax, train, name, f'train {name[5:]}', lw=0.8, alpha=0.7)
  _plot(loss_ax, evals, 'loss', 'eval', marker='o')
  _plot(acc_ax, train, 'accuracy', 'train', lw=1.5)
  for name in evals.names:
    if name == 'accuracy' or name.startswith('accuracy_'):
      _plot(acc_ax, evals, name, 'eval' + (f' {name[9:]}' if name != 'accuracy' else ''),
            marker='o')
  _plot(lr_ax, train, 'lr', 'lr', lw=1.5)
  if 'lr' in train and np.all(train['lr'][np.isfinite(train['lr'])] > 0):
    lr_ax.set_yscale('log')
  for ax, name in ((loss_ax, 'loss'), (acc_ax, 'accuracy'), (lr_ax, 'learning rate')):
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, 'no rows yet', ha='center', va='center', transform=ax.transAxes)
  if title:
    fig.suptitle(title)
  return fig


def _plot(ax, table: Table, name: str, label: str, **style) -> None:
  if len(table) and name in table:
    ax.plot(table['step'], table[name], label=label, **style)


def write_curves(path: str, out: str | None = None) -> str:
  """Draws `plot_curves` of a run into a PNG; returns its path.

  Args:
    path: the run's workdir, or its metrics.jsonl.
    out: the PNG (default: curves.png beside metrics.jsonl). Written whole (to a
      temporary file, then renamed), so a viewer never sees half of it.
  """
  path = metrics_path(path)
  log = read_metrics(path)
  workdir = os.path.dirname(os.path.abspath(path))
  out = os.path.expanduser(out) if out else os.path.join(workdir, CURVES_FILE)
  fig = plot_curves(log, title=os.path.basename(workdir))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out + '.tmp', format='png')
  os.replace(out + '.tmp', out)
  return out
