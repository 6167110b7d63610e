"""Reading a data set's official files from the manual download folder.

The builders of the official data sets (CUB, FGVC-Aircraft, Stanford Cars,
NABirds, Stanford Dogs) find their files in `manual_dir`, either as the official
archive or as the folder it extracts to, through a `FileTree` (file_trees.py,
re-exported here) that reads both the same way. This module holds what the
builders share: the annotation-table reader whose errors name the file and the
line, the bad-image policy, and the `OfficialBuilder` base class (labels, boxes,
split-size checks).
"""

import dataclasses
from typing import Sequence

from absl import logging
import tensorflow_datasets as tfds

from fgjax.data import common
# Re-exported: the builders reach the trees and the error through this module.
from fgjax.data.file_trees import ArchiveTree, FileTree, FolderTree  # pylint: disable=unused-import
from fgjax.data.file_trees import OfficialFilesError, find_tree  # pylint: disable=unused-import


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of an annotation table, with what is needed to blame it."""
  path: str  # Where the file is (for messages).
  line: int  # 1-based line number.
  columns: tuple[str, ...]
  fields: tuple[str, ...]

  def __getitem__(self, column: str) -> str:
    return self.fields[self.columns.index(column)]

  def error(self, message: str) -> OfficialFilesError:
    return OfficialFilesError(
        f'{self.path} line {self.line}: {message} (the line is {" ".join(self.fields)!r}).')

  def int(self, column: str, low: int | None = None, high: int | None = None) -> int:
    try:
      value = int(self[column])
    except ValueError:
      raise self.error(f'{column} must be an integer, got {self[column]!r}') from None
    if (low is not None and value < low) or (high is not None and value > high):
      raise self.error(f'{column} {value} is out of range [{low}, {high}]')
    return value

  def float(self, column: str) -> float:
    try:
      return float(self[column])
    except ValueError:
      raise self.error(f'{column} must be a number, got {self[column]!r}') from None


def read_lines(tree: FileTree, rel: str) -> list[tuple[int, str]]:
  """The non-blank lines of a text file as (1-based line number, text)."""
  data = tree.read(rel)
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise OfficialFilesError(f'{tree.where(rel)}: not a UTF-8 text file ({e}).') from e
  return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines()) if line.strip()]


def read_rows(tree: FileTree, rel: str, columns: Sequence[str],
              last_has_spaces: bool = False) -> list[Row]:
  """Parses a whitespace-separated table with the given columns.

  Args:
    tree: where the file is.
    rel: the file's path in `tree`.
    columns: column names, for messages and `Row[...]`.
    last_has_spaces: the last column is free text that may contain spaces: the
      line is split on the first len(columns) - 1 spaces only.
  """
  columns = tuple(columns)
  rows = []
  for number, line in read_lines(tree, rel):
    if last_has_spaces:
      fields = line.split(None, len(columns) - 1)
    else:
      fields = line.split()
    if len(fields) != len(columns):
      raise OfficialFilesError(
          f'{tree.where(rel)} line {number}: expected {len(columns)} fields '
          f'"{" ".join(columns)}", got {line!r}.')
    rows.append(Row(tree.where(rel), number, columns, tuple(fields)))
  return rows


def read_table(tree: FileTree, rel: str, columns: Sequence[str],
               last_has_spaces: bool = False) -> dict[str, Row]:
  """`read_rows` keyed by the first column, which must be unique."""
  table = {}
  for row in read_rows(tree, rel, columns, last_has_spaces):
    key = row.fields[0]
    if key in table:
      raise row.error(f'{columns[0]} {key} already appeared on line {table[key].line}')
    table[key] = row
  return table


class ImageChecker:
  """The bad-image policy: decode each image fully, then stop or skip and record.

  'error' raises `common.BadImageError` with the file's path; 'skip' records
  the path and the reason in `skipped` (never a silent drop).
  """

  def __init__(self, policy: str):
    if policy not in common.BAD_IMAGE_POLICIES:
      raise ValueError(f'on_bad_image must be one of {common.BAD_IMAGE_POLICIES}, '
                       f'got {policy!r}.')
    self.policy = policy
    self.skipped = {}  # Path -> reason, in the order found.

  def size(self, data: bytes, where: str, crop_bottom: int = 0) -> tuple[int, int] | None:
    """(width, height) of the decoded image, or None if it was skipped."""
    try:
      width, height = common.check_image(data, where)
      if height <= crop_bottom:
        raise common.BadImageError(
            f'{where}: image height {height} leaves nothing after cutting the '
            f'{crop_bottom}-pixel banner.')
    except common.BadImageError as e:
      if self.policy == 'error':
        raise common.BadImageError(
            f'{e} Rerun with on_bad_image=skip (prepare_data --on_bad_image=skip) '
            'to leave it out and list it.') from e.__cause__
      if where not in self.skipped:
        logging.warning('Skipping bad image: %s', e)
        self.skipped[where] = str(e)
      return None
    return width, height


@dataclasses.dataclass(frozen=True)
class Listed:
  """One image as the annotation files list it, before its file is read."""
  rel: str  # Path in the split's FileTree.
  file_name: str  # Path in the official layout; also the example key.
  image_id: int
  label: int  # 0-based.
  box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, top-left origin.
  source: str  # The annotation that lists it (file and line), for messages.


class OfficialBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the builders of the official data sets share.

  Subclasses read the annotation files in `_split_generators`, call
  `_set_class_names`, `_check_listed` and `_check_split_sizes`, then return
  `self._generate_examples(tree, listed)` per split (`_checked_splits` does all of it
  for a layout whose splits share one tree).
  """

  OFFICIAL_TOTAL = 0  # Images in the complete official layout.
  OFFICIAL_SPLIT_SIZES = {}  # Split -> examples in the complete set.
  CROP_BOTTOM = 0  # Banner rows cut at decode time.
  HOMEPAGE = ''
  CITATION = ''

  def __init__(self, *, on_bad_image: str = 'error', **kwargs):
    self._images = ImageChecker(on_bad_image)
    super().__init__(**kwargs)
    self._original_state['on_bad_image'] = on_bad_image  # Kept when pickled.

  @property
  def on_bad_image(self) -> str:
    return self._images.policy

  @property
  def skipped_files(self) -> list[str]:
    """Bad images left out: by this builder's prepare, else by the stored one."""
    if self._images.skipped:
      return list(self._images.skipped)
    meta = self.info.metadata  # Keys first: a restored one loads lazily.
    return list(meta['skipped_files']) if 'skipped_files' in meta.keys() else []

  def _official_num_classes(self) -> int:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    # Class names are read from the official files (see common.features_dict).
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=common.features_dict(None),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _set_class_names(self, names: Sequence[str], where: str):
    seen = {}
    for i, name in enumerate(names):
      if name in seen:
        raise OfficialFilesError(
            f'{where}: class name {name!r} appears twice (classes {seen[name] + 1} and {i + 1}).')
      seen[name] = i
    if not names:
      raise OfficialFilesError(f'{where}: no class names.')
    self.info.features['label'].names = list(names)

  def _check_listed(self, tree: FileTree, listed: Sequence[Listed]):
    """Every listed image exists, once, with a valid label and an upright box."""
    num_classes = self.info.features['label'].num_classes
    seen = set()
    for ex in listed:
      if ex.file_name in seen:
        raise OfficialFilesError(f'{ex.source}: {ex.file_name} is listed twice in one split.')
      seen.add(ex.file_name)
      if not 0 <= ex.label < num_classes:
        raise OfficialFilesError(f'{ex.source}: label {ex.label + 1} is out of range '
                                 f'[1, {num_classes}] (there are {num_classes} classes).')
      x0, y0, x1, y1 = ex.box  # Outside the image is clipped later; upside down is an error.
      if not (x0 <= x1 and y0 <= y1):
        raise OfficialFilesError(
            f'{ex.source}: box x0={x0}, y0={y0}, x1={x1}, y1={y1} is upside down '
            '(expected x0 <= x1 and y0 <= y1).')
      if not tree.exists(ex.rel):
        raise OfficialFilesError(
            f'{ex.source}: lists {ex.file_name}, but {tree.where(ex.rel)} does not exist.')

  def _checked_splits(self, tree: FileTree, names: Sequence[str], names_where: str,
                      listed: dict, sizes_where: str, total: int | None = None) -> dict:
    """Sets the class names, checks every listed image and the split sizes (`total`:
    images in all splits, by default the listed ones), and returns the generators of
    the splits {split: [Listed]}, whose files are all in `tree`."""
    self._set_class_names(names, names_where)
    for examples in listed.values():
      self._check_listed(tree, examples)
    total = sum(len(v) for v in listed.values()) if total is None else total
    self._check_split_sizes({s: len(v) for s, v in listed.items()}, total, sizes_where)
    return {split: self._generate_examples(tree, examples)
            for split, examples in listed.items()}

  def _check_split_sizes(self, sizes: dict[str, int], total: int, where: str):
    """Official split sizes are required when the layout holds the complete set.

    Our reading of "complete": the annotation files list exactly the official
    number of images (`total`). A partial layout (a subset, as in the tests) is
    built as it is. Sizes are counted before decoding, so images skipped under
    on_bad_image='skip' do not fail this check; they are listed instead.
    """
    if total != self.OFFICIAL_TOTAL:
      logging.info('%s: %d images listed, not the official %d: building a partial set.',
                   where, total, self.OFFICIAL_TOTAL)
      return
    num_classes = self.info.features['label'].num_classes
    if num_classes != self._official_num_classes():
      raise OfficialFilesError(
          f'{where}: the complete set of {total} images is present but there are '
          f'{num_classes} classes, not the official {self._official_num_classes()}.')
    wrong = {s: n for s, n in sizes.items() if n != self.OFFICIAL_SPLIT_SIZES[s]}
    if wrong:
      raise OfficialFilesError(
          f'{where}: the complete set of {total} images is present but the split files '
          f'give {sizes}; the official sizes are {self.OFFICIAL_SPLIT_SIZES}. The '
          'annotation files are damaged or from another release.')

  def _generate_examples(self, tree: FileTree, listed: Sequence[Listed]):
    names = self.info.features['label'].names
    by_rel = {ex.rel: ex for ex in listed}
    for rel, data in tree.iter_read(by_rel):
      ex = by_rel[rel]
      size = self._images.size(data, tree.where(rel), self.CROP_BOTTOM)
      if size is None:
        self.info.metadata['skipped_files'] = dict(self._images.skipped)
        continue
      width, height = size
      yield ex.file_name, {
          'image': data,  # The original bytes, never re-encoded.
          'label': ex.label,
          'label_name': names[ex.label],
          'bbox': common.normalised_bbox(*ex.box, width, height - self.CROP_BOTTOM),
          'file_name': ex.file_name,
          'image_id': ex.image_id,
          'crop_bottom': self.CROP_BOTTOM,
      }
    if self._images.skipped:
      logging.warning('%s: %d bad image(s) skipped so far:\n  %s', self.name,
                      len(self._images.skipped), '\n  '.join(self._images.skipped))
