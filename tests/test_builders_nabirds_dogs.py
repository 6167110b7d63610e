"""NABirds and Stanford Dogs builders on tiny official layouts (no TensorFlow)."""

import importlib
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fixtures_nabirds_dogs as fxd
import fixtures_official as fx
from fgjax import config_lib
from fgjax.data import dogs
from fgjax.data import manual_files
from fgjax.data import nabirds
from fgjax.data import registry
from test_builders import _edit, assert_matches, dirs, read_split  # pylint: disable=unused-import

Error = manual_files.OfficialFilesError


def _sizes(expected):
  return {s: len(v) for s, v in expected.splits.items()}


# --- NABirds -----------------------------------------------------------------------------


@pytest.mark.parametrize('archive', [False, True], ids=['folder', 'archive'])
def test_nabirds_builds_from_folder_and_archive(dirs, archive):
  manual, data_dir = dirs
  expected = fxd.write_nabirds(manual, archive=archive)
  result = registry.prepare('nabirds', data_dir, manual)
  assert not result.already_prepared and result.skipped_files == []
  assert result.split_sizes() == {'train': 5, 'test': 4} == _sizes(expected)
  assert_matches(result.builder, expected)
  # The leaves that label images, by id; inner nodes and an unused leaf are left out.
  assert result.builder.info.features['label'].names == [
      'Bald Eagle (Adult, subadult)', 'Sharp-shinned Hawk (Adult )',
      'Red-tailed Hawk (Light morph adult)', 'Northern Cardinal (Adult Male)']


def test_nabirds_complete_set_must_have_the_official_split_sizes(dirs, monkeypatch):
  manual, data_dir = dirs
  fxd.write_nabirds(manual)  # 9 images: 5 train, 4 test, 4 classes.
  monkeypatch.setattr(nabirds.NABirds, 'OFFICIAL_TOTAL', 9)
  monkeypatch.setattr(nabirds.NABirds, '_official_num_classes', lambda self: 5)
  with pytest.raises(Error, match=r'complete set of 9 images .* 4 classes, not the official 5'):
    registry.prepare('nabirds', data_dir, manual)
  monkeypatch.setattr(nabirds.NABirds, '_official_num_classes', lambda self: 4)
  monkeypatch.setattr(nabirds.NABirds, 'OFFICIAL_SPLIT_SIZES', {'train': 4, 'test': 5})
  with pytest.raises(Error, match=r"images\.txt: the complete set of 9 images .* give "
                     r"\{'train': 5, 'test': 4\}"):
    registry.prepare('nabirds', data_dir, manual)
  monkeypatch.setattr(nabirds.NABirds, 'OFFICIAL_SPLIT_SIZES', {'train': 5, 'test': 4})
  assert registry.prepare('nabirds', data_dir, manual).split_sizes() == {'train': 5, 'test': 4}


def _nabirds_line(d, rel, k):
  """The line of image k (fixture order) in `rel`, and that line's number."""
  image_id = fxd.nabirds_uuid(k)
  lines = open(os.path.join(d, rel)).read().splitlines()
  n = next(n for n, line in enumerate(lines) if line.startswith(image_id + ' '))
  return lines[n], n + 1


def _replace_line(d, rel, k, new):
  line, number = _nabirds_line(d, rel, k)
  _edit(os.path.join(d, rel), line + '\n', new + '\n' if new else '')
  return number


@pytest.mark.parametrize('rel, new, message', [
    ('images.txt', '{id} 0817/a.jpg extra',
     r'images\.txt line {n}: expected 2 fields "image_id path"'),
    ('image_class_labels.txt', '{id} 598',
     r'image_class_labels\.txt line {n}: class_id 598 is not in .*classes\.txt'),
    ('image_class_labels.txt', '{id} 7.0',
     r"image_class_labels\.txt line {n}: class_id must be an integer, got '7\.0'"),
    ('train_test_split.txt', '{id} 2',
     r'train_test_split\.txt line {n}: is_training_image 2 is out of range \[0, 1\]'),
    ('bounding_boxes.txt', '{id} 1 2 -4 9',
     r'bounding_boxes\.txt line {n}: width and height must not be negative'),
    ('bounding_boxes.txt', '{id} 1 2 four 9',
     r"bounding_boxes\.txt line {n}: width must be a number, got 'four'"),
    ('bounding_boxes.txt', '',
     r'bounding_boxes\.txt has no line for image_id {id} \(.*images\.txt line {n}\)'),
])
def test_nabirds_annotation_errors_name_the_file_and_line(dirs, rel, new, message):
  manual, data_dir = dirs
  fxd.write_nabirds(manual)
  d = os.path.join(manual, 'nabirds')
  k = 3
  image_id = fxd.nabirds_uuid(k)
  number = _replace_line(d, rel, k, new.format(id=image_id))
  if not new:  # The missing line is blamed on the image's line in images.txt.
    number = _nabirds_line(d, 'images.txt', k)[1]
  with pytest.raises(Error, match=message.format(n=number, id=re.escape(image_id))):
    registry.prepare('nabirds', data_dir, manual)


def test_nabirds_other_errors_name_what_is_wrong(dirs):
  manual, data_dir = dirs
  expected = fxd.write_nabirds(manual)
  d = os.path.join(manual, 'nabirds')
  with open(os.path.join(d, 'classes.txt'), 'a') as f:
    f.write('0295 Duplicate Eagle\n')
  with pytest.raises(Error, match=r'classes\.txt line 10: class_id 295 already appeared on line 4'):
    registry.prepare('nabirds', data_dir, manual)
  _edit(os.path.join(d, 'classes.txt'), '0295 Duplicate Eagle\n', '')
  with open(os.path.join(d, 'train_test_split.txt'), 'a') as f:
    f.write('ffffffff-0000-0000-0000-000000000000 1\n')
  with pytest.raises(Error, match=r'train_test_split\.txt line 10: image_id ffffffff-.* is not '
                     r'in images\.txt'):
    registry.prepare('nabirds', data_dir, manual)
  _edit(os.path.join(d, 'train_test_split.txt'), 'ffffffff-0000-0000-0000-000000000000 1\n', '')
  test_file = sorted(expected.splits['test'])[0]
  os.remove(expected.paths[test_file])
  line = expected.splits['test'][test_file]['image_id']
  with pytest.raises(Error, match=rf'images\.txt line {line}: lists {re.escape(test_file)}, but '
                     '.* does not exist'):
    registry.prepare('nabirds', data_dir, manual)
  os.remove(os.path.join(d, 'image_class_labels.txt'))
  with pytest.raises(Error, match=r'Missing file .*nabirds.image_class_labels\.txt'):
    registry.prepare('nabirds', data_dir, manual)


# --- Stanford Dogs -----------------------------------------------------------------------


@pytest.mark.parametrize('archive, lists_folder', [
    (False, False), (False, True), (True, False), (('images',), True)],
                         ids=['folders', 'lists_folder', 'archives', 'mixed'])
def test_dogs_builds_from_folders_and_archives(dirs, archive, lists_folder):
  manual, data_dir = dirs
  expected = fxd.write_dogs(manual, archive=archive, lists_folder=lists_folder)
  result = registry.prepare('dogs', data_dir, manual)
  assert not result.already_prepared and result.skipped_files == []
  assert result.split_sizes() == {'train': 6, 'test': 3} == _sizes(expected)
  assert_matches(result.builder, expected)
  assert result.builder.info.features['label'].names == ['Chihuahua', 'Shih-Tzu', 'beagle']


def test_dogs_several_dogs_keep_the_largest_box_not_the_union(dirs):
  manual, data_dir = dirs
  fxd.write_dogs(manual)
  records = read_split(registry.prepare('dogs', data_dir, manual).builder, 'train')
  by_id = {int(r['image_id']): r for r in records.values()}
  # Image 4 (id 5): boxes 10 x 10 then 12 x 15; image 7 (id 8): a tie, the first is kept.
  for image_id, kept, union in ((5, (15, 3, 27, 18), (1, 1, 27, 18)),
                                (8, (2, 2, 10, 12), (0, 0, 30, 13))):
    np.testing.assert_allclose(by_id[image_id]['bbox'], fxd.normalised(*kept), atol=1e-6)
    assert not np.allclose(by_id[image_id]['bbox'], fxd.normalised(*union), atol=1e-3)


def test_dogs_complete_set_must_have_the_official_split_sizes(dirs, monkeypatch):
  manual, data_dir = dirs
  fxd.write_dogs(manual, archive=True)  # 9 images: 6 train, 3 test, 3 classes.
  monkeypatch.setattr(dogs.StanfordDogs, 'OFFICIAL_TOTAL', 9)
  monkeypatch.setattr(dogs.StanfordDogs, '_official_num_classes', lambda self: 3)
  monkeypatch.setattr(dogs.StanfordDogs, 'OFFICIAL_SPLIT_SIZES', {'train': 5, 'test': 4})
  with pytest.raises(Error, match=r"lists\.tar:train_list\.mat: the complete set of 9 images "
                     r".* give \{'train': 6, 'test': 3\}"):
    registry.prepare('dogs', data_dir, manual)
  monkeypatch.setattr(dogs.StanfordDogs, 'OFFICIAL_SPLIT_SIZES', {'train': 6, 'test': 3})
  assert registry.prepare('dogs', data_dir, manual).split_sizes() == {'train': 6, 'test': 3}


def _train_list(labels=None, images=None, annotations=None):
  """train_list.mat of the fixture (6 images), with some columns replaced."""
  folders = [f'{w}-{b}' for w, b in fxd.DOG_BREEDS]
  train = [i for i in range(9) if i % 3 not in fxd.DOG_TEST]
  default = [f'{folders[i // 3]}/{fxd.DOG_BREEDS[i // 3][0]}_{1000 + 37 * i}.jpg' for i in train]
  images = images or default
  return fxd.list_mat(images, labels or [i // 3 + 1 for i in train], annotations)


_C0 = 'n02085620-Chihuahua/n02085620_1000'  # Image 0, a train image.


@pytest.mark.parametrize('mat, message', [
    (lambda: fx.save_mat(file_list=fxd.cell_column(['a/b.jpg'])),
     r"train_list\.mat: expected the variables file_list, annotation_list, labels; "
     r"annotation_list, labels missing \(found \['file_list'\]\)"),
    (lambda: fx.save_mat(file_list=fxd.cell_column(['a/b.jpg']), annotation_list=fxd.cell_column(
        ['a/b']), labels=np.ones((2, 1))),
     r"train_list\.mat: the variables differ in length: \{'file_list': 1, "
     r"'annotation_list': 1, 'labels': 2\}"),
    (lambda: _train_list(labels=[1, 1, 0, 2, 3, 3]),
     r'train_list\.mat: labels\[2\] is 0, expected an integer label >= 1'),
    (lambda: _train_list(labels=[1, 1.5, 2, 2, 3, 3]),
     r'train_list\.mat: labels\[1\] is 1\.5, expected an integer label >= 1'),
    (lambda: _train_list(labels=[1, 1, 2, 2, 3, 1]),
     r'train_list\.mat: file_list\[5\]: label 1, but .*file_list\.mat: file_list\[7\] gives '
     r'n02088364-beagle/n02088364_1259\.jpg label 3'),
    (lambda: _train_list(images=[_C0 + '.png'] + ['x/y.jpg'] * 5),
     r"train_list\.mat: file_list\[0\] is '.*_1000\.png', expected '<wnid>-<Breed>/<name>\.jpg'"),
    (lambda: _train_list(images=['n02085620-Chihuahua/n02085620_9.jpg'] + ['x/y.jpg'] * 5,
                         annotations=['n02085620-Chihuahua/n02085620_9'] + ['x/y'] * 5),
     r'train_list\.mat: file_list\[0\]: n02085620-Chihuahua/n02085620_9\.jpg is not in '
     r'file_list\.mat'),
    (lambda: _train_list(annotations=[_C0 + '.xml'] + ['x/y'] * 5),
     r"train_list\.mat: annotation_list\[0\] is '.*_1000\.xml', expected '.*_1000' "
     r'\(file_list\[0\] without \.jpg\)'),
])
def test_dogs_mat_errors_name_the_file_and_entry(dirs, mat, message):
  manual, data_dir = dirs
  fxd.write_dogs(manual)
  with open(os.path.join(manual, 'train_list.mat'), 'wb') as f:
    f.write(mat())
  with pytest.raises(Error, match=message):
    registry.prepare('dogs', data_dir, manual)


def test_dogs_class_names_errors_and_missing_lists(dirs):
  manual, data_dir = dirs
  fxd.write_dogs(manual)
  all_list = os.path.join(manual, 'file_list.mat')
  with open(all_list, 'wb') as f:  # Label 2 also on a Chihuahua image.
    f.write(fxd.list_mat(['n02085620-Chihuahua/n02085620_1000.jpg',
                          'n02085620-Chihuahua/n02085620_1037.jpg'], [1, 2]))
  with pytest.raises(Error, match=r'file_list\.mat: file_list\[1\]: an image of '
                     r'n02085620-Chihuahua/ with label 2, but .*file_list\[0\] gives '
                     r'n02085620-Chihuahua/ label 1'):
    registry.prepare('dogs', data_dir, manual)
  with open(all_list, 'wb') as f:
    f.write(fxd.list_mat(['a-x/1.jpg', 'b-y/2.jpg'], [1, 3]))
  with pytest.raises(Error, match=r'file_list\.mat: labels must run 1\.\.N; no image has '
                     r'label\(s\) \[2\]'):
    registry.prepare('dogs', data_dir, manual)
  with open(all_list, 'wb') as f:
    f.write(fxd.list_mat(['nowordnetid/1.jpg'], [1]))
  with pytest.raises(Error, match=r"file_list\[0\]: folder 'nowordnetid' is not "
                     r"'<wnid>-<Breed>'"):
    registry.prepare('dogs', data_dir, manual)
  os.remove(all_list)
  with pytest.raises(Error, match=r'Missing file .*manual.file_list\.mat'):
    registry.prepare('dogs', data_dir, manual)
  for name in ('train_list.mat', 'test_list.mat'):
    os.remove(os.path.join(manual, name))
  with pytest.raises(Error, match=r'found neither file_list\.mat, train_list\.mat, '
                     r'test_list\.mat nor lists\.tar'):
    registry.prepare('dogs', data_dir, manual)


_XML = 'Annotation/n02086240-Shih-Tzu/n02086240_1148'  # Image 4: two dogs, a train image.


@pytest.mark.parametrize('xml, message', [
    (b'<annotation><object><bndbox><xmin>1', r'not a readable XML annotation \(.*line 1'),
    (b'<annotation><size><width>32</width></size></annotation>',
     r'no <object> with a <bndbox> \(expected one per dog\)'),
    (b'<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>'
     b'</bndbox></object><object><name>Shih-Tzu</name></object></annotation>',
     r'<object> 2 has no <bndbox>'),
    (b'<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>nine</xmax>'
     b'<ymax>9</ymax></bndbox></object></annotation>',
     r"<object> 1 <bndbox><xmax> is 'nine', expected a number"),
    (b'<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>'
     b'</bndbox></object></annotation>',
     r"<object> 1 <bndbox><ymax> is '', expected a number"),
    (b'<annotation><object><bndbox><xmin>1</xmin><ymin>12</ymin><xmax>9</xmax>'
     b'<ymax>9</ymax></bndbox></object></annotation>',
     r'<object> 1 <bndbox> is upside down: xmin=1, ymin=12, xmax=9, ymax=9'),
])
def test_dogs_xml_errors_name_the_file_and_element(dirs, xml, message):
  manual, data_dir = dirs
  fxd.write_dogs(manual)
  path = os.path.join(manual, *_XML.split('/'))
  with open(path, 'wb') as f:
    f.write(xml)
  with pytest.raises(Error, match=re.escape(path) + ': ' + message):
    registry.prepare('dogs', data_dir, manual)


def test_dogs_missing_annotation_or_image_names_the_list_entry(dirs):
  manual, data_dir = dirs
  fxd.write_dogs(manual, archive=True)
  os.remove(os.path.join(manual, 'annotation.tar'))
  with pytest.raises(Error, match=r'neither the folder Annotation/ nor annotation\.tar'):
    registry.prepare('dogs', data_dir, manual)
  expected = fxd.write_dogs(manual)  # Extracted beside the archives: the folders win.
  os.remove(os.path.join(manual, *_XML.split('/')))
  with pytest.raises(Error, match=r'train_list\.mat: file_list\[3\]: its annotation '
                     r'.*n02086240_1148 does not exist'):
    registry.prepare('dogs', data_dir, manual)
  fxd.write_dogs(manual)
  os.remove(expected.paths['Images/n02088364-beagle/n02088364_1296.jpg'])
  with pytest.raises(Error, match=r'test_list\.mat: file_list\[2\]: lists '
                     r'Images/n02088364-beagle/n02088364_1296\.jpg, but .* does not exist'):
    registry.prepare('dogs', data_dir, manual)


def test_dogs_bad_image_in_the_archive_is_skipped_and_listed(dirs):
  manual, data_dir = dirs
  expected = fxd.write_dogs(manual, archive=True, bad={3: fx.corrupt()})
  bad = 'Images/n02086240-Shih-Tzu/n02086240_1111.jpg'
  assert expected.paths[bad].endswith('images.tar:' + bad)
  result = registry.prepare('dogs', data_dir, manual, on_bad_image='skip')
  assert result.skipped_files == [expected.paths[bad]]
  assert result.split_sizes() == {'train': 5, 'test': 3}
  del expected.splits['train'][bad]
  assert_matches(result.builder, expected)


# --- Configs -----------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['nabirds', 'dogs'])
@pytest.mark.parametrize('method', config_lib.METHODS)
def test_configs_validate_with_the_papers_recipe(name, method):
  c = importlib.import_module(f'configs.{name}').get_config(method)
  config_lib.validate(c)
  assert (c.data.name, c.model.name) == (name, method)
  assert (c.data.image_size, c.data.resize_size, c.train.batch_size) == (448, 600, 16)
  assert (c.train.base_lr, c.train.epochs, c.train.lr_decay_epochs) == (0.01, 100, 40)


def test_builder_names_leave_tfds_own_stanford_dogs_alone():
  assert (nabirds.NABirds.name, dogs.StanfordDogs.name) == ('nabirds', 'fgjax_stanford_dogs')
  # TFDS's own builder keeps its name (the same name would fail at import, or hijack it).
  assert tfds.builder_cls('stanford_dogs') is not dogs.StanfordDogs
