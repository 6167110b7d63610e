"""Data set names as the config spells them -> TFDS builder classes.

Builders are imported lazily so that importing fgjax stays cheap. Preparing
(`prepare`) and checking that a data set is prepared (`require_prepared`) live
here so that `launch/prepare_data.py` and the train loop share them.
"""

import dataclasses
import difflib
import glob
import importlib
import os
import re
import textwrap

# config.data.name -> (module, builder class).
BUILDERS = {
    'demo': ('fgjax.data.demo', 'FgjaxDemo'),
    'parts': ('fgjax.data.parts', 'FgjaxParts'),
    'cub': ('fgjax.data.cub', 'Cub2011'),
    'aircraft': ('fgjax.data.aircraft', 'FgvcAircraft'),
    'cars': ('fgjax.data.cars', 'StanfordCars'),
    'nabirds': ('fgjax.data.nabirds', 'NABirds'),
    'dogs': ('fgjax.data.dogs', 'StanfordDogs'),
}


# Generated from a seed, no download: train.py prepares them on first use.
SYNTHETIC = ('demo', 'parts')

# Any other name is a data set prepared from the user's own class folders
# (prepare_data.py --dataset=folder --name=NAME, fgjax/data/folder.py). Lowercase, so
# that two names never share a folder on a case-insensitive file system.
FOLDER_BUILDER = ('fgjax.data.folder', 'FgjaxFolder')
FOLDER = 'folder'  # prepare_data.py's --dataset for them; not a data set name.
_FOLDER_NAME = re.compile(r'[a-z][a-z0-9_]{0,63}')
FOLDER_NAME_RULE = ("lowercase ASCII letters, digits and _, starting with a letter, at "
                    "most 64 characters, e.g. 'my_birds'")


def is_folder_name(name: str) -> bool:
  """True for a name that is not built in: it can only be a folder data set."""
  return name not in BUILDERS


class DataNameError(ValueError):
  """A name that can name no data set (the message gives the rule)."""


def check_folder_name(name: str, what: str = '--name') -> None:
  """DataNameError unless `name` (given as `what`) can name a folder data set."""
  if not name:
    raise DataNameError(
        f"{what} is empty: give the name of a data set prepared from class folders "
        f"({FOLDER_NAME_RULE}), the --name of `python launch/prepare_data.py "
        f"--dataset={FOLDER} --manual_dir=DIR --name=NAME`; then train with "
        '--config=configs/folder.py --config.data.name=NAME.')
  if name in BUILDERS:
    raise DataNameError(f'{what}={name!r} is a built-in data set (the built-in ones are '
                        f'{sorted(BUILDERS)}): give a folder data set a name of its own.')
  if name == FOLDER:
    raise DataNameError(f'{what}={name!r} is not a data set name: {FOLDER!r} is the '
                        '--dataset of launch/prepare_data.py for all folder data sets, each '
                        f'of which has its own --name ({FOLDER_NAME_RULE}).')
  if not _FOLDER_NAME.fullmatch(name):
    raise DataNameError(f"{what}={name!r} is not valid: a folder data set's name is made of "
                        f'{FOLDER_NAME_RULE}.')


def check_data_name(name: str, what: str = 'config.data.name') -> None:
  """DataNameError unless `name` is a built-in data set or can name a folder data set."""
  if name in BUILDERS:
    return
  if name and name != FOLDER and not _FOLDER_NAME.fullmatch(name):
    raise DataNameError(f'{what}={name!r} is not valid; valid values: {sorted(BUILDERS)} '
                        f"(built in), or a folder data set's name: {FOLDER_NAME_RULE}.")
  check_folder_name(name, what)  # The empty name and 'folder' have messages of their own.


class DataNotPreparedError(FileNotFoundError):
  """The data set has not been prepared in data_dir (the message says how)."""


def builder_class(name: str):
  """The TFDS builder class registered as `name` (FgjaxFolder for a folder data set)."""
  check_data_name(name, 'data set name')
  module, cls = BUILDERS.get(name, FOLDER_BUILDER)
  return getattr(importlib.import_module(module), cls)


def _needs_manual_files(cls) -> bool:
  from fgjax.data import manual_files  # pylint: disable=g-import-not-at-top
  return issubclass(cls, manual_files.OfficialBuilder)


def get_builder(name: str, data_dir: str, builder_config: str | None = None,
                on_bad_image: str = 'error', folder_options: dict | None = None):
  """Instantiates the builder for `name`, writing ArrayRecord under `data_dir`.

  Args:
    name: a key of BUILDERS, or a folder data set's name.
    data_dir: the TFDS data dir ('~' is expanded).
    builder_config: e.g. 'family' for aircraft; None for the default.
    on_bad_image: 'error' or 'skip' (common.BAD_IMAGE_POLICIES); used by the
      builders of official files and folders (the synthetic sets have no bad images).
    folder_options: a folder data set's source (FgjaxFolder's keyword arguments),
      needed to prepare it only; opening a prepared one reads them from its info.
  """
  cls = builder_class(name)
  if is_folder_name(name):
    if builder_config:
      raise ValueError(f'Folder data set {name!r} has no builder configs, got '
                       f'{builder_config!r}: leave config.data.builder_config empty.')
    return cls(config=name, data_dir=os.path.expanduser(data_dir), file_format='array_record',
               on_bad_image=on_bad_image, **(folder_options or {}))
  kwargs = {}
  if builder_config:
    valid = [c.name for c in cls.BUILDER_CONFIGS]
    if builder_config not in valid:
      raise ValueError(f'Data set {name!r} has no builder config {builder_config!r}; '
                       f'valid: {valid or "none"}.')
    kwargs['config'] = builder_config
  if _needs_manual_files(cls):
    kwargs['on_bad_image'] = on_bad_image
  return cls(data_dir=os.path.expanduser(data_dir), file_format='array_record', **kwargs)


def prepare_command(name: str, data_dir: str, builder_config: str | None = None,
                    on_bad_image: str = 'error') -> str:
  """The shell command that prepares `name` (run from the repository root)."""
  folder = is_folder_name(name)
  parts = ['python launch/prepare_data.py', f'--dataset={FOLDER if folder else name}']
  if folder or _needs_manual_files(builder_class(name)):
    parts.append('--manual_dir=DIR')
  if folder:
    parts.append(f'--name={name}')
  parts.append(f'--data_dir={data_dir}')
  if builder_config:
    parts.append(f'--builder_config={builder_config}')
  if on_bad_image != 'error':
    parts.append(f'--on_bad_image={on_bad_image}')
  return ' '.join(parts)


def is_prepared(builder) -> bool:
  """True once `builder`'s data set is completely written in its data dir."""
  # Checking the folder first spares TFDS's warning about a folder that is not there.
  return os.path.isdir(os.fspath(builder.data_path)) and builder.is_prepared()


def _interrupted_dirs(builder) -> list[str]:
  """Folders a killed prepare left behind (TFDS writes to incomplete.* first)."""
  return sorted(glob.glob(os.path.join(os.fspath(builder.data_path.parent),
                                       f'incomplete.*_{builder.version}')))


@dataclasses.dataclass(frozen=True)
class PrepareResult:
  builder: object  # The prepared tfds builder.
  already_prepared: bool  # True: nothing was done.
  skipped_files: list  # Bad images left out (on_bad_image='skip'), by path.
  data_path: str  # The prepared data set's folder.

  def split_sizes(self) -> dict:
    return {s: info.num_examples for s, info in self.builder.info.splits.items()}


def prepare(name: str, data_dir: str, manual_dir: str | None = None,
            builder_config: str | None = None, on_bad_image: str = 'error',
            folder_options: dict | None = None) -> PrepareResult:
  """Builds the ArrayRecord data set from the manual download, unless already done.

  An interrupted prepare leaves no data set that looks complete (TFDS writes
  into an incomplete.* folder and renames it at the end); calling this again
  builds it from scratch.

  Args:
    name: a key of BUILDERS, or a folder data set's name.
    data_dir: the TFDS data dir.
    manual_dir: the folder holding the official archive or extracted folder;
      None means TFDS's default, <data_dir>/downloads/manual.
    builder_config: e.g. 'family' for aircraft.
    on_bad_image: 'error' stops at the first undecodable image, naming it;
      'skip' leaves such images out and lists them in the result.
    folder_options: a folder data set's source (see get_builder); prepare it
      with fgjax.data.folder.prepare, which checks them against a prepared one.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir)
  builder = get_builder(name, data_dir, builder_config, on_bad_image, folder_options)
  data_path = os.fspath(builder.data_path)
  skipped = getattr(builder, 'skipped_files', [])
  if is_prepared(builder):
    return PrepareResult(builder, True, skipped, data_path)
  if os.path.exists(data_path):
    # TFDS would take any folder there for a finished data set and return.
    raise FileExistsError(f'{data_path} exists but is not a complete data set (no '
                          'dataset_info.json); delete it and prepare again.')
  if _needs_manual_files(type(builder)):
    manual_dir = os.path.expanduser(manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      from fgjax.data import manual_files  # pylint: disable=g-import-not-at-top
      raise manual_files.OfficialFilesError(
          f'The manual dir {manual_dir} does not exist or is empty. Put the official files '
          f'there:\n{textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)}')
  for path in _interrupted_dirs(builder):
    logging.warning('Left by an interrupted prepare (safe to delete once no other '
                    'prepare is running): %s', path)
  config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return PrepareResult(builder, False, getattr(builder, 'skipped_files', []), data_path)


def require_prepared(name: str, data_dir: str, builder_config: str | None = None,
                     on_bad_image: str = 'error'):
  """The builder of a prepared data set; DataNotPreparedError with the command if not.

  `on_bad_image` (config.data.on_bad_image) goes into the suggested command.
  """
  builder = get_builder(name, data_dir, builder_config)
  if is_prepared(builder):
    return builder
  message = (f'Data set {name!r}{f" ({builder_config})" if builder_config else ""} is not '
             f'prepared in {os.path.expanduser(data_dir)}. Prepare it with:\n  '
             f'{prepare_command(name, data_dir, builder_config, on_bad_image)}')
  close = difflib.get_close_matches(name, BUILDERS, n=1)
  if is_folder_name(name):
    message += ('\nwhere DIR holds your images in class folders:\n' +
                textwrap.dedent(builder.LAYOUT_HELP) +
                (f'({name!r} is not a built-in data set; did you mean {close[0]!r}?)\n'
                 if close else ''))
  elif _needs_manual_files(type(builder)):
    message += ('\nwhere DIR holds the official files:\n' +
                textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS))
  interrupted = _interrupted_dirs(builder)
  if interrupted:
    message += f'\n(An interrupted prepare left {interrupted}; rerunning finishes the job.)'
  raise DataNotPreparedError(message)
