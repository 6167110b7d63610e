"""Exact evaluation of a trained run: top-1 / top-5, per-class accuracy, confusion, TTA.

Every image of the split counts once (padded, masked batches, as in training's
evaluation), mapped over all devices with `jax.pmap`. What is counted:

  accuracy        argmax of the prediction ('logits') == label; every other head too
                  ('accuracy_<head>', train_step.head_correct), and every loss term
  accuracy_top5   the label among the k = min(5, C) highest logits; ties rank the lower
                  class index first, as argmax does (train_step.top_k_correct)
  confusion       [C, C] counts, rows the true class, columns the predicted one, classes in
                  label order; per-class accuracy = diagonal / row sum

Test-time augmentation (`tta`) averages the softmax over views of each image, and the
same pass reports the accuracy without it (view 0). The plain view is the papers' eval
input (fgjax.data.pipeline.eval_transform: resize to data.resize_size, centre crop
data.image_size). 'multicrop' adds the four corner crops of the same resized image (five
crops, as torchvision's FiveCrop); 'flip' adds each crop mirrored left-right (2 views,
or 10 with multicrop). The centre view is eval_transform's own image, so the TTA average
contains exactly the input of the plain number; the corners are cut from the whole
resized image (pipeline.decode_and_resize), which eval_transform's crop-only resize
reproduces up to +-1 grey level of PIL's fixed-point rounding.
"""

import csv
import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fgjax import inference
from fgjax import train_step as ts
from fgjax.data import pipeline

TTA_CHOICES = ('flip', 'multicrop')
_TEXT_MAX_CLASSES = 20  # Confusion PNG: counts written in the cells up to this many classes.
_NAMES_MAX_CLASSES = 40  # Class names as tick labels up to this many; indices beyond.


def parse_tta(text: str | None) -> tuple[str, ...]:
  """'flip', 'multicrop', 'flip,multicrop' (any order) -> canonical tuple; '' or None -> ()."""
  parts = [p.strip() for p in (text or '').split(',') if p.strip()]
  unknown = [p for p in parts if p not in TTA_CHOICES]
  if unknown or len(set(parts)) != len(parts):
    raise ValueError(f'--tta={text!r}: expected a comma-separated subset of '
                     f'{list(TTA_CHOICES)} without repeats, e.g. flip or flip,multicrop.')
  return tuple(t for t in TTA_CHOICES if t in parts)


def crop_offsets(spec: pipeline.ImageSpec, tta=()) -> list[tuple[int, int]]:
  """(top, left) in the resized image of each crop: the centre, then with 'multicrop'
  the top-left, top-right, bottom-left and bottom-right corners."""
  centre, far = (spec.resize_size - spec.image_size) // 2, spec.resize_size - spec.image_size
  if 'multicrop' not in tta:
    return [(centre, centre)]
  return [(centre, centre), (0, 0), (0, far), (far, 0), (far, far)]


def view_images(example: dict, spec: pipeline.ImageSpec, tta=()) -> np.ndarray:
  """An encoded example -> its views, uint8 [V, S, S, 3]: the crops (`crop_offsets`),
  then with 'flip' the same crops mirrored. View 0 is the plain eval input."""
  crops = [pipeline.eval_transform(spec)(example)['image']]
  if 'multicrop' in tta:
    full = pipeline.decode_and_resize(example['image'], example['crop_bottom'],
                                      spec.resize_size)
    size = spec.image_size
    crops += [full[t:t + size, l:l + size] for t, l in crop_offsets(spec, tta)[1:]]
  if 'flip' in tta:
    crops += [c[:, ::-1] for c in crops]
  return np.ascontiguousarray(np.stack(crops))


def num_views(tta=()) -> int:
  return (5 if 'multicrop' in tta else 1) * (2 if 'flip' in tta else 1)


def view_batches(source, spec: pipeline.ImageSpec, tta=(), *, global_batch_size: int,
                 num_devices: int, process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0):
  """pipeline.eval_batches with every image's views: image uint8 [D, b, V, S, S, 3],
  label [D, b], mask [D, b]. Every example once; contiguous shard per process; padding
  (mask 0) to the same number of batches on every process."""
  batch = global_batch_size // process_count
  if global_batch_size % process_count or batch % num_devices:
    raise ValueError(f'Eval batch size {global_batch_size} is not divisible by the '
                     f'{process_count} processes x {num_devices} local devices.')
  to_views = lambda e: {'image': view_images(e, spec, tta), 'label': e['label'],
                        'mask': np.float32(1.0)}
  return pipeline.eval_batches(
      source, spec, global_batch_size=global_batch_size, num_devices=num_devices,
      process_index=process_index, process_count=process_count, num_workers=num_workers,
      transform=to_views, image_shape=(num_views(tta), spec.image_size, spec.image_size, 3))


def view_outputs(state, images, *, model) -> dict:
  """uint8 [b, V, S, S, 3] -> the model's outputs with a leading view axis [V, b, ...].

  One view is a plain apply (the same computation as train_step.eval_step); several
  go through `lax.map`, one view at a time, so memory stays that of one view.
  """
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  apply = lambda x: model.apply(variables, ts.normalise(x), train=False)
  views = jnp.swapaxes(images, 0, 1)
  if views.shape[0] == 1:
    return jax.tree.map(lambda o: o[None], apply(views[0]))
  return lax.map(apply, views)


def mean_view_probs(view_logits):
  """[V, b, C] logits -> [b, C] mean over views of softmax (float32)."""
  return jnp.mean(jax.nn.softmax(view_logits.astype(jnp.float32), axis=-1), axis=0)


def confusion_counts(scores, labels, mask, num_classes: int):
  """[C, C] float32: entry (t, p) sums mask over examples of label t whose argmax of
  scores [b, C] is p."""
  pred = jnp.argmax(scores, axis=-1)
  return jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, pred].add(mask)


def views_eval_step(state, batch, *, model, num_classes: int):
  """Per-core step: train_step.eval_sums of view 0 plus its 'confusion'; with several
  views also 'tta_correct', 'tta_correct_top5', 'tta_confusion' of the mean softmax.
  Summed over AXIS (the global batch)."""
  labels, mask = batch['label'], batch['mask']
  outputs = view_outputs(state, batch['image'], model=model)
  if outputs['logits'].shape[-1] != num_classes:
    raise ValueError(f'The model predicts {outputs["logits"].shape[-1]} classes; the data set '
                     f'has {num_classes} class names.')
  plain = jax.tree.map(lambda o: o[0], outputs)
  sums = ts.eval_sums(plain, labels, mask, model=model)
  sums['confusion'] = confusion_counts(plain['logits'], labels, mask, num_classes)
  if outputs['logits'].shape[0] > 1:
    probs = mean_view_probs(outputs['logits'])
    sums['tta_correct'] = jnp.sum((jnp.argmax(probs, -1) == labels) * mask)
    sums['tta_correct_top5'] = jnp.sum(ts.top_k_correct(probs, labels, 5) * mask)
    sums['tta_confusion'] = confusion_counts(probs, labels, mask, num_classes)
  return lax.psum(sums, ts.AXIS)


def _metric_name(key: str) -> str:
  for prefix in ('correct', 'tta_correct'):
    if key.startswith(prefix):
      return prefix.replace('correct', 'accuracy') + key[len(prefix):]
  return key


def per_class(confusion) -> dict:
  """count, correct [C] (int) and accuracy [C] (NaN for a class without images)."""
  confusion = np.asarray(confusion)
  count, correct = confusion.sum(1), np.diag(confusion).copy()
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
  return {'count': count, 'correct': correct, 'accuracy': accuracy}


def evaluate_loaded(run: inference.Run, split: str | None = None,
                    batch_size: int | None = None, tta=()) -> dict:
  """Exact evaluation of a loaded run (`inference.load_run`) on `split`; run is not changed.

  Args:
    run: the model, its state and its config (read only).
    split: default the config's data.eval_split.
    batch_size: global eval batch size, default the config's eval.batch_size.
    tta: a subset of TTA_CHOICES (or its `parse_tta` string); () for none.

  Returns:
    'accuracy', 'accuracy_top5', 'loss', every head's 'accuracy_<head>' and loss term,
    'mean_class_accuracy' (over classes with images), 'count', 'num_classes',
    'confusion' (int64 [C, C]); with TTA also 'tta_accuracy', 'tta_accuracy_top5',
    'tta_mean_class_accuracy', 'tta_confusion' and 'views'; and 'checkpoint', 'split',
    'tta' (list), 'class_names'.
  """
  tta = parse_tta(tta) if isinstance(tta, str) else parse_tta(','.join(tta))
  data = run.config.data
  split = split or data.eval_split
  batch_size = batch_size or run.config.eval.batch_size
  parallel = ts.Parallel('pmap')
  if batch_size % len(parallel.devices):
    raise ValueError(f'Eval batch size {batch_size} is not divisible by the device count '
                     f'{len(parallel.devices)}.')
  source = pipeline.TfdsSource(data.name, os.path.expanduser(data.data_dir), split,
                               data.builder_config)
  num_classes = len(run.class_names)
  p_step = parallel.map(functools.partial(views_eval_step, model=run.model,
                                          num_classes=num_classes))
  state = parallel.replicate(run.state)
  totals = {}
  for batch in view_batches(source, run.spec, tta, global_batch_size=batch_size,
                            num_devices=parallel.num_local_devices,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), num_workers=data.num_workers):
    for k, v in parallel.to_host(p_step(state, parallel.shard_batch(batch))).items():
      v = np.rint(v).astype(np.int64) if k.endswith('confusion') else float(v)
      totals[k] = totals[k] + v if k in totals else v
  count = int(round(totals.pop('count')))
  if count != len(source):
    raise RuntimeError(f'Evaluation saw {count} examples, split {split!r} has {len(source)}.')
  result = {_metric_name(k): v / count for k, v in totals.items() if not k.endswith('confusion')}
  for prefix in ('', 'tta_') if tta else ('',):
    result[prefix + 'confusion'] = totals[prefix + 'confusion']
    result[prefix + 'mean_class_accuracy'] = float(np.nanmean(
        per_class(totals[prefix + 'confusion'])['accuracy']))
  if tta:
    result['views'] = num_views(tta)
  return {**result, 'count': count, 'num_classes': num_classes, 'checkpoint':
          run.checkpoint_path, 'split': split, 'tta': list(tta),
          'class_names': list(run.class_names)}


def evaluate_run(workdir: str, which: str = 'best', split: str | None = None,
                 batch_size: int | None = None, tta=(), write: bool = True) -> dict:
  """`evaluate_loaded` of a run's 'best' or 'latest' checkpoint; with `write`, its
  reports go to `report_dirs(workdir, result)` ('report_dirs' in the result)."""
  result = evaluate_loaded(inference.load_run(workdir, which), split, batch_size, tta)
  if write:
    result['report_dirs'] = write_reports(result, workdir)
  return result


def report_name(result: dict, tag: str = '') -> str:
  """'<folder>-<step>_<split>[_<tag>]' of the checkpoint (best-120_test, checkpoints-300_test)."""
  path = result['checkpoint'].rstrip('/')
  step, folder = os.path.basename(path), os.path.basename(os.path.dirname(path))
  name = f'{folder}-{step}' if step.isdigit() and folder else step
  name = f'{name}_{result["split"]}' + (f'_{tag}' if tag else '')
  return re.sub(r'[^A-Za-z0-9._-]+', '-', name)


def report_dirs(workdir: str, result: dict, tag: str = '') -> list[str]:
  """<workdir>/eval/<report_name>/ (plain), and with TTA also .../<report_name>_tta-<...>/."""
  root = os.path.join(os.path.expanduser(workdir), 'eval')
  dirs = [os.path.join(root, report_name(result, tag))]
  if result['tta']:
    dirs.append(dirs[0] + '_tta-' + '-'.join(result['tta']))
  return dirs


def write_reports(result: dict, workdir: str, tag: str = '') -> list[str]:
  """Writes summary.json, per_class.csv, confusion.csv and confusion.png for the plain
  predictions and, with TTA, for the TTA ones (`report_dirs`); returns the folders.
  Only process 0 writes."""
  dirs = report_dirs(workdir, result, tag)
  if jax.process_index() == 0:
    for prefix, out_dir in zip(('', 'tta_'), dirs):
      write_report(result, out_dir, prefix)
  return dirs


def write_report(result: dict, out_dir: str, prefix: str = '') -> None:
  """The four files of one set of predictions: prefix '' (plain) or 'tta_'."""
  os.makedirs(out_dir, exist_ok=True)
  confusion, names = result[prefix + 'confusion'], result['class_names']
  rows = per_class(confusion)
  with open(os.path.join(out_dir, 'per_class.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['class', 'name', 'count', 'correct', 'accuracy'])
    for c, name in enumerate(names):
      writer.writerow([c, name, rows['count'][c], rows['correct'][c],
                       repr(float(rows['accuracy'][c]))])
  with open(os.path.join(out_dir, 'confusion.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true \\ predicted'] + list(names))
    for name, row in zip(names, confusion):
      writer.writerow([name] + row.tolist())
  summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str, list))
             and k != 'class_names'}
  summary['predictions'] = 'tta' if prefix else 'plain'
  with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  label = f'TTA {"+".join(result["tta"])}' if prefix else 'no TTA'
  title = (f'{os.path.basename(result["checkpoint"].rstrip("/"))} on {result["split"]} '
           f'({label}): top-1 {result[prefix + "accuracy"]:.4f}, '
           f'{result["count"]} images')
  confusion_figure(confusion, names, title).savefig(os.path.join(out_dir, 'confusion.png'))


def confusion_figure(confusion, class_names, title: str = ''):
  """A matplotlib Figure (Agg canvas) of the confusion matrix, classes in label order.

  Colour: the fraction of each true class's images (row) given each prediction, on a
  square-root scale so that single confusions among hundreds of classes still show;
  zero cells are white, rows of classes without images grey. Counts are written in the
  cells up to _TEXT_MAX_CLASSES classes, names label the axes up to _NAMES_MAX_CLASSES
  (class indices beyond). The figure grows with the class count (about 5 px per cell at
  555 classes, at most 3000 px square).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  confusion = np.asarray(confusion)
  c = len(confusion)
  counts = confusion.sum(1, keepdims=True)
  fraction = np.ma.masked_equal(confusion / np.maximum(counts, 1), 0)
  side = float(np.clip(4 + 0.12 * c, 7, 30))
  fig = figure.Figure(figsize=(side + 1.5, side), dpi=100, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.subplots()
  # viridis from light to dark, without its near-white end: small fractions stay visible.
  cmap = colors.ListedColormap(matplotlib.colormaps['viridis_r'](np.linspace(0.1, 1, 256)))
  cmap = cmap.with_extremes(bad='white')
  image = ax.imshow(fraction, cmap=cmap, norm=colors.PowerNorm(0.5, vmin=0, vmax=1),
                    interpolation='nearest', aspect='equal')
  for t in np.flatnonzero(counts[:, 0] == 0):
    ax.axhspan(t - 0.5, t + 0.5, color='0.85', zorder=0)
  fig.colorbar(image, ax=ax, shrink=0.6, label="fraction of the true class's images")
  if c <= _TEXT_MAX_CLASSES:
    for (t, p), n in np.ndenumerate(confusion):
      if n:
        ax.text(p, t, str(n), ha='center', va='center', fontsize=8,
                color='white' if fraction[t, p] > 0.3 else 'black')
  if c <= _NAMES_MAX_CLASSES:
    ticks = np.arange(c)
    labels = [f'{i} {n}' for i, n in enumerate(class_names)]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(title, fontsize=10)
  return fig


def format_summary(result: dict, dirs=()) -> str:
  """The readable summary that launch/evaluate.py prints."""
  r = result
  lines = [f'{r["checkpoint"]} on split {r["split"]!r}: {r["count"]} images, '
           f'{r["num_classes"]} classes',
           f'  top-1 {r["accuracy"]:.4f}   top-5 {r["accuracy_top5"]:.4f}   '
           f'mean per-class {r["mean_class_accuracy"]:.4f}   loss {r["loss"]:.4f}']
  if r['tta']:
    gain = 100 * (r['tta_accuracy'] - r['accuracy'])
    lines.append(f'  TTA {"+".join(r["tta"])} ({r["views"]} views, mean softmax): '
                 f'top-1 {r["tta_accuracy"]:.4f} ({gain:+.2f} points)   '
                 f'top-5 {r["tta_accuracy_top5"]:.4f}   '
                 f'mean per-class {r["tta_mean_class_accuracy"]:.4f}')
  heads = [f'{k[len("accuracy_"):]} {v:.4f}' for k, v in sorted(r.items())
           if k.startswith('accuracy_') and k != 'accuracy_top5']
  if heads:  # Region models: each classifier head on its own (no TTA).
    lines.append('  heads (top-1): ' + ', '.join(heads))
  terms = [f'{k[len("loss_"):]} {v:.4f}' for k, v in sorted(r.items()) if k.startswith('loss_')]
  if terms:
    lines.append('  loss terms: ' + ', '.join(terms))
  rows = per_class(r['confusion'])
  order = [c for c in np.argsort(rows['accuracy'], kind='stable') if rows['count'][c]][:5]
  lines.append('  lowest per-class top-1: ' + '; '.join(
      f'{c} {r["class_names"][c]} {rows["accuracy"][c]:.2f} ({rows["count"][c]} images)'
      for c in order))
  if (rows['count'] == 0).any():
    lines.append(f'  {int((rows["count"] == 0).sum())} classes have no image in this split')
  for d in dirs:
    lines.append(f'  report: {d}/ (summary.json, per_class.csv, confusion.csv, confusion.png)')
  return '\n'.join(lines)
