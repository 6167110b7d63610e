"""TensorBoard event files of a training run, written with tensorboardX (no TensorFlow).

In <workdir>/tensorboard/ (`tensorboard --logdir runs/` shows every run):

  train/<name>   every value of each metrics.jsonl train row (loss, accuracy, lr,
                 grad_norm, images_per_s, loss terms ...), at its log step;
  eval/<name>    every value of each eval row (accuracy, accuracy_<head>, loss, count);
  regions/<i>    at each evaluation, the first NUM_PICTURES images of the eval split with
                 the model's regions outlined, top-1 first (fgjax.drawing.draw_regions), and
                 its prediction; a model without regions (resnet) shows its prediction only.

Only process 0 writes, and only with config.train.tensorboard. Writes go through
tensorboardX's background thread, so a log step costs a queue put per value.

A resumed run starts a new event file. Events of the earlier files after the step the
run resumes from (written after its last checkpoint, and written again now) are cut off
first, so each step has one point; TensorBoard itself would show the later one anyway.
"""

import functools
import glob
import os
import struct

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from fgjax import drawing
from fgjax import train_step as ts
from fgjax.data import pipeline
from fgjax.data import registry

LOG_DIR = 'tensorboard'
NUM_PICTURES = 4  # Eval images drawn at each evaluation.


class TensorBoardLog:
  """Writes a run's scalars and region pictures; does nothing where `enabled` is False.

  Args:
    workdir: the run's folder; events go to <workdir>/tensorboard/.
    start_step: the step the run resumes from (0: a new run). Events after it in the
      folder's earlier files are cut off (`truncate_events_after`).
    enabled: False (config.train.tensorboard off, or not process 0): every method is a
      no-op and nothing is created.
    pictures: the images drawn at each evaluation (`EvalPictures`), or None for none.
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool = True, pictures=None):
    self._writer, self._pictures = None, pictures
    if not enabled:
      return
    log_dir = os.path.join(workdir, LOG_DIR)
    truncate_events_after(log_dir, start_step)
    # The file name holds the time in whole seconds; the suffix keeps a quick restart's
    # file from overwriting the earlier one.
    self._writer = SummaryWriter(log_dir, flush_secs=60,
                                 filename_suffix=f'.from{start_step}.pid{os.getpid()}')

  def write_row(self, row: dict) -> None:
    """A metrics.jsonl row ({'step', 'split', name: number, ...}) as '<split>/<name>'."""
    if self._writer is None:
      return
    for name, value in row.items():
      if name not in ('step', 'split') and isinstance(value, (int, float)):
        self._writer.add_scalar(f'{row["split"]}/{name}', value, row['step'])

  def write_pictures(self, step: int, state) -> None:
    """The eval pictures of host `state` (a TrainState of NumPy arrays) at `step`."""
    if self._writer is None or self._pictures is None:
      return
    for i, picture in enumerate(self._pictures.draw(state)):
      self._writer.add_image(f'regions/{i}', picture, step, dataformats='HWC')

  def close(self) -> None:
    """Writes what is queued and closes the event file."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class EvalPictures:
  """The first `num` images of the eval split, drawn with a model's prediction and regions.

  The images are read at the first `draw` (not at all when TensorBoard is off).
  """

  def __init__(self, model, source, spec, class_names, num: int = NUM_PICTURES):
    self._model, self._source, self._spec = model, source, spec
    self._names, self._num = list(class_names), num

  @functools.cached_property
  def examples(self) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, S, S, 3] as evaluation sees them, labels [N])."""
    return pipeline.first_eval_examples(self._source, self._spec, self._num)

  @functools.cached_property
  def _predict(self):
    return jax.jit(functools.partial(ts.predict_step, model=self._model))

  @property
  def scale(self) -> int:
    """Pixels per input pixel in a picture: small inputs are drawn twice as large."""
    return 2 if self._spec.image_size < 224 else 1

  def draw(self, state) -> list[np.ndarray]:
    """uint8 pictures [S * scale, S * scale, 3], one per image."""
    images, labels = self.examples
    # Not the optimiser state: it would be copied to the device for nothing.
    weights = ts.TrainState(step=state.step, params=state.params,
                            batch_stats=state.batch_stats, opt_state=())
    out = jax.device_get(self._predict(weights, {'image': images}))
    pictures = []
    for i, image in enumerate(images):
      top = int(np.argmax(out['probs'][i]))
      caption = (f'{self._names[top]} {out["probs"][i, top]:.2f} '
                 f'(true: {self._names[labels[i]]})')
      boxes = out['boxes'][i] if 'boxes' in out else None
      pictures.append(np.asarray(drawing.draw_regions(image, boxes, caption, self.scale)))
    return pictures


def _read_record(f):
  """(offset, Event) of the next TFRecord in `f`, None at the end, or (offset, None) for a
  record cut short or damaged (a crash while it was written)."""
  offset = f.tell()
  header = f.read(12)
  if not header:
    return None
  if len(header) < 12 or struct.unpack('<I', header[8:])[0] != masked_crc32c(header[:8]):
    return offset, None
  length = struct.unpack('<Q', header[:8])[0]
  data = f.read(length)
  footer = f.read(4)
  if len(data) < length or len(footer) < 4:
    return offset, None
  event = event_pb2.Event()
  try:
    event.ParseFromString(data)
  except Exception:  # pylint: disable=broad-except  # protobuf's DecodeError, by version.
    return offset, None
  return offset, event


def truncate_events_after(log_dir: str, step: int) -> None:
  """Cuts each event file in `log_dir` before its first event with a step above `step`
  (or its first damaged record); a file left with no summary is removed.

  Within one file events come in step order (one training attempt writes them), so
  what is cut is what an earlier attempt wrote after the checkpoint a resumed run
  starts from. The data CRC is not checked (image events are large): a record cut short
  is found by its length.
  """
  for path in sorted(glob.glob(os.path.join(log_dir, '*tfevents*'))):
    cut, summaries = None, 0
    with open(path, 'rb') as f:
      while (record := _read_record(f)) is not None:
        offset, event = record
        if event is None or (event.step > step and event.WhichOneof('what') != 'file_version'):
          cut = offset
          break
        summaries += event.HasField('summary')
    if not summaries:
      os.remove(path)
    elif cut is not None:
      os.truncate(path, cut)


def open_log(config, workdir: str, start_step: int, model, eval_source,
             spec: pipeline.ImageSpec) -> TensorBoardLog:
  """The TensorBoardLog of a training run: on with config.train.tensorboard, on process 0."""
  if not config.train.tensorboard or jax.process_index() != 0:
    return TensorBoardLog(workdir, start_step, enabled=False)
  builder = registry.get_builder(config.data.name, os.path.expanduser(config.data.data_dir),
                                 builder_config=config.data.builder_config or None)
  pictures = EvalPictures(model, eval_source, spec, builder.info.features['label'].names)
  return TensorBoardLog(workdir, start_step, pictures=pictures)
