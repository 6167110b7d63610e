"""Prediction on many files: bad files named and skipped, the others predicted as the model
applied directly; regions in the original image's pixels, checked on drawn markers."""

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from fgjax import inference
from fgjax import input_images
from fgjax.data import demo
from fgjax.data import pipeline
from test_inference import REPO, _apply, _at_size, _eval_inputs, _original_xyxy, _softmax
from test_inference import trained_run  # pylint: disable=unused-import  (a fixture)

SIZE = (64, 72)  # (image_size, resize_size): the demo's, where boxes differ per image.


def _jpeg(array, quality=95) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def _good_and_bad_files(folder):
  """(paths, {bad path: words its reason must hold}): demo images of several sizes and
  modes, and a truncated JPEG, a text file named .jpg, an empty file and a missing path."""
  scenes = [img for img, _, _ in demo.generate_split('test', 4)]
  good = [(scenes[0], 'a.png', 'RGB'), (scenes[1], 'b.jpg', 'RGB'),
          (np.asarray(PIL.Image.fromarray(scenes[2]).resize((150, 90))), 'c.png', 'L'),
          (np.asarray(PIL.Image.fromarray(scenes[3]).resize((97, 201))), 'd.png', 'RGBA')]
  paths = []
  for array, name, mode in good:
    paths.append(os.path.join(folder, name))
    PIL.Image.fromarray(array).convert(mode).save(paths[-1], quality=95)
  truncated = _jpeg(scenes[2])
  bad = {os.path.join(folder, 'truncated.jpg'): ('truncated',),
         os.path.join(folder, 'notes.jpg'): ('not an image',),
         os.path.join(folder, 'empty.png'): ('empty',),
         os.path.join(folder, 'missing.jpg'): ('FileNotFoundError', 'No such file')}
  with open(os.path.join(folder, 'truncated.jpg'), 'wb') as f:
    f.write(truncated[:len(truncated) // 2])
  with open(os.path.join(folder, 'notes.jpg'), 'w') as f:
    f.write('shopping list: bread, milk\n')
  open(os.path.join(folder, 'empty.png'), 'wb').close()
  order = [paths[0], *list(bad)[:2], paths[1], paths[2], *list(bad)[2:], paths[3]]
  return order, bad


def test_bad_files_are_named_and_every_other_file_is_predicted(trained_run, tmp_path):
  workdir, result = trained_run
  run = _at_size(inference.load_run(workdir), *SIZE)
  paths, bad = _good_and_bad_files(str(tmp_path))
  rows = inference.predict_files(run, paths, top_k=3)
  assert [r['file'] for r in rows] == paths
  for row in rows:
    if row['file'] in bad:
      assert sorted(row) == ['error', 'file']
      for word in bad[row['file']]:
        assert word in row['error'], (row['file'], row['error'])
  good = [p for p in paths if p not in bad]
  good_rows = [r for r in rows if r['file'] not in bad]
  assert all('error' not in r for r in good_rows)
  # The reference: each good file's bytes through evaluation's transform, the model
  # applied directly, softmax in float64.
  encoded = [open(p, 'rb').read() for p in good]
  spec = pipeline.ImageSpec(*SIZE)
  out = _apply(run.model, result['state'], _eval_inputs(encoded, spec))
  for row, probs, boxes, path in zip(good_rows, _softmax(out['logits'].astype(np.float64)),
                                     out['boxes'], good):
    top = np.argsort(-probs, kind='stable')[:3]
    assert [t['class'] for t in row['top_k']] == top.tolist()
    assert [t['name'] for t in row['top_k']] == [demo.class_names()[c] for c in top]
    np.testing.assert_allclose([t['prob'] for t in row['top_k']], probs[top], rtol=1e-5)
    np.testing.assert_allclose(row['regions_input_yxyx'], boxes, atol=0.051)  # 0.1 px.
    with PIL.Image.open(path) as img:
      size = img.size[::-1]
    assert row['original_size_hw'] == list(size) and row['input_size'] == SIZE[0]
    # None of the good files is a JPEG large enough for draft decoding: span = size.
    np.testing.assert_allclose(row['regions_original_xyxy'],
                               _original_xyxy(boxes, spec, size, size), atol=0.051)
    assert len(row['regions_valid']) == len(boxes)
  # Rows come out the same when files are read a few at a time (a chunk of bad files only;
  # other batch shapes may round the last float bits differently).
  chunked = list(inference.iter_predictions(run, paths, top_k=3, batch_size=2))
  assert [sorted(r) for r in chunked] == [sorted(r) for r in rows]
  for again, row in zip(chunked, rows):
    if 'error' in row:
      assert again == row
    else:
      assert [t['class'] for t in again['top_k']] == [t['class'] for t in row['top_k']]
      np.testing.assert_allclose([t['prob'] for t in again['top_k']],
                                 [t['prob'] for t in row['top_k']], rtol=1e-5)
      assert again['regions_input_yxyx'] == row['regions_input_yxyx']


def _run_predict(workdir, images, output):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'predict.py'),
                         f'--workdir={workdir}', f'--images={images}', f'--output={output}',
                         '--top_k=2'],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'XLA_FLAGS': ''})


def test_predict_command_line_skips_bad_files_and_exits_1_when_none_is_read(trained_run,
                                                                            tmp_path):
  workdir, _ = trained_run
  paths, bad = _good_and_bad_files(str(tmp_path))
  out = tmp_path / 'pred.jsonl'
  proc = _run_predict(workdir, ','.join(paths), out)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['file'] for r in rows] == paths
  for row in rows:
    assert ('error' in row) == (row['file'] in bad)
    if row['file'] in bad:
      assert f'skipped {row["file"]}: {row["error"]}' in proc.stderr
    else:
      assert len(row['top_k']) == 2 and len(row['regions_original_xyxy']) > 0
  assert f'4 of {len(paths)} files predicted to {out}, 4 skipped.' in proc.stderr
  # Only bad files: nothing could be read, exit status 1, each file still named.
  proc = _run_predict(workdir, ','.join(bad), tmp_path / 'none.jsonl')
  assert proc.returncode == 1
  assert 'No file could be read.' in proc.stderr
  assert all(f'skipped {path}:' in proc.stderr for path in bad)


def test_expand_paths_keeps_missing_plain_paths_and_rejects_empty_globs(tmp_path):
  (tmp_path / 'b.png').write_bytes(b'')
  (tmp_path / 'a.png').write_bytes(b'')
  spec = f'{tmp_path / "gone.jpg"}, {tmp_path / "*.png"}'
  assert inference.expand_paths(spec) == [str(tmp_path / n) for n in ('gone.jpg', 'a.png',
                                                                      'b.png')]
  with pytest.raises(FileNotFoundError, match='nothing-here'):
    inference.expand_paths(str(tmp_path / 'nothing-here*.jpg'))


def _draft_scale(width: int, height: int, resize_size: int) -> int:
  """libjpeg's DCT scaling as PIL's draft picks it: the largest s of 8, 4, 2, 1 with s <=
  min(W, H) // resize_size, so the decoded image is still at least resize_size."""
  ratio = min(width // resize_size, height // resize_size)
  return next(s for s in (8, 4, 2, 1) if ratio >= s)


# (width, height, marker x0, y0, x1, y1 in original pixels, format): a non-square PNG (x
# and y scale differently), a JPEG that PIL decodes at 1/8 (draft) whose size is not a
# multiple of 8 (the decoded image reaches past it), and a taller-than-wide one.
MARKER_CASES = [(150, 90, 41, 27, 97, 61, 'PNG'),
                (1003, 701, 611, 233, 811, 377, 'JPEG'),
                (333, 517, 60, 300, 150, 420, 'JPEG')]


@pytest.mark.parametrize('case', MARKER_CASES, ids=['png_150x90', 'jpeg_draft_1003x701',
                                                   'jpeg_draft_333x517'])
def test_regions_map_onto_a_drawn_marker_in_original_pixels(tmp_path, case):
  width, height, mx0, my0, mx1, my1, fmt = case
  spec = pipeline.ImageSpec(*SIZE)
  picture = np.full((height, width, 3), 20, np.uint8)
  picture[my0:my1, mx0:mx1] = 235                      # Pixels [m0, m1): bright.
  path = str(tmp_path / f'marker.{fmt.lower()}')
  PIL.Image.fromarray(picture).save(path, format=fmt, quality=95)
  loaded = input_images.read_images([path], spec)
  # The span that evaluation resizes, by the test's own rule: the decoded size times s.
  scale = _draft_scale(width, height, spec.resize_size) if fmt == 'JPEG' else 1
  assert (fmt == 'PNG') == (scale == 1)
  span_h, span_w = math.ceil(height / scale) * scale, math.ceil(width / scale) * scale
  np.testing.assert_array_equal(loaded.span_hw[0], [span_h, span_w])
  np.testing.assert_array_equal(loaded.original_hw[0], [height, width])
  # Where the marker is in the model input: the bright pixels (half-way threshold), as a
  # continuous box [first, last + 1).
  bright = loaded.images[0].mean(-1) > (20 + 235) / 2
  rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
  found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)
  # The reverse mapping, written here: u = v * R / span - o.
  offset = (spec.resize_size - spec.image_size) // 2
  expected = np.array([my0 * spec.resize_size / span_h, mx0 * spec.resize_size / span_w,
                       my1 * spec.resize_size / span_h, mx1 * spec.resize_size / span_w]) - offset
  # Found to whole pixels, the expected edges are fractional: within 0.6 of a pixel
  # (measured: up to 0.46).
  np.testing.assert_allclose(found, expected, atol=0.6)
  # And back: the found box lands on the drawn marker, within 0.6 of an input pixel's
  # extent in the original.
  mapped = input_images.boxes_to_original(found, spec, loaded.span_hw[0], loaded.original_hw[0])
  pixel_w, pixel_h = span_w / spec.resize_size, span_h / spec.resize_size
  error = np.abs(mapped - [mx0, my0, mx1, my1])
  assert np.all(error <= 0.6 * np.array([pixel_w, pixel_h, pixel_w, pixel_h])), (
      mapped, error, pixel_w, pixel_h)


def test_boxes_reaching_into_the_padding_are_clipped_to_the_image():
  # A 1003 x 701 JPEG decoded at 1/8: span 1008 x 704, past the image by 5 and 3 pixels.
  span, size = (704.0, 1008.0), (701, 1003)
  no_crop = pipeline.ImageSpec(64, 64)
  boxes = np.array([[-5.0, -7.0, 70.0, 80.0],     # Over the whole input, into the padding.
                    [-20.0, -20.0, -4.0, -2.0],   # Wholly in the padding (top-left).
                    [16.0, 8.0, 48.0, 40.0]])     # Inside.
  want = np.array([[0.0, 0.0, 1003.0, 701.0],     # Clipped to the input, then the image.
                   [0.0, 0.0, 0.0, 0.0],
                   [8 * 1008 / 64, 16 * 704 / 64, 40 * 1008 / 64, 48 * 704 / 64]])
  np.testing.assert_allclose(input_images.boxes_to_original(boxes, no_crop, span, size), want)
  # Without the image size, clipped to the span; with a crop, the input's edge is the
  # crop's, inside the image: o = 4 pixels of 72 from each side.
  np.testing.assert_allclose(input_images.boxes_to_original(boxes[:1], no_crop, span),
                             [[0.0, 0.0, 1008.0, 704.0]])
  cropped = input_images.boxes_to_original(boxes[:1], pipeline.ImageSpec(64, 72), span, size)
  np.testing.assert_allclose(cropped, [[4 * 1008 / 72, 4 * 704 / 72, 68 * 1008 / 72,
                                        68 * 704 / 72]])
