"""FGVC-Aircraft 2013b: TFDS builder from the official files.

The manual dir holds `fgvc-aircraft-2013b.tar.gz` or the extracted
`fgvc-aircraft-2013b/`, whose `data/` folder has `images/<id>.jpg` (7-digit
ids, leading zeros kept), the class lists `variants.txt` (100), `families.txt`
(70) and `manufacturers.txt` (30), one name per line, the split files
`images_<level>_<split>.txt` ("id name") for level in variant, family,
manufacturer and split in train (3,334), val (3,333), trainval (6,667), test
(3,333), and `images_box.txt` ("id xmin ymin xmax ymax").

Every image carries a 20-pixel copyright banner at the bottom. It stays in the
stored bytes (never re-encoded); `crop_bottom` = 20 tells the pipeline to cut
it at decode time, and boxes are normalised to the height without it.

Our readings where the files leave room:
  * a split line is split on its first space only: class names contain spaces
    ('Boeing 707', 'de Havilland'); the label is the name's position in the
    level's class list, and a name not in the list is an error.
  * box coordinates are 1-based inclusive pixel indices (the devkit's
    convention), i.e. the box spans [xmin - 1, xmax] x [ymin - 1, ymax] in
    pixels from the top-left edge; parts in the banner are clipped.
  * `image_id` is the id as an integer; `file_name` is the path relative to
    `fgvc-aircraft-2013b/`, e.g. 'data/images/0034309.jpg'.
"""

import tensorflow_datasets as tfds

from fgjax.data import manual_files

FOLDER = 'fgvc-aircraft-2013b'
ARCHIVES = ('fgvc-aircraft-2013b.tar.gz', 'fgvc-aircraft-2013b.tgz', 'fgvc-aircraft-2013b.tar')
BANNER_ROWS = 20
SPLITS = ('train', 'val', 'trainval', 'test')
# Config name -> (class list file, official class count).
LEVELS = {'variant': ('variants.txt', 100), 'family': ('families.txt', 70),
          'manufacturer': ('manufacturers.txt', 30)}


def _annotation_files():
  files = ['data/images_box.txt']
  for level, (class_file, _) in LEVELS.items():
    files.append(f'data/{class_file}')
    files += [f'data/images_{level}_{split}.txt' for split in SPLITS]
  return files


def read_annotations(tree: manual_files.FileTree, level: str):
  """Class names and the listed images per split for one level of labels.

  Returns:
    (class_names, {split: [Listed]} for split in SPLITS).
  """
  class_file = f'data/{LEVELS[level][0]}'
  names = [line for _, line in manual_files.read_lines(tree, class_file)]
  index = {name: i for i, name in enumerate(names)}
  boxes = manual_files.read_table(tree, 'data/images_box.txt',
                                  ('image_id', 'xmin', 'ymin', 'xmax', 'ymax'))
  listed = {}
  for split in SPLITS:
    rows = manual_files.read_rows(tree, f'data/images_{level}_{split}.txt',
                                  ('image_id', level), last_has_spaces=True)
    listed[split] = []
    for row in rows:
      image_id = row['image_id']
      if not image_id.isdigit():
        raise row.error(f'image_id must be digits, got {image_id!r}')
      if row[level] not in index:
        raise row.error(f'{row[level]!r} is not a class of {tree.where(class_file)}')
      if image_id not in boxes:
        raise row.error(f'image {image_id} has no line in {tree.where("data/images_box.txt")}')
      box = boxes[image_id]
      rel = f'data/images/{image_id}.jpg'
      listed[split].append(manual_files.Listed(
          rel=rel, file_name=rel, image_id=int(image_id), label=index[row[level]],
          box=(box.float('xmin') - 1, box.float('ymin') - 1,
               box.float('xmax'), box.float('ymax')),
          source=f'{row.path} line {row.line}'))
  return names, listed


class FgvcAircraft(manual_files.OfficialBuilder):
  """FGVC-Aircraft 2013b: 10,000 aircraft images, labels at three levels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: ArrayRecord, original JPEG bytes.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=level, description=f'{count} classes ({level} level).')
      for level, (_, count) in LEVELS.items()
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'variant'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download fgvc-aircraft-2013b.tar.gz (about 2.6 GB) from
  https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and place it in the
  manual dir, as is or extracted (the folder fgvc-aircraft-2013b/ with data/).
  """
  HOMEPAGE = 'https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/'
  CITATION = """\
  @techreport{maji13fine-grained,
    title = {Fine-Grained Visual Classification of Aircraft},
    author = {S. Maji and J. Kannala and E. Rahtu and M. Blaschko and A. Vedaldi},
    year = {2013},
    archivePrefix = {arXiv},
    eprint = {1306.5151}}
  """
  OFFICIAL_TOTAL = 10_000
  OFFICIAL_SPLIT_SIZES = {'train': 3_334, 'val': 3_333, 'trainval': 6_667, 'test': 3_333}
  CROP_BOTTOM = BANNER_ROWS

  def _official_num_classes(self) -> int:
    return LEVELS[self.builder_config.name][1]

  def _split_generators(self, dl_manager):
    tree = manual_files.find_tree(dl_manager.manual_dir, FOLDER, ARCHIVES,
                                  keep=_annotation_files(), what='FGVC-Aircraft')
    level = self.builder_config.name
    names, listed = read_annotations(tree, level)
    total = len({ex.image_id for s in ('trainval', 'test') for ex in listed[s]})
    return self._checked_splits(tree, names, tree.where(f'data/{LEVELS[level][0]}'), listed,
                                tree.where(f'data/images_{level}_trainval.txt'), total)
