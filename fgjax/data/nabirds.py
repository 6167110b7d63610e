"""NABirds (Cornell Lab of Ornithology): TFDS builder from the official files.

The manual dir holds `nabirds.tar.gz` or the extracted `nabirds/`:
`images.txt` ("image_id path", path below `images/`), `image_class_labels.txt`
("image_id class_id"), `train_test_split.txt` ("image_id 1|0", 1 = train),
`classes.txt` ("class_id name", 1,011 nodes of the taxonomy, leaves and inner
nodes alike), `bounding_boxes.txt` ("image_id x y w h") and
`images/<class id, 4 digits>/<uuid>.jpg`. Image ids are UUIDs
('0000139e-21dc-4d0c-bfe1-4cae3c85c829'). `hierarchy.txt`, `sizes.txt`,
`photographers.txt` and `parts/` are not needed and not read. Splits: train
(23,929) and test (24,633) over 555 classes.

Our readings where the files leave room:
  * the classes are the class ids that label at least one image (the 555
    leaves of the taxonomy, whose ids have gaps): sorted by id and numbered
    0..N-1. Their names are the text of classes.txt verbatim, e.g.
    'Bald Eagle (Adult, subadult)'; the inner nodes ('Birds', 'Hawks', ...)
    never label an image and are left out.
  * `image_id` is the 1-based line number in images.txt (the UUID does not
    fit the integer feature); `file_name` is the path relative to `nabirds/`,
    e.g. 'images/0817/0000139e21dc4d0cbfe14cae3c85c829.jpg', which carries it.
  * a box "x y w h" is in pixels from the image's top-left edge and spans
    [x, x + w] x [y, y + h] (as in CUB); parts beyond the image are clipped.
"""

import tensorflow_datasets as tfds

from fgjax.data import cub
from fgjax.data import manual_files

FOLDER = 'nabirds'
ARCHIVES = ('nabirds.tar.gz', 'nabirds.tgz', 'nabirds.tar')
_ANNOTATIONS = ('images.txt', 'classes.txt', *cub.PER_IMAGE_FILES)  # CUB's file set.


def _leaf_classes(tree: manual_files.FileTree, label_rows) -> tuple[list[str], dict[int, int]]:
  """(names, {class id: 0-based label}) of the class ids that label an image."""
  classes = manual_files.read_table(tree, 'classes.txt', ('class_id', 'class_name'),
                                    last_has_spaces=True)
  ids = {}
  for row in classes.values():
    class_id = row.int('class_id')
    if class_id in ids:  # '7' and '07' are different keys but the same id.
      raise row.error(f'class_id {class_id} already appeared on line {ids[class_id].line}')
    ids[class_id] = row
  used = set()
  for row in label_rows:
    class_id = row.int('class_id')
    if class_id not in ids:
      raise row.error(f'class_id {class_id} is not in {tree.where("classes.txt")}')
    used.add(class_id)
  order = sorted(used)
  return [ids[i]['class_name'] for i in order], {i: k for k, i in enumerate(order)}


def read_annotations(tree: manual_files.FileTree):
  """Class names and the listed images per split, from the annotation files.

  Returns:
    (class_names, {'train': [Listed], 'test': [Listed]}).
  """
  images = manual_files.read_table(tree, 'images.txt', ('image_id', 'path'))
  tables = cub.per_image_tables(tree, images)
  labels = tables['image_class_labels.txt']
  names, label_of = _leaf_classes(tree, labels.values())
  listed = {'train': [], 'test': []}
  for image_id, row in images.items():
    box, split = cub.box_and_split(tables, image_id)
    rel = f'images/{row["path"]}'
    listed[split].append(manual_files.Listed(
        rel=rel, file_name=rel, image_id=row.line,
        label=label_of[labels[image_id].int('class_id')],
        box=box, source=f'{row.path} line {row.line}'))
  return names, listed


class NABirds(manual_files.OfficialBuilder):
  """NABirds: 555 visual categories of North American birds, 48,562 images with boxes."""

  name = 'nabirds'  # Not 'na_birds', TFDS's reading of the class name.
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original JPEG bytes.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download nabirds.tar.gz from https://dl.allaboutbirds.org/nabirds (the page
  asks you to accept its terms of use) and place it in the manual dir, as is or
  extracted (the folder nabirds/ holding images.txt, classes.txt, ..., images/).
  """
  HOMEPAGE = 'https://dl.allaboutbirds.org/nabirds'
  CITATION = """\
  @inproceedings{van2015building,
    title = {Building a bird recognition app and large scale dataset with citizen
             scientists: The fine print in fine-grained dataset collection},
    author = {Van Horn, Grant and Branson, Steve and Farrell, Ryan and Haber, Scott and
              Barry, Jessie and Ipeirotis, Panos and Perona, Pietro and Belongie, Serge},
    booktitle = {CVPR},
    pages = {595--604},
    year = {2015}}
  """
  OFFICIAL_TOTAL = 48_562
  OFFICIAL_SPLIT_SIZES = {'train': 23_929, 'test': 24_633}

  def _official_num_classes(self) -> int:
    return 555

  def _split_generators(self, dl_manager):
    tree = manual_files.find_tree(dl_manager.manual_dir, FOLDER, ARCHIVES,
                                  keep=_ANNOTATIONS, what='NABirds')
    names, listed = read_annotations(tree)
    return self._checked_splits(tree, names, tree.where('classes.txt'), listed,
                                tree.where('images.txt'))
