"""Model registry: `config.model.name` -> linen Module class.

Every model is a linen Module built with keyword arguments
(`num_classes`, `backbone`, `dtype`, `bn_axis_name`, the keys of the shared
`config.model.regions` it has, and its own from `config.model.<name>`), called as
`model.apply(variables, images, labels, train=...)`, returning a dict with at
least 'logits' [B, num_classes], and has a staticmethod
`per_example_losses(outputs, labels) -> {'loss': [B], ...}`. The backbone is
the submodule named 'backbone'.
"""

import dataclasses
import importlib

import jax.numpy as jnp

# name -> (module, class).
MODELS = {
    'resnet': ('fgjax.models.classifier', 'Classifier'),
    'nts': ('fgjax.models.nts', 'NTSNet'),
    'fdl': ('fgjax.models.fdl', 'FDL'),
    'ssanet': ('fgjax.models.ssanet', 'SSANet'),
    'scrim': ('fgjax.models.scrim', 'SCRIM'),
}


def model_class(name: str):
  if name not in MODELS:
    raise ValueError(f'Unknown model.name {name!r}; valid model names: {sorted(MODELS)}.')
  module, cls = MODELS[name]
  return getattr(importlib.import_module(module), cls)


def model_settings(model_config) -> dict:
  """The keyword arguments `config.model` gives its model beyond the common ones: the
  keys of the shared `model.regions` block the model has, then its own section's."""
  fields = {f.name for f in dataclasses.fields(model_class(model_config.name))}
  shared = {k: v for k, v in model_config.regions.to_dict().items() if k in fields}
  own = model_config[model_config.name].to_dict() if model_config.name in model_config else {}
  return {**shared, **own}


def build_model(model_config, num_classes: int, bn_axis_name=None):
  """Instantiates the model described by `config.model`."""
  return model_class(model_config.name)(
      num_classes=num_classes, backbone=model_config.backbone,
      dtype=jnp.dtype(model_config.dtype), bn_axis_name=bn_axis_name,
      pointwise_conv=model_config.pointwise_conv, **model_settings(model_config))
