"""Model registry: `config.model.name` -> linen Module class.

Every model is a linen Module built with keyword arguments
(`num_classes`, `backbone`, `dtype`, `bn_axis_name`, and its own
hyper-parameters from `config.model.<name>`), called as
`model.apply(variables, images, labels, train=...)`, returning a dict with at
least 'logits' [B, num_classes], and has a staticmethod
`per_example_losses(outputs, labels) -> {'loss': [B], ...}`. The backbone is
the submodule named 'backbone'.
"""

import importlib

import jax.numpy as jnp

# name -> (module, class).
MODELS = {
    'resnet': ('fgjax.models.classifier', 'Classifier'),
    'nts': ('fgjax.models.nts', 'NTSNet'),
    'fdl': ('fgjax.models.fdl', 'FDL'),
    'ssanet': ('fgjax.models.ssanet', 'SSANet'),
}


def model_class(name: str):
  if name not in MODELS:
    raise ValueError(f'Unknown model.name {name!r}; valid model names: {sorted(MODELS)}.')
  module, cls = MODELS[name]
  return getattr(importlib.import_module(module), cls)


def build_model(model_config, num_classes: int, bn_axis_name=None):
  """Instantiates the model described by `config.model`."""
  cls = model_class(model_config.name)
  kwargs = model_config[model_config.name].to_dict() if model_config.name in model_config else {}
  return cls(num_classes=num_classes, backbone=model_config.backbone,
             dtype=jnp.dtype(model_config.dtype), bn_axis_name=bn_axis_name, **kwargs)
