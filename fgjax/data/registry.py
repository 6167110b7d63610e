"""Data set names as the config spells them -> TFDS builder classes.

Builders are imported lazily so that importing fgjax stays cheap.
"""

import importlib
import os

# config.data.name -> (module, builder class).
BUILDERS = {
    'demo': ('fgjax.data.demo', 'FgjaxDemo'),
    'cub': ('fgjax.data.cub', 'Cub2011'),
    'aircraft': ('fgjax.data.aircraft', 'FgvcAircraft'),
    'cars': ('fgjax.data.cars', 'StanfordCars'),
}


def builder_class(name: str):
  """The TFDS builder class registered as `name`."""
  if name not in BUILDERS:
    raise ValueError(f'Unknown data set {name!r}; valid data sets: {sorted(BUILDERS)}.')
  module, cls = BUILDERS[name]
  return getattr(importlib.import_module(module), cls)


def get_builder(name: str, data_dir: str, manual_dir: str | None = None,
                builder_config: str | None = None, **kwargs):
  """Instantiates the builder for `name`, writing ArrayRecord under `data_dir`."""
  cls = builder_class(name)
  if builder_config:
    kwargs['config'] = builder_config
  download_config = None
  if manual_dir:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  builder = cls(data_dir=os.path.expanduser(data_dir), file_format='array_record', **kwargs)
  builder.fgjax_download_config = download_config
  return builder
