"""Files of an official layout, read alike from an extracted folder or its archive.

The builders of the official data sets find their files in `manual_dir`, either
as the official archive or as the folder it extracts to, through a `FileTree`
that reads both the same way: archives are streamed, never extracted to disk.
`find_tree` picks the one present. (Moved out of manual_files.py, which
re-exports these names.)
"""

import os
import tarfile
import zlib
from typing import Iterable, Iterator, Sequence


class OfficialFilesError(ValueError):
  """An official file is missing, or its content is not what the layout says."""


class FileTree:
  """Files below one folder of the official layout, by '/'-separated relative path."""

  def where(self, rel: str) -> str:
    """The file's full location, for messages."""
    raise NotImplementedError

  def exists(self, rel: str) -> bool:
    raise NotImplementedError

  def read(self, rel: str) -> bytes:
    raise NotImplementedError

  def iter_read(self, rels: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """Yields (rel, content) for every path in `rels`, in the tree's own order."""
    raise NotImplementedError


class FolderTree(FileTree):
  """An extracted folder."""

  def __init__(self, root: str):
    self.root = root

  def where(self, rel):
    return os.path.join(self.root, *rel.split('/'))

  def exists(self, rel):
    return os.path.isfile(self.where(rel))

  def read(self, rel):
    try:
      with open(self.where(rel), 'rb') as f:
        return f.read()
    except FileNotFoundError:
      raise OfficialFilesError(f'Missing file {self.where(rel)}.') from None

  def iter_read(self, rels):
    for rel in rels:
      yield rel, self.read(rel)


class ArchiveTree(FileTree):
  """The members of a tar archive (any compression) below `prefix`.

  The archive is read sequentially, as a stream: the first use scans it once to
  list its members and keep the small files named in `keep` (annotations) in
  memory; `iter_read` makes one more pass per call, yielding in archive order.
  """

  def __init__(self, path: str, prefix: str, keep: Iterable[str] = ()):
    self.path = path
    self.prefix = prefix.rstrip('/') + '/'
    self._keep = frozenset(keep)
    self._kept = {}
    self._names = None

  def where(self, rel):
    return f'{self.path}:{self.prefix}{rel}'

  def _stream(self, wanted) -> Iterator[tuple[str, bytes | None]]:
    """Yields (rel, content if rel in `wanted` else None) for each file member."""
    try:
      with tarfile.open(self.path, 'r|*') as tar:
        for info in tar:
          name = info.name
          while name.startswith('./'):
            name = name[2:]
          if not info.isfile() or not name.startswith(self.prefix):
            continue
          rel = name[len(self.prefix):]
          yield rel, tar.extractfile(info).read() if rel in wanted else None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
      raise OfficialFilesError(
          f'{self.path}: cannot read the archive ({type(e).__name__}: {e}); it is '
          'probably truncated or damaged: download it again.') from e

  def _scan(self):
    if self._names is None:
      names = set()
      for rel, data in self._stream(self._keep):
        names.add(rel)
        if data is not None:
          self._kept[rel] = data
      if not names:
        raise OfficialFilesError(
            f'{self.path} holds no file under {self.prefix}: not the official archive?')
      self._names = names

  def exists(self, rel):
    self._scan()
    return rel in self._names

  def read(self, rel):
    if not self.exists(rel):
      raise OfficialFilesError(f'Missing file {self.where(rel)}.')
    if rel not in self._kept:
      for _, data in self.iter_read([rel]):
        return data
    return self._kept[rel]

  def iter_read(self, rels):
    wanted = set(rels)
    missing = wanted - self._kept.keys()
    for rel in wanted & self._kept.keys():
      yield rel, self._kept[rel]
    if missing:
      for rel, data in self._stream(missing):
        if data is not None and rel in missing:
          missing.discard(rel)
          yield rel, data
    if missing:
      raise OfficialFilesError(
          f'{len(missing)} file(s) missing from {self.path}, e.g. '
          f'{self.where(sorted(missing)[0])}.')


def _listing(folder: str) -> str:
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return 'it does not exist'
  shown = ', '.join(names[:15]) + (', ...' if len(names) > 15 else '')
  return f'it holds: {shown or "nothing"}'


def find_tree(manual_dir: str, folder: str, archives: Sequence[str],
              keep: Iterable[str] = (), what: str = '') -> FileTree:
  """The official `folder`, extracted in `manual_dir` or inside an archive there.

  Looked for in this order: `manual_dir/folder/`, `manual_dir` itself when its
  name is `folder`, then each of `archives` in `manual_dir` (whose members must
  sit below `folder/`, as in the official archives).

  Args:
    manual_dir: the manual download folder.
    folder: the folder name of the official layout, e.g. 'CUB_200_2011'.
    archives: official archive names, e.g. ('CUB_200_2011.tgz',).
    keep: paths (relative to `folder`) of small files to hold in memory when
      reading from an archive, so that they cost no extra pass.
    what: the data set's name, for the error message.
  """
  manual_dir = os.fspath(manual_dir)
  candidates = [os.path.join(manual_dir, folder)]
  if os.path.basename(os.path.normpath(manual_dir)) == folder:
    candidates.append(manual_dir)
  for path in candidates:
    if os.path.isdir(path):
      return FolderTree(path)
  for name in archives:
    path = os.path.join(manual_dir, name)
    if os.path.isfile(path):
      return ArchiveTree(path, folder, keep)
  raise OfficialFilesError(
      f'{what + ": " if what else ""}found neither the folder {folder}/ nor '
      f'{" nor ".join(archives)} in the manual dir {manual_dir} ({_listing(manual_dir)}).')
