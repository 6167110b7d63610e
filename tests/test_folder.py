"""Folder data sets (your own images in class folders): layouts, split, errors, training.

The split of one tree is recomputed here from its documented rule (README, class_folders):
of a class's n images, round(test_fraction * n) go to test, halves up, the fraction read as
written in decimal; those whose sha256('<split_seed>/<path below DIR>') is smallest.
"""

import decimal
import hashlib
import io
import os
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from fgjax.data import common
from fgjax.data import folder
from fgjax.data import pipeline
from fgjax.data import registry

tfds.disable_progress_bar()
Error = folder.FolderDataError

# kind -> (array shape, format, extension): grayscale JPEG and RGBA PNG included.
_KINDS = {'jpeg': ((12, 16, 3), 'JPEG', '.jpg'), 'png': ((10, 14, 3), 'PNG', '.png'),
          'gray': ((12, 12), 'JPEG', '.JPEG'), 'rgba': ((9, 11, 4), 'PNG', '.png')}


def _encoded(kind: str, seed: int) -> bytes:
  shape, fmt, _ = _KINDS[kind]
  pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  out = io.BytesIO()
  PIL.Image.fromarray(pixels).save(out, fmt)
  return out.getvalue()


def _images(prefix: str, n: int, seed: int) -> dict:
  """n images '<prefix>/i<k><ext>' of the four kinds in turn, from the seed's one."""
  kinds = [list(_KINDS)[(seed + k) % 4] for k in range(n)]
  return {f'{prefix}/i{k}{_KINDS[kind][2]}': _encoded(kind, seed * 100 + k)
          for k, kind in enumerate(kinds)}


def _write(root, files: dict) -> dict:
  """Writes {path below root: bytes} and returns it."""
  for rel, data in files.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), 'wb') as f:
      f.write(data)
  return files


def _one_tree(root, sizes: dict) -> dict:
  return _write(root, {p: data for seed, (name, n) in enumerate(sorted(sizes.items()))
                       for p, data in _images(name, n, seed).items()})


# One tree: sizes chosen so that test_fractions 0.25 and 0.5 meet halves (6 x 0.25 = 1.5).
SIZES = {'cat': 7, 'dog': 4, 'Emu': 3, 'ant': 10, 'bee': 6}
IGNORED_IN_TREE = {'notes.txt': b'x', 'ant/.thumbs/i0.jpg': b'x', 'cat/.hidden.jpg': b'x'}


def _train_test(root) -> dict:
  return _write(root, {**_images('train/b_owl', 2, 1), **_images('train/Zebra', 3, 2),
                       **_images('train/ant', 2, 3), **_images('train/ant/deeper', 1, 4),
                       **_images('test/b_owl', 1, 5), **_images('test/Zebra', 2, 6),
                       **_images('test/ant', 1, 7)})


def _class_of(path: str) -> str:
  parts = path.split('/')
  return parts[1] if parts[0] in ('train', 'test') and len(parts) > 2 else parts[0]


def _reference_test_set(files, fraction: float, seed: int) -> set:
  """The documented rule, written independently of fgjax.data.class_folders."""
  per_class = {}
  for path in files:
    per_class.setdefault(_class_of(path), []).append(path)
  test = set()
  for paths in per_class.values():
    k = int((decimal.Decimal(str(fraction)) * len(paths)).to_integral_value(
        decimal.ROUND_HALF_UP))
    order = sorted(paths, key=lambda p: hashlib.sha256(f'{seed}/{p}'.encode()).hexdigest())
    test.update(order[:k])
  return test


def _read(builder) -> dict:
  """split -> file_name -> record, with the image as its stored bytes."""
  sources = {s: builder.as_data_source(s, decoders={'image': tfds.decode.SkipDecoding()})
             for s in builder.info.splits}
  return {s: {r['file_name'].decode(): r for r in (src[i] for i in range(len(src)))}
          for s, src in sources.items()}


def _check_every_example(builder, files: dict, test: set):
  """Splits, labels, names, ids, boxes and bytes of every example against `files`."""
  names = sorted({_class_of(p) for p in files})  # Python's order: upper case first.
  assert builder.info.features['label'].names == names
  ids = {p: i + 1 for i, p in enumerate(sorted(files))}
  got = _read(builder)
  assert set(got['test']) == test and set(got['train']) == set(files) - test
  for records in got.values():
    for path, r in records.items():
      assert r['image'] == files[path], path  # The original bytes.
      assert int(r['label']) == names.index(_class_of(path)), path
      assert r['label_name'].decode() == _class_of(path)
      assert int(r['image_id']) == ids[path]
      np.testing.assert_array_equal(r['bbox'], [0, 0, 1, 1])  # No boxes: the whole image.
      assert int(r['crop_bottom']) == 0
  for split in got:  # Stratified: every class in both splits.
    assert {_class_of(p) for p in got[split]} == set(names), split
  modes = {PIL.Image.open(io.BytesIO(r['image'])).mode for s in got.values() for r in s.values()}
  assert modes == {'RGB', 'L', 'RGBA'}


@pytest.fixture
def dirs(tmp_path):
  return tmp_path / 'images', str(tmp_path / 'tfds')


def test_train_test_layout_keeps_the_given_split(dirs):
  source, data_dir = dirs
  files = _train_test(source)
  _write(source, {'README.md': b'x', '.DS_Store': b'x', 'train/.cache/i9.jpg': b'x',
                  'train/ant/labels.csv': b'x', 'test/ant/.i9.jpg': b'x'})
  result = folder.prepare('owls', str(source), data_dir)
  assert not result.already_prepared and result.skipped_files == []
  assert result.split_sizes() == {'train': 8, 'test': 4}
  _check_every_example(result.builder, files, {p for p in files if p.startswith('test/')})
  assert result.builder.info.features['label'].names == ['Zebra', 'ant', 'b_owl']
  assert result.builder.ignored_files == ['.DS_Store', 'README.md', 'test/ant/.i9.jpg',
                                          'train/.cache/', 'train/ant/labels.csv']
  assert result.builder.source == {'source_dir': str(source), 'layout': 'train_test',
                                   'test_fraction': None, 'split_seed': None}
  again = folder.prepare('owls', str(source), data_dir)
  assert again.already_prepared  # Nothing to do, and what it holds is still known.
  assert again.builder.ignored_files == result.builder.ignored_files


@pytest.mark.parametrize('fraction, seed', [(None, None), (0.25, 7), (0.5, 1)])
def test_one_tree_is_split_per_class_by_the_documented_rule(dirs, fraction, seed):
  source, data_dir = dirs
  files = _one_tree(source, SIZES)
  _write(source, IGNORED_IN_TREE)
  result = folder.prepare('pets', str(source), data_dir, fraction, seed)
  fraction, seed = 0.2 if fraction is None else fraction, 0 if seed is None else seed
  test = _reference_test_set(files, fraction, seed)
  _check_every_example(result.builder, files, test)
  assert result.builder.info.features['label'].names == ['Emu', 'ant', 'bee', 'cat', 'dog']
  assert result.split_sizes() == {'train': len(files) - len(test), 'test': len(test)}
  assert result.builder.ignored_files == ['ant/.thumbs/', 'cat/.hidden.jpg', 'notes.txt']
  assert result.builder.source == {'source_dir': str(source), 'layout': 'one_tree',
                                   'test_fraction': fraction, 'split_seed': seed}
  if fraction == 0.25:  # Halves go up: bee 6 x 0.25 -> 2, ant 10 x 0.25 -> 3.
    assert sum(p.startswith('bee/') for p in test) == 2
    assert sum(p.startswith('ant/') for p in test) == 3


def test_the_fraction_is_read_as_written_and_halves_go_up():
  # 0.29 * 50 is 14.499999999999998 in floating point, 14.5 as written: 15 go to test.
  for fraction, n in [(0.29, 50), (0.07, 50), (0.35, 90), (0.25, 2), (0.3, 5), (0.5, 3),
                      (0.15, 10), (0.9, 11)]:
    paths = [f'c/{i}.jpg' for i in range(n)]
    split = folder.split_one_tree({'c': paths}, fraction, 3)
    assert set(split['test']['c']) == _reference_test_set(paths, fraction, 3), (fraction, n)
    assert sorted(split['test']['c'] + split['train']['c']) == sorted(paths)


def test_split_is_deterministic_and_a_new_class_moves_no_other_image(dirs):
  source, data_dir = dirs
  files = _one_tree(source, SIZES)
  first = _read(folder.prepare('pets_a', str(source), data_dir).builder)
  same = _read(folder.prepare('pets_b', str(source), data_dir).builder)
  assert {s: sorted(r) for s, r in first.items()} == {s: sorted(r) for s, r in same.items()}
  cows = _write(source, _images('cow', 6, 9))
  grown = _read(folder.prepare('pets_c', str(source), data_dir).builder)
  assert set(first['test']) == set(grown['test']) - set(cows)
  labels = lambda read: {p: int(r['label']) for split in read.values() for p, r in split.items()}
  shift = {p: int(_class_of(p) > 'cow') for p in files}  # 'cow' sorts in before 'dog'.
  assert {p: labels(grown)[p] for p in files} == {p: l + shift[p]
                                                  for p, l in labels(first).items()}
  _write(source, _images('dog/more', 1, 10))  # One more dog: at most one other dog moves.
  more = _read(folder.prepare('pets_d', str(source), data_dir).builder)
  moved = {p for p in set(grown['test']) ^ set(more['test']) if not p.startswith('dog/more/')}
  assert len(moved) <= 1 and all(p.startswith('dog/') for p in moved)


# (what the folder holds, the message: it names the place and says what was expected).
LAYOUT_ERRORS = {
    'empty_class': (lambda d: (_one_tree(d, {'cat': 3}), os.makedirs(d / 'dog')),
                    r'Class folder {d}/dog holds no image \(it is empty\); expected files '
                    r'ending in \.bmp, .*\.jpg.*\(any case\)'),
    'class_of_text': (lambda d: _write(d, {**_images('cat', 3, 1), 'dog/list.txt': b'x'}),
                      r'Class folder {d}/dog holds no image \(it holds only dog/list\.txt\)'),
    'class_in_one_split': (lambda d: _write(d, {**_images('train/cat', 2, 1), **_images(
        'train/dog', 2, 2), **_images('test/cat', 1, 3)}), r'{d}: every class needs a folder '
        r'in both train/ and test/; .*\n  {d}/train/dog has no test/dog'),
    'case_twins': (lambda d: _write(d, {**_images('train/Dog', 2, 1), **_images('test/dog', 1, 2)}),
                   r'{d}/train/Dog has no test/Dog \(differs in case from test/dog\)'),
    'loose_image': (lambda d: _write(d, {**_images('cat', 3, 1), 'stray.jpg': b'x'}),
                    r'{d}/stray\.jpg: image file\(s\) outside a class folder; expected '
                    r'{d}/<class>/stray\.jpg'),
    'loose_in_split': (lambda d: _write(d, {**_images('train/cat', 2, 1), 'test/x.png': b'',
                                            **_images('test/cat', 1, 2)}),
                       r'{d}/test/x\.png: image file\(s\) outside a class folder; expected '
                       r'{d}/test/<class>/x\.png'),
    'train_without_test': (lambda d: _write(d, _images('train/cat', 2, 1)),
                           r'{d} has train/ but no test/: an already split layout needs both'),
    'mixed_layouts': (lambda d: _write(d, {**_images('train/cat', 2, 1),
                                           **_images('test/cat', 1, 2), **_images('dog', 2, 3)}),
                      r'{d} mixes the two layouts: .* class folders dog/'),
    'no_class': (lambda d: _write(d, {'notes.txt': b'x'}),
                 r'{d} holds no class folder; expected:\n  DIR/<class>/\*\.jpg'),
    'split_without_class': (lambda d: _write(d, {**_images('train/cat', 2, 1), 'test/a': b''}),
                            r'{d}/test holds no class folder; expected:'),
    'missing': (lambda d: None, r'The source folder {d} does not exist \(--manual_dir\)'),
    'archive': (lambda d: _write(d.parent, {d.name: b'PK'}), r'The source {d} is a file '
                r'\(--manual_dir\); expected a folder of class folders \(extract'),
    'spaced_class': (lambda d: _one_tree(d, {'cat': 3, 'dog ': 3}), r"'{d}/dog ': a class folder "
                     r'name must be one line, with no white space at its start or end'),
    'one_image_class': (lambda d: _one_tree(d, {'cat': 4, 'dog': 1}),
                        r'--test_fraction=0\.2 leaves 1 class\(es\) without a train or a test '
                        r'image .*\n  {d}/dog: 1 image\(s\), 0 to test, 1 to train\nTo fix: '
                        r'every class needs at least 2 images'),
}


@pytest.mark.parametrize('case', sorted(LAYOUT_ERRORS))
def test_layout_errors_name_the_place_and_what_was_expected(dirs, case):
  source, data_dir = dirs
  make, message = LAYOUT_ERRORS[case]
  make(source)
  with pytest.raises(Error, match=message.format(d=re.escape(str(source)))):
    folder.prepare('pets', str(source), data_dir)
  assert not registry.is_prepared(registry.get_builder('pets', data_dir))


@pytest.mark.parametrize('fraction, message', [
    (0.0, r'--test_fraction=0\.0 must be in \(0, 1\)'),
    (1.0, r'--test_fraction=1\.0 must be in \(0, 1\)'),
    (0.05, r'leaves 4 class\(es\) .*\n  {d}/Emu: 3 image\(s\), 0 to test, 3 to train\n.*'
           r'To fix: use a --test_fraction from 0\.167 to 0\.833\.'),
])
def test_a_fraction_that_leaves_a_split_without_a_class_is_refused(dirs, fraction, message):
  source, data_dir = dirs
  _one_tree(source, SIZES)
  with pytest.raises(Error, match=re.compile(message.format(d=re.escape(str(source))), re.S)):
    folder.prepare('pets', str(source), data_dir, fraction)


def test_split_options_with_a_train_test_layout_are_refused(dirs):
  source, data_dir = dirs
  _train_test(source)
  for options, given in [({'test_fraction': 0.3}, '--test_fraction=0.3'),
                         ({'split_seed': 4}, '--split_seed=4')]:
    with pytest.raises(Error, match=re.escape(
        f'{source} is already split into train/ and test/, so {given} has nothing to split')):
      folder.prepare('owls', str(source), data_dir, **options)
  folder.prepare('owls', str(source), data_dir)
  with pytest.raises(Error, match='so --split_seed=4 has nothing to split'):  # Prepared too.
    folder.prepare('owls', str(source), data_dir, split_seed=4)


def _bad_files(source) -> dict:
  """A corrupt JPEG, a truncated PNG and a link to no file, each in a class of 7 more, so
  that each class keeps a test image (0.2 x 8 -> 2) when its bad one is skipped."""
  _one_tree(source, {'cat': 7, 'dog': 7, 'ant': 7})
  png = _encoded('png', 99)
  _write(source, {'cat/i9.jpg': b'\xff\xd8\xff\xe0 not a JPEG',
                  'dog/i9.png': png[:len(png) // 2]})
  os.symlink(source / 'nowhere.jpg', source / 'ant' / 'i9.jpg')
  return {'cat/i9.jpg': 'cannot decode image', 'dog/i9.png': 'cannot decode image',
          'ant/i9.jpg': r'cannot read the file \(FileNotFoundError'}


@pytest.mark.parametrize('bad', ['cat/i9.jpg', 'dog/i9.png', 'ant/i9.jpg'])
def test_a_bad_image_stops_the_build_naming_the_file(dirs, bad):
  source, data_dir = dirs
  reasons = _bad_files(source)
  for other in set(reasons) - {bad}:
    os.remove(source / other)
  with pytest.raises(common.BadImageError, match=re.escape(str(source / bad)) + ': ' +
                     reasons[bad] + r'.* Rerun with on_bad_image=skip'):
    folder.prepare('pets', str(source), data_dir)
  with pytest.raises(registry.DataNotPreparedError):
    registry.require_prepared('pets', data_dir)
  os.remove(source / bad)  # Fixed: preparing again builds it.
  assert folder.prepare('pets', str(source), data_dir).split_sizes() == {'train': 18, 'test': 3}


def test_skip_policy_leaves_bad_images_out_and_lists_them(dirs):
  source, data_dir = dirs
  bad = _bad_files(source)
  result = folder.prepare('pets', str(source), data_dir, on_bad_image='skip')
  listed = sorted(str(source / p) for p in bad)
  assert sorted(result.skipped_files) == listed
  files = {p: (source / p).read_bytes() for c in ('cat', 'dog', 'ant') for p in
           (f'{c}/{f}' for f in os.listdir(source / c)) if p not in bad}
  test = _reference_test_set(list(files) + list(bad), 0.2, 0) - set(bad)
  got = _read(result.builder)
  assert set(got['test']) == test and set(got['train']) == set(files) - test
  assert sorted(folder.prepare('pets', str(source), data_dir,
                               on_bad_image='skip').skipped_files) == listed  # Kept.


def test_skipping_that_empties_a_class_split_is_an_error(dirs):
  source, data_dir = dirs
  files = _one_tree(source, {'cat': 4, 'dog': 3})
  test = _reference_test_set(files, 0.2, 0)
  lone = [p for p in test if p.startswith('dog/')][0]  # dog's only test image.
  _write(source, {lone: b'broken'})
  with pytest.raises(Error, match=re.escape(
      f'{source}: after skipping bad images, class(es) dog have no image left in the test '
      f'split; skipped: {source / lone}')):
    folder.prepare('pets', str(source), data_dir, on_bad_image='skip')


def test_a_name_prepared_from_another_source_is_refused(dirs, tmp_path):
  source, data_dir = dirs
  _one_tree(source, SIZES)
  other = tmp_path / 'other'
  _one_tree(other, {'x': 3, 'y': 3})
  path = folder.prepare('pets', str(source), data_dir).data_path
  assert folder.prepare('pets', str(source), data_dir, 0.2, 0).already_prepared  # The defaults.
  for asked_dir, options, asked in [(other, {}, ''),
                                    (source, {'test_fraction': 0.3}, ', --test_fraction=0.3'),
                                    (source, {'split_seed': 5}, ', --split_seed=5')]:
    with pytest.raises(Error, match=re.escape(
        f"Data set 'pets' is already prepared in {path} from {source} (one tree, test_fraction "
        f'0.2, split_seed 0); asked now for {asked_dir}{asked}. Choose another --name, or '
        'delete that folder')):
      folder.prepare('pets', str(asked_dir), data_dir, **options)
  # Deleted and prepared anew from other images: the labels the class-balanced sampler
  # reads (pipeline.TfdsSource.labels, cached after the first read) are the new ones.
  assert len(pipeline.TfdsSource('pets', data_dir, 'train').labels()) == 24  # 30 - 6 test.
  shutil.rmtree(path)
  assert folder.prepare('pets', str(other), data_dir).split_sizes() == {'train': 4, 'test': 2}
  source = pipeline.TfdsSource('pets', data_dir, 'train')
  np.testing.assert_array_equal(source.labels(), [source[i]['label'] for i in range(4)])
  np.testing.assert_array_equal(np.sort(source.labels()), [0, 0, 1, 1])


@pytest.mark.parametrize('name, message', [
    ('My_Birds', r"--name='My_Birds' is not valid: a folder data set's name is made of "
                 r'lowercase ASCII letters, digits and _, starting with a letter'),
    ('my-birds', "is not valid"), ('a' * 65, "is not valid: .* at most 64 characters"),
    ('cub', r"--name='cub' is a built-in data set \(the built-in ones are \['aircraft', "),
    ('folder', "--name='folder' is not a data set name"), ('', '--name is empty: give the name'),
])
def test_invalid_names_are_refused(dirs, name, message):
  source, data_dir = dirs
  _one_tree(source, {'cat': 3, 'dog': 3})
  with pytest.raises(registry.DataNameError, match=message):
    folder.prepare(name, str(source), data_dir)
  assert not os.path.exists(data_dir)


def test_not_prepared_gives_the_exact_prepare_command(tmp_path):
  with pytest.raises(registry.DataNotPreparedError) as raised:
    registry.require_prepared('my_birds', str(tmp_path), on_bad_image='skip')
  msg = str(raised.value)
  assert (f'python launch/prepare_data.py --dataset=folder --manual_dir=DIR --name=my_birds '
          f'--data_dir={tmp_path} --on_bad_image=skip') in msg
  assert 'DIR/train/<class>/*.jpg' in msg and 'DIR/<class>/*.jpg' in msg
  with pytest.raises(registry.DataNotPreparedError, match="did you mean 'cub'"):
    registry.require_prepared('cubb', str(tmp_path))
