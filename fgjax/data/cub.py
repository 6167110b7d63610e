"""CUB-200-2011 (Caltech-UCSD Birds): TFDS builder from the official files.

The manual dir holds `CUB_200_2011.tgz` or the extracted `CUB_200_2011/`:
`images.txt` ("image_id path", path below `images/`), `image_class_labels.txt`
("image_id class_id"), `train_test_split.txt` ("image_id 1|0", 1 = train),
`classes.txt` ("class_id name"), `bounding_boxes.txt` ("image_id x y w h") and
`images/NNN.Species/*.jpg`. Splits: train (5,994) and test (5,794).

Our readings where the files leave room:
  * class names are the second field of classes.txt verbatim, e.g.
    '001.Black_footed_Albatross'; class ids must run 1..N in file order.
  * a box "x y w h" is in pixels from the image's top-left edge and spans
    [x, x + w] x [y, y + h]; parts beyond the image are clipped.
  * `file_name` is the path relative to `CUB_200_2011/`, e.g.
    'images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg'.
"""

import tensorflow_datasets as tfds

from fgjax.data import manual_files

FOLDER = 'CUB_200_2011'
ARCHIVES = ('CUB_200_2011.tgz', 'CUB_200_2011.tar.gz', 'CUB_200_2011.tar')
_ANNOTATIONS = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt',
                'classes.txt', 'bounding_boxes.txt')


def read_annotations(tree: manual_files.FileTree):
  """Class names and the listed images per split, from the annotation files.

  Returns:
    (class_names, {'train': [Listed], 'test': [Listed]}).
  """
  classes = manual_files.read_rows(tree, 'classes.txt', ('class_id', 'class_name'))
  for i, row in enumerate(classes):
    if row.int('class_id') != i + 1:
      raise row.error(f'expected class_id {i + 1}: ids must run 1..N in order')
  names = [row['class_name'] for row in classes]

  images = manual_files.read_table(tree, 'images.txt', ('image_id', 'path'))
  tables = per_image_tables(tree, images)
  listed = {'train': [], 'test': []}
  for image_id, row in images.items():
    label_row = tables['image_class_labels.txt'][image_id]
    box, split = box_and_split(tables, image_id)
    rel = f'images/{row["path"]}'
    listed[split].append(manual_files.Listed(
        rel=rel, file_name=rel, image_id=row.int('image_id'),
        label=label_row.int('class_id', 1, len(names)) - 1,
        box=box, source=f'{row.path} line {row.line}'))
  return names, listed


# The files of one line per image beside images.txt (CUB's layout, NABirds' too).
PER_IMAGE_FILES = {
    'image_class_labels.txt': ('image_id', 'class_id'),
    'train_test_split.txt': ('image_id', 'is_training_image'),
    'bounding_boxes.txt': ('image_id', 'x', 'y', 'width', 'height'),
}


def per_image_tables(tree: manual_files.FileTree, images: dict) -> dict:
  """{file: {image_id: Row}} of PER_IMAGE_FILES: exactly one line per image of images.txt."""
  tables = {}
  for rel, columns in PER_IMAGE_FILES.items():
    table = manual_files.read_table(tree, rel, columns)
    for image_id, row in table.items():
      if image_id not in images:
        raise row.error(f'image_id {image_id} is not in images.txt')
    for image_id, row in images.items():
      if image_id not in table:
        raise manual_files.OfficialFilesError(
            f'{tree.where(rel)} has no line for image_id {image_id} '
            f'({row.path} line {row.line}).')
    tables[rel] = table
  return tables


def box_and_split(tables: dict, image_id: str):
  """((x0, y0, x1, y1) pixels, 'train' or 'test') of an image, from per_image_tables."""
  box_row = tables['bounding_boxes.txt'][image_id]
  x, y = box_row.float('x'), box_row.float('y')
  w, h = box_row.float('width'), box_row.float('height')
  if w < 0 or h < 0:
    raise box_row.error('width and height must not be negative')
  split_row = tables['train_test_split.txt'][image_id]
  split = 'train' if split_row.int('is_training_image', 0, 1) == 1 else 'test'
  return (x, y, x + w, y + h), split


class Cub2011(manual_files.OfficialBuilder):
  """CUB-200-2011: 200 bird species, 11,788 images with one box each."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original JPEG bytes.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download CUB_200_2011.tgz (about 1.1 GB) from
  https://www.vision.caltech.edu/datasets/cub_200_2011/ (or its data.caltech.edu
  record) and place it in the manual dir, as is or extracted (the folder
  CUB_200_2011/ holding images.txt, ..., images/).
  """
  HOMEPAGE = 'https://www.vision.caltech.edu/datasets/cub_200_2011/'
  CITATION = """\
  @techreport{WahCUB_200_2011,
    title = {The Caltech-UCSD Birds-200-2011 Dataset},
    author = {Wah, C. and Branson, S. and Welinder, P. and Perona, P. and Belongie, S.},
    institution = {California Institute of Technology},
    number = {CNS-TR-2011-001},
    year = {2011}}
  """
  OFFICIAL_TOTAL = 11_788
  OFFICIAL_SPLIT_SIZES = {'train': 5_994, 'test': 5_794}

  def _official_num_classes(self) -> int:
    return 200

  def _split_generators(self, dl_manager):
    tree = manual_files.find_tree(dl_manager.manual_dir, FOLDER, ARCHIVES,
                                  keep=_ANNOTATIONS, what='CUB-200-2011')
    names, listed = read_annotations(tree)
    return self._checked_splits(tree, names, tree.where('classes.txt'), listed,
                                tree.where('images.txt'))
