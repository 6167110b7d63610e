"""SSANet (Gao et al., "Spatial-Scale Aligned Network for Fine-Grained Recognition", 2020).

`model.name='ssanet'`. Only the abstract is available; everything below that it leaves open
is our reading, built on NTS-Net (fgjax.models.nts) whose anchors, navigator, NMS, crops and
ranking loss it reuses. Per image:

  1. backbone(image) -> stages 'stage1'..'stage4' and the pooled feature f.
  2. DSM (`use_dsm`): the stages in `dsm_stages` are resampled (area average) to the
     stage4 resolution and projected by 1x1 convolutions to `dsm_width` channels: a pyramid
     P [B, S, h, w, D]. Its level descriptors z = GAP(P) [B, S, D] are aligned along the
     scale axis to a learned template t [S, D] by the circulant ridge regression of
     fgjax.ops.scale_mining (filter from t and a Gaussian target over shifts with
     sigma `dsm_sigma`, ridge `dsm_lambda`, Fourier solver), the response over shifts
     becomes shift probabilities (softmax, temperature `dsm_temperature`), the pyramid is
     soft-cyclically re-ordered by them, and the aligned levels are concatenated along
     channels in the template's order: A [B, h, w, S * D]. (A mean or any other
     symmetric fusion of the levels would be blind to the re-ordering.) The final map is
     concat(stage4, A) along channels; with use_dsm=False it is stage4 alone.
  3. OP (`use_op`): the final map is pooled along `op_angles` (0, 45, 90, 135 degrees) into
     `op_bins` bands each (fgjax.ops.oriented_pooling), and a gate softmax(Dense(f)) over
     the K orientations mixes them: g = sum_k gate_k d_k, [B, op_bins * channels]. With
     use_op=False, g = GAP(final map). With both off, g = f and the model is NTS-Net plus
     the alignment constraint.
  4. Proposals: NTS-Net's navigator on stop_gradient(stage4) scores the NTS anchors; greedy
     NMS keeps `proposal_num`; the boxes are cropped from the zero-padded image, zoomed and
     passed through the same backbone -> part features. Logits: 'logits' =
     concat_fc([parts[:cat_num], g]) (the prediction), 'global_logits' = fc(g),
     'part_logits' = part_fc(part).
  5. Morphological alignment constraint (`use_mac`), self-supervised (no part labels):
     the object mask is the channel mean of stage4 thresholded at its spatial mean (as in
     SCDA, Wei et al. 2017), closed then opened with a `mac_kernel` x `mac_kernel` max-pool
     window (fgjax.ops.morphology) to fill holes and drop specks. Each anchor's alignment
     is the fraction of its area inside the mask (the mask upsampled to the input by
     replication; area outside the image counts as outside the object). The constraint
     penalises navigator score mass on misaligned anchors:

         L_mac = mac_weight * sum_a softmax(anchor_scores)_a (1 - inside_a),

     so it, like the ranking loss, trains only the navigator. The mask is a target
     (no gradient). It lives on the stage4 grid (14 x 14 at 448); on maps of 2 x 2 or so
     a 3 x 3 closing fills the whole map and only the part of an anchor outside the image
     is penalised. With use_mac=False there is no mask and no such term.

Loss per example: global CE + ranking + concat CE + mean part CE (NTS-Net's, equal weights)
+ L_mac. Dropout (`dropout_rate`) on g and on the part features in training only, as in
fgjax.models.nts. Sizes: at 448 with ResNet-50, g has 3 * (2048 + 3 * 256) = 8448
channels and there are 1614 anchors; at 64 x 64 with resnet_tiny, stage4 is 2 x 2, with
39 anchors (1614 with anchor_grid='scaled', as fgjax.models.nts) and 32 px parts.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgjax.models import nts
from fgjax.models import regions
from fgjax.ops import cam_attention
from fgjax.ops import morphology
from fgjax.ops import oriented_pooling
from fgjax.ops import scale_mining


def area_resize(x: jnp.ndarray, out_hw) -> jnp.ndarray:
  """Area (box-filter) resampling of x [B, h, w, C] to [B, H', W', C].

  Output cell o along an axis of length n averages the input over
  [o n / n', (o + 1) n / n'), area-weighted where a boundary cuts a cell; two
  small static matrices. It is exact average pooling when n' divides n
  (stage2 -> stage4 at 448: 56 -> 14) and handles the ceil-rounded stage sizes
  of other inputs (80 px: 10 -> 3).
  """
  def matrix(n_in, n_out):
    weights = oriented_pooling.band_weights(n_in, n_out)  # [n_out, n_in] overlaps
    return jnp.asarray(weights / weights.sum(axis=1, keepdims=True), x.dtype)

  if tuple(x.shape[1:3]) == tuple(out_hw):
    return x
  return jnp.einsum('ih,jw,bhwc->bijc', matrix(x.shape[1], out_hw[0]),
                    matrix(x.shape[2], out_hw[1]), x)


class DiscriminativeScaleMining(nn.Module):
  """Scale-aligned fusion of a feature pyramid (module docstring, step 2).

  Attributes:
    stages: backbone stages forming the pyramid, S of them.
    width: D, channels of every pyramid level.
    ridge: lambda of the circulant ridge regression.
    temperature: softmax temperature over the S shift responses.
    sigma: width (in levels) of the Gaussian target response.
    dtype: computation dtype of the projections; the FFTs run in float32.
  """
  stages: Sequence[str] = ('stage2', 'stage3', 'stage4')
  width: int = 256
  ridge: float = 1e-2
  temperature: float = 0.1
  sigma: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, out_hw):
    """Returns (A [B, h, w, S * D] in `dtype`, shift probabilities [B, S] float32)."""
    levels = []
    for name in self.stages:
      x = area_resize(features[name], out_hw)
      # Resizing first: the 1x1 projection commutes with it and is cheaper at low resolution.
      levels.append(nn.Conv(self.width, (1, 1), dtype=self.dtype, name=f'proj_{name}')(x))
    pyramid = jnp.stack(levels, axis=1)  # [B, S, h, w, D]
    num_levels = len(self.stages)
    template = self.param('template', nn.initializers.normal(1.0), (num_levels, self.width))
    target = scale_mining.gaussian_shift_target(num_levels, self.sigma)
    descriptors = jnp.mean(pyramid.astype(jnp.float32), axis=(2, 3))  # [B, S, D]
    shift_probs, _ = scale_mining.scale_alignment(descriptors, template, target, self.ridge,
                                                  self.temperature)
    aligned = scale_mining.soft_cyclic_shift(pyramid, shift_probs)  # [B, S, h, w, D]
    # Concatenated in the template's level order. (Any symmetric fusion, a mean or
    # uniform weights, would be blind to the re-ordering.)
    batch, _, h, w, _ = aligned.shape
    aligned = jnp.moveaxis(aligned, 1, 3).reshape(batch, h, w, num_levels * self.width)
    return aligned, shift_probs


class OrientedPooling(nn.Module):
  """Banded pooling along K orientations mixed by a learned per-image gate (step 3).

  Attributes:
    angles: orientations in degrees.
    num_bins: bands per orientation.
  """
  angles: Sequence[float] = oriented_pooling.DEFAULT_ANGLES
  num_bins: int = 3

  @nn.compact
  def __call__(self, feature_map, pooled):
    """feature_map [B, h, w, C], pooled [B, C'] -> (g [B, P * C] float32, gate [B, K])."""
    descriptors = oriented_pooling.oriented_pool(feature_map, tuple(self.angles),
                                                 self.num_bins)  # [B, K, P, C]
    gate = jax.nn.softmax(nn.Dense(len(self.angles), dtype=jnp.float32, name='gate')(pooled))
    mixed = jnp.einsum('bk,bkpc->bpc', gate, descriptors.astype(jnp.float32))
    return mixed.reshape(mixed.shape[0], -1), gate


def object_mask(feature_map: jnp.ndarray, kernel: int) -> jnp.ndarray:
  """Cleaned binary object mask [B, h, w] float32 from features [B, h, w, C].

  mask = opening(closing(1[a > mean_hw(a)])), a = mean_c(features); no gradient.
  """
  activation = jnp.mean(jax.lax.stop_gradient(feature_map).astype(jnp.float32), axis=-1)
  mask = (activation > jnp.mean(activation, axis=(1, 2), keepdims=True)).astype(jnp.float32)
  return morphology.grey_opening(morphology.grey_closing(mask, kernel), kernel)


def anchor_inside_fraction(mask: jnp.ndarray, anchors: np.ndarray, image_hw, *,
                           alignment: str = 'receptive_field',
                           stride: float | None = None) -> jnp.ndarray:
  """Fraction of each anchor's area inside the mask: [B, A].

  The mask [B, h, w] is read on the input as fgjax.ops.cam_attention.box_mean_scores
  reads a map: 'receptive_field' (default) centres cell u on input pixel u * stride, as
  the backbone does; 'top_left' is the original replication rule, half a cell off.
  `stride` None means H / h. Area outside the image counts as outside the mask.
  """
  height, width = image_hw
  boxes = np.asarray(anchors, np.float64)
  area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
  clipped_h = np.maximum(np.minimum(boxes[:, 2], height) - np.maximum(boxes[:, 0], 0), 0)
  clipped_w = np.maximum(np.minimum(boxes[:, 3], width) - np.maximum(boxes[:, 1], 0), 0)
  in_image = np.where(area > 0, clipped_h * clipped_w / np.maximum(area, 1e-12), 0.0)
  mean_inside = cam_attention.box_mean_scores(mask, jnp.asarray(anchors), (height, width),
                                              alignment=alignment, stride=stride)
  return mean_inside * jnp.asarray(in_image, jnp.float32)


def alignment_penalty(anchor_scores: jnp.ndarray, inside: jnp.ndarray) -> jnp.ndarray:
  """sum_a softmax(scores)_a (1 - inside_a): score mass off the object, [B]."""
  mass = jax.nn.softmax(anchor_scores.astype(jnp.float32), axis=-1)
  return jnp.sum(mass * (1.0 - jax.lax.stop_gradient(inside)), axis=-1)


class SSANet(regions.NavigatedModel):
  """SSANet with a shared ResNet backbone (module docstring).

  Attributes (beyond those of regions.RegionModel and regions.NavigatedModel):
    use_dsm: discriminative scale mining on (step 2).
    use_op: oriented pooling on (step 3).
    use_mac: morphological alignment constraint on (step 5).
    dsm_stages: pyramid levels (stage2, stage3, stage4).
    dsm_width: pyramid width D (256).
    dsm_lambda: ridge weight (1e-2).
    dsm_temperature: softmax temperature over shifts (0.1).
    dsm_sigma: Gaussian target width in levels (0.5).
    op_angles: orientations in degrees (0, 45, 90, 135).
    op_bins: bands per orientation (3).
    mac_kernel: morphology window in stage4 cells (3).
    mac_weight: weight of L_mac (1.0).
    map_alignment: how the object mask is laid on the input for L_mac ('receptive_field':
      stage4 cell u centred on pixel 32u, as the backbone sees it; 'top_left': the
      original replication rule, half a cell off; fgjax.ops.cam_attention).
    navigator_guide, guide_weight: as in fgjax.models.nts.NTSNet ('none', 2.0).
  """
  use_dsm: bool = True
  use_op: bool = True
  use_mac: bool = True
  dsm_stages: Sequence[str] = ('stage2', 'stage3', 'stage4')
  dsm_width: int = 256
  dsm_lambda: float = 1e-2
  dsm_temperature: float = 0.1
  dsm_sigma: float = 0.5
  op_angles: Sequence[float] = oriented_pooling.DEFAULT_ANGLES
  op_bins: int = 3
  mac_kernel: int = 3
  mac_weight: float = 1.0
  navigator_guide: str = 'none'
  guide_weight: float = 2.0
  map_alignment: str = 'receptive_field'

  def _image_descriptor(self, features):
    """g [B, G] float32 and the DSM/OP diagnostics (steps 2 and 3)."""
    extras = {}
    final_map = features['stage4']
    if self.use_dsm:
      aligned, extras['shift_probs'] = DiscriminativeScaleMining(
          stages=tuple(self.dsm_stages), width=self.dsm_width, ridge=self.dsm_lambda,
          temperature=self.dsm_temperature, sigma=self.dsm_sigma, dtype=self.dtype,
          name='dsm')(features, final_map.shape[1:3])
      final_map = jnp.concatenate([final_map, aligned.astype(final_map.dtype)], axis=-1)
    if self.use_op:
      g, extras['orientation_weights'] = OrientedPooling(
          angles=tuple(self.op_angles), num_bins=self.op_bins, name='op')(
              final_map, features['pooled'])
    else:
      g = jnp.mean(final_map.astype(jnp.float32), axis=(1, 2))
    return g, extras

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False):
    """Forward pass.

    Args:
      images: [B, H, W, 3] normalised float32.
      labels: unused (the ranking loss and L_mac need no labels in the forward pass).
      train: BatchNorm batch statistics and dropout when True.

    Returns:
      'logits' [B, C] (the prediction), 'global_logits' [B, C], 'part_logits' [B, m, C],
      'part_scores' [B, m], 'boxes' [B, m, 4] (y0, x0, y1, x1 in input pixels),
      'box_valid' [B, m], 'anchor_scores' [B, A]; with use_dsm 'shift_probs' [B, S];
      with use_op 'orientation_weights' [B, K]; with use_mac 'object_mask' [B, h, w] and
      'loss_mac' [B] (already weighted by mac_weight); with a navigator guide
      'guide_logits' [B, C].
    """
    del labels
    regions.check_counts(self.cat_num, self.proposal_num, 'cat_num', 'proposal_num')
    height, width = images.shape[1:3]
    anchors, pad_px, part_px = regions.anchors_and_sizes(
        (height, width), self.pad, self.part_size, self.reference_size, self.anchor_grid)
    backbone = regions.shared_backbone(self, separate_part_stats=self.separate_part_stats)
    features = backbone(images, train)
    g, outputs = self._image_descriptor(features)

    anchor_scores = regions.navigate(features['stage4'], anchors.shape[0], (height, width),
                                     width=self.navigator_width, dtype=self.dtype,
                                     grid=self.anchor_grid,
                                     reference_size=self.reference_size)
    if self.use_mac:
      mask = object_mask(features['stage4'], self.mac_kernel)
      inside = anchor_inside_fraction(mask, anchors, (height, width),
                                      alignment=self.map_alignment, stride=regions.FEATURE_STRIDE)
      outputs['object_mask'] = mask
      outputs['loss_mac'] = self.mac_weight * alignment_penalty(anchor_scores, inside)

    selection, guide_logits = regions.guide_anchor_scores(
        features['stage4'], anchor_scores, anchors, (height, width),
        num_classes=self.num_classes, guide=self.navigator_guide, weight=self.guide_weight,
        train=train)
    regions.sow_ranking_scores(self, 'selection_scores', selection)
    indices, valid, boxes, part_features = regions.zoom_and_describe(
        backbone, images, anchors, selection, num=self.proposal_num, iou=self.nms_iou,
        pad_px=pad_px, part_px=part_px, train=train,
        separate_stats=self.separate_part_stats)

    outputs.update({
        **regions.concat_heads(g, part_features, num_classes=self.num_classes,
                               cat_num=self.cat_num, dropout_rate=self.dropout_rate,
                               train=train),
        'part_scores': jnp.take_along_axis(anchor_scores, indices, axis=1),
        'boxes': boxes,
        'box_valid': valid,
        'anchor_scores': anchor_scores,
    })
    if guide_logits is not None:
      outputs['guide_logits'] = guide_logits
    return outputs

  @staticmethod
  def per_example_losses(outputs, labels):
    """Per-example terms [B]: 'loss' = global + rank + concat + part + mac.

    'loss_mac' is zero when the model was built with use_mac=False.
    """
    losses = nts.NTSNet.per_example_losses(outputs, labels)
    losses['loss_mac'] = outputs.get('loss_mac', jnp.zeros(labels.shape, jnp.float32))
    losses['loss'] = losses['loss'] + losses['loss_mac']
    return losses
