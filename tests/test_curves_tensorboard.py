"""Training curves (curves.png), the metrics.jsonl reader and the TensorBoard event files.

The event files are read back here without tensorboardX's reader: the TFRecord framing
(uint64 length, masked CRC32C of it, data, masked CRC32C of the data) is parsed and its
CRCs checked with a CRC32C written below; only the Event message is decoded with
tensorboardX's protobuf class.
"""

import glob
import io
import json
import os
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageColor
import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

from fgjax import checkpoint
from fgjax import config_lib
from fgjax import drawing
from fgjax import metrics_log
from fgjax import tensorboard_log
from fgjax import train
from fgjax import train_step as ts
from fgjax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _crc32c_table():
  table = []
  for byte in range(256):  # Castagnoli polynomial 0x1EDC6F41, bit-reversed.
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  """TFRecord's masking: rotate right by 15 bits, add a constant (mod 2**32)."""
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value():
  # The standard check value of CRC-32C (RFC 3720, B.4) and an all-zero 32-byte block.
  assert _crc32c(b'123456789') == 0xE3069283
  assert _crc32c(bytes(32)) == 0x8A9136AA


def _read_event_file(path: str) -> list:
  """Every Event of one file; asserts the framing and both CRCs of each record."""
  events = []
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    assert len(data) - pos >= 16, f'{path}: {len(data) - pos} stray bytes at {pos}'
    length_bytes = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', length_bytes)
    (length_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    assert length_crc == _masked(_crc32c(length_bytes)), f'{path}: length CRC at {pos}'
    payload = data[pos + 12:pos + 12 + length]
    assert len(payload) == length, f'{path}: record at {pos} cut short'
    (data_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    assert data_crc == _masked(_crc32c(payload)), f'{path}: data CRC at {pos}'
    event = event_pb2.Event()
    event.ParseFromString(payload)
    events.append(event)
    pos += 16 + length
  return events


def _read_tensorboard(log_dir: str):
  """(scalars {(tag, step): [values]}, images {(tag, step): [Summary.Image]}, files)."""
  files = sorted(glob.glob(os.path.join(log_dir, '*tfevents*')))
  scalars, images = {}, {}
  for path in files:
    for event in _read_event_file(path):
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          scalars.setdefault((value.tag, event.step), []).append(value.simple_value)
        elif kind == 'image':
          images.setdefault((value.tag, event.step), []).append(value.image)
  return scalars, images, files


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _expected_scalars(rows) -> dict:
  """(tag, step) -> the float32 value TensorBoard holds for every number of every row."""
  return {(f'{r["split"]}/{k}', r['step']): np.float32(v) for r in rows
          for k, v in r.items() if k not in ('step', 'split')}


def _decode_png(encoded: bytes) -> np.ndarray:
  assert encoded.startswith(PNG_SIGNATURE)
  return np.asarray(PIL.Image.open(io.BytesIO(encoded)).convert('RGB'))


def _check_curves_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  with PIL.Image.open(path) as img:
    img.verify()
  with PIL.Image.open(path) as img:
    width, height = img.size
    pixels = np.asarray(img.convert('L'))
  assert 800 <= width <= 3000 and 250 <= height <= 1500 and width > height
  assert pixels.std() > 5  # Axes, lines and text, not a blank canvas.


def test_training_writes_curves_a_readable_log_and_tensorboard_events(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  # 96 train images / batch 16 = 6 steps per epoch; 2 epochs; a train row every 2 steps,
  # an evaluation after each epoch (steps 6 and 12).
  result = train.train_and_evaluate(tiny_config, workdir)
  rows = _jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert [(r['step'], r['split']) for r in rows] == [
      (2, 'train'), (4, 'train'), (6, 'train'), (6, 'eval'), (8, 'train'), (10, 'train'),
      (12, 'train'), (12, 'eval')]

  _check_curves_png(os.path.join(workdir, 'curves.png'))  # Written at the evaluations.
  assert not os.path.exists(os.path.join(workdir, 'curves.png.tmp'))

  log = metrics_log.read_metrics(workdir)
  for split, table in (('train', log.train), ('eval', log.eval)):
    expected = [r for r in rows if r['split'] == split]
    assert list(table.rows) == expected
    assert set(table.names) == set().union(*expected)
    for name in table.names:
      column = table[name]
      assert column.shape == (len(expected),)
      np.testing.assert_array_equal(column, [r[name] for r in expected])
  assert log.train['step'].dtype == np.int64 and log.eval['count'].dtype == np.int64
  assert {'loss', 'accuracy', 'lr', 'grad_norm', 'images_per_s'} <= set(log.train.names)

  scalars, images, files = _read_tensorboard(os.path.join(workdir, 'tensorboard'))
  assert len(files) == 1
  expected = _expected_scalars(rows)
  assert set(scalars) == set(expected)
  for key, values in scalars.items():
    assert values == [expected[key]], key
  assert scalars[('eval/accuracy', 12)] == [np.float32(result['accuracy'])]

  # The first 4 eval images at each evaluation, drawn twice as large (32 px inputs):
  # the resnet baseline has no regions, so under the caption band the picture is the
  # image itself.
  assert set(images) == {(f'regions/{i}', s) for i in range(4) for s in (6, 12)}
  source = pipeline.TfdsSource('demo', tiny_config.data.data_dir, 'test', 'tiny')
  transform = pipeline.eval_transform(pipeline.ImageSpec(32, 36))
  for (tag, _), (image,) in images.items():
    picture = _decode_png(image.encoded_image_string)
    assert picture.shape == (64, 64, 3) and (image.height, image.width) == (64, 64)
    original = transform(source[int(tag.split('/')[1])])['image']
    enlarged = np.repeat(np.repeat(original, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(picture[16:], enlarged[16:])


def test_a_crashed_and_resumed_run_has_one_row_and_one_point_per_step(
    tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  tiny_config.train.epochs = 1  # 6 steps; evaluation at step 6.
  save = checkpoint.Checkpointer.save

  def crash_at_5(self, step, *args, **kwargs):
    if step == 5:  # Logged, never saved: the resumed run starts again at checkpoint 3.
      raise RuntimeError('simulated crash')
    save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, 'save', crash_at_5)
  with pytest.raises(RuntimeError, match='simulated crash'):
    train.train_and_evaluate(tiny_config, workdir, stop_after_steps=5)
  monkeypatch.setattr(checkpoint.Checkpointer, 'save', save)
  path = os.path.join(workdir, 'metrics.jsonl')
  cut = '{"step": 6, "split": "tr'  # A crash in the middle of writing a row.
  with open(path, 'a') as f:
    f.write(cut)
  with pytest.warns(metrics_log.CutLineWarning):  # curves.png is drawn all the same.
    train.train_and_evaluate(tiny_config, workdir)

  with open(path) as f:
    lines = f.read().splitlines()
  assert cut in lines  # The resumed run's first row starts a new line, intact.
  rows = [json.loads(line) for line in lines if line != cut]
  assert [(r['step'], r['split']) for r in rows] == [
      (2, 'train'), (4, 'train'), (5, 'train'), (4, 'train'), (6, 'train'), (6, 'eval')]
  with pytest.warns(metrics_log.CutLineWarning, match=r'line\(s\) \[4\]'):
    log = metrics_log.read_metrics(workdir)
  # The second attempt's rows; step 5 of the first attempt is after its restart point.
  assert list(log.train.rows) == [rows[0], rows[3], rows[4]]
  assert list(log.eval.rows) == [rows[5]]
  np.testing.assert_array_equal(log.train['step'], [2, 4, 6])
  with pytest.raises(ValueError, match=r'metrics.jsonl:4: not a complete JSON row'):
    metrics_log.read_metrics(workdir, strict=True)

  # TensorBoard: the first attempt's file is cut after step 3; one point per step.
  scalars, images, files = _read_tensorboard(os.path.join(workdir, 'tensorboard'))
  assert len(files) == 2
  expected = _expected_scalars(log.train.rows + log.eval.rows)
  assert set(scalars) == set(expected)
  for key, values in scalars.items():
    assert values == [expected[key]], key
  assert sorted(images) == [(f'regions/{i}', 6) for i in range(4)]


def _write_rows(path, rows, tail=''):
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows) + tail)


def _train(step, **values):
  return {'step': step, 'split': 'train', 'loss': 1.0 / step, 'lr': 0.1, **values}


def _eval(step, **values):
  return {'step': step, 'split': 'eval', 'accuracy': step / 100, 'count': 37, **values}


def test_reader_keeps_the_latest_attempt_of_each_step(tmp_path):
  a = [_train(2), _train(4), _eval(4), _train(6), _train(8), _eval(8), _train(10)]
  # Resumed from a checkpoint at step 4 (rows 6.. again), then at step 8 (the eval of
  # step 8 again first, as when train.log_every_steps does not divide 8).
  b = [_train(6, x=1), _train(8, x=1), _eval(8, x=1), _train(10, x=1)]
  c = [_eval(8, x=2), _train(10, x=2), _train(12, x=2), _eval(12, x=2)]
  _write_rows(tmp_path / 'metrics.jsonl', a + b + c)
  log = metrics_log.read_metrics(str(tmp_path))
  assert list(log.train.rows) == a[:2] + b[:2] + c[1:3]
  assert list(log.eval.rows) == [a[2], c[0], c[3]]
  # Columns: NaN where a row lacks the key; integers stay integers.
  np.testing.assert_array_equal(log.train['x'], [np.nan, np.nan, 1, 1, 2, 2])
  assert log.train['step'].dtype == np.int64 and log.train['x'].dtype == np.float64
  assert log.eval['count'].tolist() == [37, 37, 37]
  with pytest.raises(KeyError, match=r"No column 'nope'; columns: \['step', 'split'"):
    log.train['nope']  # pylint: disable=pointless-statement


def test_reader_accepts_a_metrics_file_path_and_an_empty_file(tmp_path):
  path = tmp_path / 'elsewhere.jsonl'
  _write_rows(path, [_train(2)])
  assert metrics_log.read_metrics(str(path)).train.rows == (_train(2),)
  open(tmp_path / 'metrics.jsonl', 'w').close()
  log = metrics_log.read_metrics(str(tmp_path))
  assert len(log.train) == len(log.eval) == 0
  assert log.train['step'].shape == (0,)
  _check_curves_png(metrics_log.write_curves(str(tmp_path)))


def test_reader_names_file_and_line_of_a_row_that_is_not_a_metrics_row(tmp_path):
  with pytest.raises(FileNotFoundError, match='metrics.jsonl not found'):
    metrics_log.read_metrics(str(tmp_path))
  for bad in ({'step': 4, 'split': 'test'}, {'step': '4', 'split': 'train'}, [1, 2]):
    _write_rows(tmp_path / 'metrics.jsonl', [_train(2), bad])
    with pytest.raises(ValueError, match=r'metrics.jsonl:2: not a metrics row'):
      metrics_log.read_metrics(str(tmp_path))


def test_curves_command_draws_any_workdir(tmp_path):
  rows = [_train(s, accuracy=s / 20, loss_rank=0.5 / s) for s in range(2, 21, 2)]
  rows[5:5] = [_eval(10, loss=0.9, accuracy_global=0.2, accuracy_part_top1=0.1)]
  _write_rows(tmp_path / 'metrics.jsonl', rows)
  out = tmp_path / 'plots' / 'c.png'
  for extra, png in (([], tmp_path / 'curves.png'), ([f'--out={out}'], out)):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'launch', 'curves.py'), f'--workdir={tmp_path}',
         *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(png) in proc.stdout
    _check_curves_png(png)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'curves.py'),
       f'--workdir={tmp_path / "none"}'], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0 and 'metrics.jsonl not found' in proc.stderr


def _scalar_steps(log_dir):
  scalars, _, files = _read_tensorboard(log_dir)
  return sorted(step for (_, step) in scalars), files


def test_resume_cuts_earlier_event_files_after_the_restart_step(tmp_path):
  log_dir = str(tmp_path / 'tensorboard')
  for suffix, steps in (('.a', [1, 2, 3, 4, 5]), ('.b', [7, 8])):
    writer = SummaryWriter(log_dir, filename_suffix=suffix)
    for step in steps:
      writer.add_scalar('train/loss', 1.0 / step, step)
    writer.close()
  with open(glob.glob(os.path.join(log_dir, '*.b'))[0], 'ab') as f:
    f.write(b'\x20\x00\x00\x00\x00\x00\x00')  # Half a record header: a crash mid-write.
  tensorboard_log.truncate_events_after(log_dir, 7)
  assert _scalar_steps(log_dir)[0] == [1, 2, 3, 4, 5, 7]  # And the stray bytes are gone.
  tensorboard_log.truncate_events_after(log_dir, 3)
  steps, files = _scalar_steps(log_dir)
  assert steps == [1, 2, 3] and len(files) == 1  # The file left without a summary is gone.
  tensorboard_log.truncate_events_after(log_dir, 0)
  assert not glob.glob(os.path.join(log_dir, '*tfevents*'))


class _BoxModel:
  """Stands in for a region model: class 3 and two fixed boxes (y0, x0, y1, x1)."""
  boxes = np.array([[10, 4, 20, 20], [16, 8, 30, 28]], np.float32)

  def apply(self, variables, images, train):
    del variables, train
    n = images.shape[0]
    return {'logits': jnp.tile(jnp.eye(5)[3] * 4.0, (n, 1)),
            'boxes': jnp.tile(jnp.asarray(self.boxes), (n, 1, 1))}


def test_pictures_outline_the_regions_top1_first_with_the_prediction():
  source = [{'image': _png_bytes(np.full((36, 36, 3), 128, np.uint8)), 'label': 1,
             'crop_bottom': 0}]
  names = ['a', 'b', 'c', 'd', 'e']
  pictures = tensorboard_log.EvalPictures(_BoxModel(), source, pipeline.ImageSpec(32, 36),
                                          names)
  state = ts.TrainState(step=np.int32(0), params={}, batch_stats={}, opt_state=())
  (picture,) = pictures.draw(state)
  assert picture.shape == (64, 64, 3)
  red, green = (np.array(PIL.ImageColor.getrgb(c)) for c in drawing.REGION_COLOURS[:2])
  # Top edges at row 2 * y0, from column 2 * x0 to 2 * x1 - 1: inside each box.
  np.testing.assert_array_equal(picture[20, 8:40], np.tile(red, (32, 1)))
  np.testing.assert_array_equal(picture[32, 16:38], np.tile(green, (22, 1)))
  np.testing.assert_array_equal(picture[32, 40:56], np.tile(green, (16, 1)))
  assert (picture[20, 40] != red).any() and (picture[32, 56] != green).any()
  np.testing.assert_array_equal(picture[32, 38:40], [red, red])  # Top-1 on top where they cross.
  np.testing.assert_array_equal(picture[36, 30], [128, 128, 128])  # Inside both boxes.
  # The caption: the same drawing with class 'd' (3), its probability, and the truth 'b'.
  probs = np.exp(np.eye(5)[3] * 4.0) / np.exp(np.eye(5)[3] * 4.0).sum()
  caption = f'd {probs[3]:.2f} (true: b)'
  image = np.full((32, 32, 3), 128, np.uint8)
  np.testing.assert_array_equal(
      picture, np.asarray(drawing.draw_regions(image, _BoxModel.boxes, caption, 2)))


def _png_bytes(array):
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def test_tensorboard_is_off_by_config_and_on_other_processes(tiny_config, tmp_path,
                                                             monkeypatch):
  tiny_config.train.tensorboard = False
  log = tensorboard_log.open_log(tiny_config, str(tmp_path), 0, None, None, None)
  log.write_row(_train(2))
  log.write_pictures(2, None)
  log.close()
  tiny_config.train.tensorboard = True
  monkeypatch.setattr(tensorboard_log.jax, 'process_index', lambda: 1)
  log = tensorboard_log.open_log(tiny_config, str(tmp_path), 0, None, None, None)
  log.write_row(_train(2))
  log.close()
  assert not os.listdir(tmp_path)
  # Switching it on or off on a rerun is allowed: it changes only what is logged.
  saved = config_lib.flatten(tiny_config)
  tiny_config.train.tensorboard = False
  blocking, allowed = config_lib.rerun_differences(saved, tiny_config)
  assert not blocking and allowed == [('train.tensorboard', True, False)]
