"""The baseline: backbone -> global average pool -> linear (`model.name='resnet'`)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import optax

from fgjax.models import resnet


class Classifier(nn.Module):
  """Plain fine-tuned ResNet: the reference point every method must beat."""
  num_classes: int
  backbone: str = 'resnet50'
  dtype: Any = jnp.float32
  bn_axis_name: Any = None
  pointwise_conv: str = 'conv'  # How the backbone's 1x1 convolutions run (fgjax.models.resnet).

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False):
    del labels  # The baseline does not look at labels in the forward pass.
    features = resnet.get_backbone(self.backbone, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                                   pointwise_conv=self.pointwise_conv,
                                   name='backbone')(images, train)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, name='head')(features['pooled'])
    return {'logits': logits}

  @staticmethod
  def per_example_losses(outputs, labels):
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs['logits'], labels)
    return {'loss': loss}
