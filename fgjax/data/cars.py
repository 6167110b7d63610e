"""Stanford Cars (196 classes): TFDS builder from the official files.

Two layouts are found in the wild; the manual dir holds one of them, each
folder either extracted or as its archive (`car_devkit.tgz`, `cars_train.tgz`,
`cars_test.tgz`, `car_ims.tgz`):

  (a) devkit: `devkit/cars_meta.mat` ('class_names'),
      `devkit/cars_train_annos.mat`, `cars_test_annos_withlabels.mat` (in the
      manual dir or in devkit/), `cars_train/`, `cars_test/`. Each annos file
      has a struct array 'annotations' with fields bbox_x1, bbox_y1, bbox_x2,
      bbox_y2, class (1-based), fname (a file in cars_train/ or cars_test/).
  (b) car_ims: `car_ims/` and `cars_annos.mat` ('annotations' with fields
      relative_im_path ('car_ims/000001.jpg'), bbox_x1..bbox_y2, class, test
      (1 = test); 'class_names').

Splits: train (8,144) and test (8,041). Some images are grayscale or CMYK
JPEGs; they are stored as they are and converted by the pipeline's decoder.

Our readings where the files leave room:
  * if both layouts are present, (b) is used.
  * box coordinates are MATLAB's 1-based inclusive pixel indices: the box
    spans [x1 - 1, x2] x [y1 - 1, y2] from the top-left edge, clipped.
  * `image_id` is the 1-based position in the annotations array (in (a) the
    train and test arrays count separately, as their file names do);
    `file_name` is 'cars_train/00001.jpg', 'cars_test/00001.jpg' or
    'car_ims/000001.jpg'.
"""

import io
import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from fgjax.data import manual_files

BOX_FIELDS = ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2')
DEVKIT_FIELDS = BOX_FIELDS + ('class', 'fname')
CAR_IMS_FIELDS = ('relative_im_path',) + BOX_FIELDS + ('class', 'test')
_DEVKIT_MATS = ('cars_meta.mat', 'cars_train_annos.mat', 'cars_test_annos_withlabels.mat',
                'cars_test_annos.mat')
_TEST_LABELS = 'cars_test_annos_withlabels.mat'


def load_mat(tree: manual_files.FileTree, rel: str) -> dict:
  """The variables of a MATLAB file, squeezed (a struct array becomes 1-D)."""
  try:
    return scipy.io.loadmat(io.BytesIO(tree.read(rel)), squeeze_me=True)
  except (ValueError, TypeError, NotImplementedError, OSError) as e:
    raise manual_files.OfficialFilesError(
        f'{tree.where(rel)}: cannot read it as a MATLAB file ({e}).') from e


def _variable(mat: dict, name: str, where: str):
  if name not in mat:
    found = sorted(k for k in mat if not k.startswith('__'))
    raise manual_files.OfficialFilesError(
        f'{where}: expected a variable {name!r}, found {found}.')
  return mat[name]


def struct_records(mat: dict, name: str, fields, where: str) -> list[dict]:
  """The records of struct array `name` as dicts of `fields` (a clear error otherwise)."""
  array = np.atleast_1d(_variable(mat, name, where))
  found = array.dtype.names or ()
  missing = [f for f in fields if f not in found]
  if missing:
    raise manual_files.OfficialFilesError(
        f'{where}: struct array {name!r} lacks field(s) {", ".join(missing)}; expected '
        f'fields {", ".join(fields)}, found {", ".join(found) or "no struct at all"}.')
  return [{f: record[f] for f in fields} for record in array]


def class_names(mat: dict, where: str) -> list[str]:
  names = np.atleast_1d(_variable(mat, 'class_names', where))
  return [_as_str(n, f'{where}: class_names[{i}]') for i, n in enumerate(names)]


def _as_str(value, where: str) -> str:
  array = np.asarray(value)
  if array.dtype.kind != 'U' or array.size != 1:
    raise manual_files.OfficialFilesError(f'{where}: expected a string, got {value!r}.')
  return str(array.reshape(()))


def _as_number(value, where: str) -> float:
  array = np.asarray(value)
  if array.dtype.kind not in 'uif' or array.size != 1:
    raise manual_files.OfficialFilesError(f'{where}: expected one number, got {value!r}.')
  return float(array.reshape(()))


def _listed(record: dict, index: int, rel: str, file_name: str, num_classes: int,
            where: str) -> manual_files.Listed:
  """One annotation record -> Listed; `where` names the .mat file."""
  at = f'{where}: annotations[{index}]'
  x1, y1, x2, y2 = (_as_number(record[f], f'{at}.{f}') for f in BOX_FIELDS)
  label = _as_number(record['class'], f'{at}.class')
  if label != int(label) or not 1 <= label <= num_classes:
    raise manual_files.OfficialFilesError(
        f'{at}.class is {label:g}, expected an integer in [1, {num_classes}].')
  return manual_files.Listed(rel=rel, file_name=file_name, image_id=index + 1,
                             label=int(label) - 1, box=(x1 - 1, y1 - 1, x2, y2), source=at)


def _has(manual_dir: str, *names: str) -> bool:
  return any(os.path.exists(os.path.join(manual_dir, n)) for n in names)


class StanfordCars(manual_files.OfficialBuilder):
  """Stanford Cars: 196 car models (make, model, year), 16,185 images with boxes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original JPEG bytes.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  The original host (ai.stanford.edu/~jkrause/cars/) is gone; copies circulate
  in two layouts. Place one of them in the manual dir, folders extracted or as
  their .tgz archives:
    (a) car_devkit.tgz (devkit/), cars_train.tgz (cars_train/),
        cars_test.tgz (cars_test/) and cars_test_annos_withlabels.mat;
    (b) car_ims.tgz (car_ims/) and cars_annos.mat.
  """
  HOMEPAGE = 'https://ai.stanford.edu/~jkrause/cars/car_dataset.html'
  CITATION = """\
  @inproceedings{KrauseStarkDengFei-Fei_3DRR2013,
    title = {3D Object Representations for Fine-Grained Categorization},
    booktitle = {4th International IEEE Workshop on 3D Representation and Recognition (3dRR-13)},
    year = {2013},
    author = {Jonathan Krause and Michael Stark and Jia Deng and Li Fei-Fei}}
  """
  OFFICIAL_TOTAL = 16_185
  OFFICIAL_SPLIT_SIZES = {'train': 8_144, 'test': 8_041}

  def _official_num_classes(self) -> int:
    return 196

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    if _has(manual_dir, 'cars_annos.mat') and _has(manual_dir, 'car_ims', 'car_ims.tgz'):
      trees, listed, where = self._read_car_ims(manual_dir)
    elif _has(manual_dir, 'devkit', 'car_devkit.tgz', 'cars_train', 'cars_train.tgz'):
      trees, listed, where = self._read_devkit(manual_dir)
    else:
      raise manual_files.OfficialFilesError(
          f'Stanford Cars: found neither layout in the manual dir {manual_dir} (it holds '
          f'{sorted(os.listdir(manual_dir))[:15]}). Expected:\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    for split, examples in listed.items():
      self._check_listed(trees[split], examples)
    self._check_split_sizes({s: len(v) for s, v in listed.items()},
                            sum(len(v) for v in listed.values()), where)
    return {split: self._generate_examples(trees[split], examples)
            for split, examples in listed.items()}

  def _read_car_ims(self, manual_dir):
    """Layout (b): one cars_annos.mat for both splits."""
    root = manual_files.FolderTree(manual_dir)
    tree = manual_files.find_tree(manual_dir, 'car_ims', ('car_ims.tgz',), what='Stanford Cars')
    where = root.where('cars_annos.mat')
    mat = load_mat(root, 'cars_annos.mat')
    self._set_class_names(class_names(mat, where), where)
    num_classes = self.info.features['label'].num_classes
    listed = {'train': [], 'test': []}
    for i, record in enumerate(struct_records(mat, 'annotations', CAR_IMS_FIELDS, where)):
      path = _as_str(record['relative_im_path'], f'{where}: annotations[{i}].relative_im_path')
      if not path.startswith('car_ims/'):
        raise manual_files.OfficialFilesError(
            f'{where}: annotations[{i}].relative_im_path is {path!r}, expected car_ims/...')
      test = _as_number(record['test'], f'{where}: annotations[{i}].test')
      if test not in (0, 1):
        raise manual_files.OfficialFilesError(
            f'{where}: annotations[{i}].test is {test:g}, expected 0 or 1.')
      listed['test' if test else 'train'].append(
          _listed(record, i, path[len('car_ims/'):], path, num_classes, where))
    return {'train': tree, 'test': tree}, listed, where

  def _read_devkit(self, manual_dir):
    """Layout (a): devkit/ with the train annotations, separate test labels."""
    root = manual_files.FolderTree(manual_dir)
    devkit = manual_files.find_tree(manual_dir, 'devkit', ('car_devkit.tgz',),
                                    keep=_DEVKIT_MATS, what='Stanford Cars (devkit layout)')
    meta = load_mat(devkit, 'cars_meta.mat')
    self._set_class_names(class_names(meta, devkit.where('cars_meta.mat')),
                          devkit.where('cars_meta.mat'))
    num_classes = self.info.features['label'].num_classes
    test_labels = next((t for t in (root, devkit) if t.exists(_TEST_LABELS)), None)
    if test_labels is None:
      raise manual_files.OfficialFilesError(
          f'Stanford Cars (devkit layout): the test labels {_TEST_LABELS} are in neither '
          f'{root.where(_TEST_LABELS)} nor {devkit.where(_TEST_LABELS)} (devkit/'
          'cars_test_annos.mat has no labels).')
    annos = {'train': (devkit, 'cars_train_annos.mat'), 'test': (test_labels, _TEST_LABELS)}
    trees, listed = {}, {}
    for split, (tree, rel) in annos.items():
      folder = f'cars_{split}'
      trees[split] = manual_files.find_tree(manual_dir, folder, (f'{folder}.tgz',),
                                            what='Stanford Cars (devkit layout)')
      where = tree.where(rel)
      listed[split] = []
      for i, record in enumerate(struct_records(load_mat(tree, rel), 'annotations',
                                                DEVKIT_FIELDS, where)):
        fname = _as_str(record['fname'], f'{where}: annotations[{i}].fname')
        listed[split].append(
            _listed(record, i, fname, f'{folder}/{fname}', num_classes, where))
    return trees, listed, devkit.where('cars_train_annos.mat')
