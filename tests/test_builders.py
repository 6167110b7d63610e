"""CUB, FGVC-Aircraft and Stanford Cars builders on tiny official layouts (no TensorFlow)."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import fixtures_official as fx
from fgjax.data import common
from fgjax.data import cub
from fgjax.data import manual_files
from fgjax.data import registry

tfds.disable_progress_bar()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Error = manual_files.OfficialFilesError


@pytest.fixture
def dirs(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  return str(manual), str(tmp_path / 'tfds')


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def read_split(builder, split) -> dict:
  """file_name -> record, with the image as its stored bytes."""
  source = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  records = (source[i] for i in range(len(source)))
  return {_text(r['file_name']): r for r in records}


def assert_matches(builder, expected, crop_bottom=0):
  names = expected.class_names
  assert builder.info.features['label'].names == names
  assert sorted(builder.info.splits) == sorted(expected.splits)
  for split, want in expected.splits.items():
    got = read_split(builder, split)
    assert sorted(got) == sorted(want), split
    for file_name, w in want.items():
      g = got[file_name]
      assert g['image'] == w['image'], file_name  # The original bytes, not re-encoded.
      assert int(g['label']) == w['label'], file_name
      assert _text(g['label_name']) == names[w['label']]
      np.testing.assert_allclose(g['bbox'], w['bbox'], atol=1e-6, err_msg=file_name)
      assert int(g['image_id']) == w['image_id']
      assert int(g['crop_bottom']) == crop_bottom


def _edit(path, old: str, new: str):
  with open(path) as f:
    text = f.read()
  assert old in text
  with open(path, 'w') as f:
    f.write(text.replace(old, new, 1))


# --- CUB-200-2011 ---------------------------------------------------------------------


@pytest.mark.parametrize('archive', [False, True], ids=['folder', 'archive'])
def test_cub_builds_from_folder_and_archive(dirs, archive):
  manual, data_dir = dirs
  expected = fx.write_cub(manual, archive=archive)
  result = registry.prepare('cub', data_dir, manual)
  assert not result.already_prepared and result.skipped_files == []
  assert result.split_sizes() == {'train': 5, 'test': 4}
  assert_matches(result.builder, expected)
  modes = {PIL.Image.open(io.BytesIO(r['image'])).mode
           for split in ('train', 'test') for r in read_split(result.builder, split).values()}
  assert {'L', 'CMYK'} <= modes  # Stored as they were: the pipeline converts.


def test_cub_corrupt_image_stops_the_build_naming_the_file(dirs):
  manual, data_dir = dirs
  expected = fx.write_cub(manual, bad={4: fx.corrupt()})
  path = [p for f, p in expected.paths.items() if '_0004_' in f][0]
  with pytest.raises(common.BadImageError, match=re.escape(path)):
    registry.prepare('cub', data_dir, manual)
  assert not registry.get_builder('cub', data_dir).is_prepared()


def test_cub_skip_policy_lists_every_skipped_file_and_keeps_the_list(dirs):
  manual, data_dir = dirs
  good = fx.write_cub(manual)
  bad = {4: fx.corrupt(), 5: fx.truncated(good.splits['train'][
      [f for f in good.splits['train'] if '_0005_' in f][0]]['image'])}
  expected = fx.write_cub(manual, bad=bad)
  bad_paths = sorted(p for f, p in expected.paths.items() if re.search('_000[45]_', f))
  result = registry.prepare('cub', data_dir, manual, on_bad_image='skip')
  assert sorted(result.skipped_files) == bad_paths
  assert result.split_sizes() == {'train': 4, 'test': 3}
  for split in expected.splits:
    expected.splits[split] = {f: v for f, v in expected.splits[split].items()
                              if not re.search('_000[45]_', f)}
  assert_matches(result.builder, expected)
  again = registry.prepare('cub', data_dir, manual, on_bad_image='skip')
  assert again.already_prepared  # Nothing done, and the list is still known.
  assert sorted(again.skipped_files) == bad_paths


@pytest.mark.parametrize('edit, message', [
    (lambda d: os.remove(f'{d}/bounding_boxes.txt'), r'Missing file .*bounding_boxes\.txt'),
    (lambda d: os.remove(f'{d}/images/002.Laysan_Albatross/Laysan_Albatross_0002_102.jpg'),
     r'images\.txt line 2: lists images/002.*_0002_102\.jpg, but .* does not exist'),
    (lambda d: open(f'{d}/train_test_split.txt', 'a').write('99 1\n'),
     r'train_test_split\.txt line 10: image_id 99 is not in images\.txt'),
    (lambda d: _edit(f'{d}/image_class_labels.txt', '2 2\n', '2 7\n'),
     r'image_class_labels\.txt line 2: class_id 7 is out of range \[1, 3\]'),
    (lambda d: _edit(f'{d}/image_class_labels.txt', '3 3\n', ''),
     r'image_class_labels\.txt has no line for image_id 3 \(.*images\.txt line 3\)'),
    (lambda d: _edit(f'{d}/bounding_boxes.txt', '1 1.0 2.0 10.0 16.0', '1 1.0 2.0 10.0'),
     r'bounding_boxes\.txt line 1: expected 5 fields "image_id x y width height"'),
    (lambda d: _edit(f'{d}/train_test_split.txt', '1 1\n', '1 2\n'),
     r'train_test_split\.txt line 1: is_training_image 2 is out of range \[0, 1\]'),
    (lambda d: _edit(f'{d}/classes.txt', '2 002', '5 002'),
     r'classes\.txt line 2: expected class_id 2'),
])
def test_cub_annotation_errors_name_the_file_and_line(dirs, edit, message):
  manual, data_dir = dirs
  fx.write_cub(manual)
  edit(os.path.join(manual, 'CUB_200_2011'))
  with pytest.raises(Error, match=message):
    registry.prepare('cub', data_dir, manual)


def test_cub_complete_set_must_have_the_official_split_sizes(dirs, monkeypatch):
  manual, data_dir = dirs
  fx.write_cub(manual)  # 9 images: 5 train, 4 test.
  monkeypatch.setattr(cub.Cub2011, 'OFFICIAL_TOTAL', 9)
  monkeypatch.setattr(cub.Cub2011, '_official_num_classes', lambda self: 3)
  monkeypatch.setattr(cub.Cub2011, 'OFFICIAL_SPLIT_SIZES', {'train': 4, 'test': 5})
  with pytest.raises(Error, match=r"complete set of 9 images .* give \{'train': 5, 'test': 4\}"):
    registry.prepare('cub', data_dir, manual)
  monkeypatch.setattr(cub.Cub2011, 'OFFICIAL_SPLIT_SIZES', {'train': 5, 'test': 4})
  assert registry.prepare('cub', data_dir, manual).split_sizes() == {'train': 5, 'test': 4}


def test_missing_layout_and_damaged_archive_are_clear_errors(dirs):
  manual, data_dir = dirs
  with pytest.raises(Error, match=r'(?s)manual dir .*manual does not exist or is empty.*CUB_200_2011'):
    registry.prepare('cub', data_dir, manual)
  with open(os.path.join(manual, 'README'), 'w') as f:
    f.write('nothing here')
  with pytest.raises(Error, match=r'neither the folder CUB_200_2011/ nor CUB_200_2011\.tgz'
                     r'.*it holds: README'):
    registry.prepare('cub', data_dir, manual)
  fx.write_cub(manual, archive=True)
  archive = os.path.join(manual, 'CUB_200_2011.tgz')
  with open(archive, 'rb') as f:
    data = f.read()
  with open(archive, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(Error, match=re.escape(archive) + '.*cannot read the archive'):
    registry.prepare('cub', data_dir, manual)


def test_interrupted_prepare_never_looks_complete_and_rerun_finishes(dirs, monkeypatch):
  manual, data_dir = dirs
  expected = fx.write_cub(manual)
  original_size = manual_files.ImageChecker.size
  calls = []

  def crash_midway(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
      raise RuntimeError('simulated crash')
    return original_size(self, *args, **kwargs)

  monkeypatch.setattr(manual_files.ImageChecker, 'size', crash_midway)
  with pytest.raises(RuntimeError, match='simulated crash'):
    registry.prepare('cub', data_dir, manual)
  with pytest.raises(registry.DataNotPreparedError,
                     match=re.escape('python launch/prepare_data.py --dataset=cub '
                                     f'--manual_dir=DIR --data_dir={data_dir}')):
    registry.require_prepared('cub', data_dir)
  # A killed process leaves its incomplete.* folder behind: still not prepared.
  builder = registry.get_builder('cub', data_dir)
  killed = os.path.join(os.fspath(builder.data_path.parent), 'incomplete.KILLED_1.0.0')
  os.makedirs(killed)
  with open(os.path.join(killed, 'cub2011-train.array_record-00000-of-00001'), 'wb') as f:
    f.write(b'partial')
  with pytest.raises(registry.DataNotPreparedError, match='interrupted prepare left'):
    registry.require_prepared('cub', data_dir)
  monkeypatch.setattr(manual_files.ImageChecker, 'size', original_size)
  os.makedirs(builder.data_path)  # A bare final folder is refused, not taken as done.
  with pytest.raises(FileExistsError, match='not a complete data set'):
    registry.prepare('cub', data_dir, manual)
  os.rmdir(builder.data_path)
  result = registry.prepare('cub', data_dir, manual)
  assert not result.already_prepared
  assert_matches(registry.require_prepared('cub', data_dir), expected)


def test_require_prepared_and_policy_errors():
  with pytest.raises(registry.DataNotPreparedError) as e:
    registry.require_prepared('aircraft', '/nonexistent/tfds', 'family')
  assert ('python launch/prepare_data.py --dataset=aircraft --manual_dir=DIR '
          '--data_dir=/nonexistent/tfds --builder_config=family') in str(e.value)
  assert 'fgvc-aircraft-2013b.tar.gz' in str(e.value)
  with pytest.raises(registry.DataNotPreparedError, match='--dataset=cars .* --on_bad_image=skip'):
    registry.require_prepared('cars', '/nonexistent/tfds', on_bad_image='skip')
  with pytest.raises(ValueError, match=r"on_bad_image must be one of \('error', 'skip'\)"):
    registry.get_builder('cub', '/nonexistent/tfds', on_bad_image='ignore')
  with pytest.raises(ValueError, match=r"no builder config 'family'; valid: none"):
    registry.get_builder('cub', '/nonexistent/tfds', builder_config='family')


def test_prepare_data_cli_builds_once_then_does_nothing(dirs):
  manual, data_dir = dirs
  expected = fx.write_cub(manual, bad={2: fx.corrupt()})
  bad_path = [p for f, p in expected.paths.items() if '_0002_' in f][0]
  command = [sys.executable, os.path.join(REPO, 'launch', 'prepare_data.py'), '--dataset=cub',
             f'--manual_dir={manual}', f'--data_dir={data_dir}', '--on_bad_image=skip']
  first = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
  assert 'Prepared cub' in first.stdout and 'train 5' in first.stdout
  assert f'1 bad image(s) were skipped:\n  {bad_path}' in first.stdout
  second = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
  assert 'already prepared' in second.stdout and 'nothing to do' in second.stdout
  assert bad_path in second.stdout


# --- FGVC-Aircraft --------------------------------------------------------------------


@pytest.mark.parametrize('archive', [False, True], ids=['folder', 'archive'])
def test_aircraft_builds_with_banner_crop(dirs, archive):
  manual, data_dir = dirs
  expected = fx.write_aircraft(manual, archive=archive)
  result = registry.prepare('aircraft', data_dir, manual)
  assert result.split_sizes() == {'train': 3, 'val': 3, 'trainval': 6, 'test': 2}
  assert_matches(result.builder, expected, crop_bottom=fx.BANNER)
  for record in read_split(result.builder, 'trainval').values():
    luma = np.asarray(PIL.Image.open(io.BytesIO(record['image'])).convert('L'))
    crop = int(record['crop_bottom'])
    assert luma.shape == (fx.HEIGHT + fx.BANNER, fx.WIDTH)  # Stored with the banner.
    assert luma[-crop:].min() > 230  # The white banner...
    assert luma[:-crop].max() < 200  # ...is all in the rows that are cut.


def test_aircraft_family_and_manufacturer_configs(dirs):
  manual, data_dir = dirs
  fx.write_aircraft(manual)
  for level in ('family', 'manufacturer'):
    expected = fx.write_aircraft(os.path.join(manual, level), level=level)
    result = registry.prepare('aircraft', data_dir, os.path.join(manual, level),
                              builder_config=level)
    assert_matches(result.builder, expected, crop_bottom=fx.BANNER)
  names = registry.require_prepared('aircraft', data_dir, 'manufacturer').info.features[
      'label'].names
  assert names == ['Boeing', 'Airbus', 'de Havilland Canada']


@pytest.mark.parametrize('edit, message', [
    (lambda d: os.remove(f'{d}/images/0056978.jpg'),
     r'images_variant_val\.txt line 1: lists data/images/0056978\.jpg, but .* does not exist'),
    (lambda d: _edit(f'{d}/images_variant_test.txt', '2234871 A300B4', '2234871 Concorde'),
     r"images_variant_test\.txt line 1: 'Concorde' is not a class of .*variants\.txt"),
    (lambda d: _edit(f'{d}/images_box.txt', '1025794 5 2 22 30\n', ''),
     r'images_variant_train\.txt line 3: image 1025794 has no line in .*images_box\.txt'),
    (lambda d: _edit(f'{d}/images_box.txt', '1025794 5 2 22 30', '1025794 22 2 5 30'),
     r'images_variant_train\.txt line 3: box x0=21.0.* is upside down'),
])
def test_aircraft_annotation_errors(dirs, edit, message):
  manual, data_dir = dirs
  fx.write_aircraft(manual)
  edit(os.path.join(manual, 'fgvc-aircraft-2013b', 'data'))
  with pytest.raises(Error, match=message):
    registry.prepare('aircraft', data_dir, manual)


# --- Stanford Cars --------------------------------------------------------------------


@pytest.mark.parametrize('layout', ['devkit', 'car_ims'])
@pytest.mark.parametrize('archive', [False, True], ids=['folder', 'archive'])
def test_cars_builds_from_both_layouts(dirs, layout, archive):
  manual, data_dir = dirs
  write = fx.write_cars_devkit if layout == 'devkit' else fx.write_cars_car_ims
  expected = write(manual, archive=archive)
  result = registry.prepare('cars', data_dir, manual)
  assert result.split_sizes() == {s: len(v) for s, v in expected.splits.items()}
  assert_matches(result.builder, expected)


def test_cars_skip_policy_in_an_archive(dirs):
  manual, data_dir = dirs
  expected = fx.write_cars_car_ims(manual, archive=True, bad={1: fx.corrupt()})
  result = registry.prepare('cars', data_dir, manual, on_bad_image='skip')
  assert result.skipped_files == [expected.paths['car_ims/000002.jpg']]
  assert result.skipped_files[0].endswith('car_ims.tgz:car_ims/000002.jpg')
  assert result.split_sizes() == {'train': 4, 'test': 2}


def _write_mat(path, **variables):
  with open(path, 'wb') as f:
    f.write(fx.save_mat(**variables))


def test_cars_mat_errors_name_the_file_and_field(dirs):
  manual, data_dir = dirs
  fx.write_cars_devkit(manual)
  annos = os.path.join(manual, 'devkit', 'cars_train_annos.mat')
  records = [dict(x1=1, y1=1, x2=9, y2=9, fname='00001.jpg')]
  records[0]['class'] = 1
  _write_mat(annos, annotations=fx.struct_array(records, ('x1', 'y1', 'x2', 'y2', 'class',
                                                          'fname')))
  with pytest.raises(Error, match=re.escape(annos) + r": struct array 'annotations' lacks "
                     r'field\(s\) bbox_x1, bbox_y1, bbox_x2, bbox_y2; expected fields bbox_x1, '
                     r'.*found x1, y1'):
    registry.prepare('cars', data_dir, manual)
  _write_mat(annos, boxes=np.zeros(3))
  with pytest.raises(Error, match=r"expected a variable 'annotations', found \['boxes'\]"):
    registry.prepare('cars', data_dir, manual)
  os.remove(annos)
  with pytest.raises(Error, match=r'Missing file .*devkit.cars_train_annos\.mat'):
    registry.prepare('cars', data_dir, manual)
  os.remove(os.path.join(manual, 'cars_test_annos_withlabels.mat'))
  with pytest.raises(Error, match=r'test labels cars_test_annos_withlabels\.mat are in neither'):
    registry.prepare('cars', data_dir, manual)


def test_cars_label_out_of_range_and_missing_image(dirs):
  manual, data_dir = dirs
  fx.write_cars_car_ims(manual)
  annos = os.path.join(manual, 'cars_annos.mat')
  os.remove(os.path.join(manual, 'car_ims', '000004.jpg'))
  with pytest.raises(Error, match=r'annotations\[3\]: lists car_ims/000004\.jpg, but .* does '
                     'not exist'):
    registry.prepare('cars', data_dir, manual)
  fields = ('relative_im_path', 'bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'test')
  record = dict(relative_im_path='car_ims/000001.jpg', bbox_x1=1, bbox_y1=1, bbox_x2=9,
                bbox_y2=9, test=0)
  record['class'] = 9
  _write_mat(annos, annotations=fx.struct_array([record], fields),
             class_names=fx.cell_strings(fx.CARS_CLASSES))
  with pytest.raises(Error, match=re.escape(annos) + r': annotations\[0\]\.class is 9, '
                     r'expected an integer in \[1, 3\]'):
    registry.prepare('cars', data_dir, manual)
