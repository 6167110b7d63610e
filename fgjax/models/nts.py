"""NTS-Net (Yang et al., "Learning to Navigate for Fine-grained Classification", ECCV 2018).

`model.name='nts'`. One step, per image:

  1. backbone(image) -> stride-32 map Z and pooled feature f (global).
  2. navigator(stop_gradient(Z)) -> a score for each of the A anchors (1614 at 448).
  3. greedy NMS (IoU >= 0.25 suppresses) -> the top `proposal_num` (6) anchors.
  4. each box is cut from the zero-padded image and zoomed to `part_size` (224),
     gradient-stopped, and passed through the SAME backbone -> part features p_1..p_6.
  5. logits: global fc(f); concatenated fc([p_1..p_cat_num, f]) (cat_num = 4), the
     prediction; part fc(p_r), one layer shared by all parts.

Loss (equal weights, per example; NTS-Net's batch means are the means of these):
global CE + ranking(navigator scores of the parts, part CEs) + concatenated CE + mean over
parts of the part CE. The navigator's input and the crops are gradient-stopped, so the
navigator learns only from the ranking loss and the ranking loss reaches nothing else.

Sizes (our reading): pixel quantities (`pad`, `part_size`, the anchor sizes) are given at
`reference_size` = 448 and scaled by min(H, W) / 448. The anchor strides stay 32/64/128,
those of the navigator's maps (`anchor_grid='feature'`: 39 anchors at 64 x 64);
`anchor_grid='scaled'` scales them too, so every square input gets NTS-Net's 1614 boxes and
the navigator resizes its map to the 14 x 14 grid (fgjax.ops.anchors compares the two on
the demo). At 448 both are NTS-Net's. At 64 with resnet_tiny: 32 px of padding and 32 x 32
parts. As in the reference, the anchors are floored to integers after padding, and NMS and
crops use those boxes.

Dropout (fixing the reference's defect): the reference applies dropout(0.5) to the pooled
features of images and parts in a layer that stays in training mode at test time. Here it
is an `nn.Dropout(dropout_rate)` active only when `train=True` (needs a 'dropout' rng
then); evaluation is deterministic. `dropout_rate=0` removes it.

BatchNorm: the backbone runs twice per step, on B images and then on B * proposal_num parts;
in training each call normalises with its own batch statistics (averaged over devices when
`bn_axis_name` is set). Running averages: one set for images and one for parts by default
(`separate_part_stats`, our reading; fgjax.models.regions explains why); False moves one
shared set twice per step, as the reference does.

Concatenation order: [parts, global], the layout of the reference's `concat_net` weights.

Our reading where NMS keeps fewer than `proposal_num` boxes (never at 448): the suppressed
boxes with the best scores fill the slots (fgjax.ops.nms); they are used like the others and
flagged in 'box_valid'.
"""

import flax.linen as nn
import jax.numpy as jnp

from fgjax.models import regions
from fgjax.ops import ranking


class NTSNet(regions.NavigatedModel):
  """NTS-Net with a shared ResNet backbone.

  Attributes (beyond those of regions.RegionModel and regions.NavigatedModel):
    navigator_guide: 'none' (the paper), 'train' or 'always': the class activation prior
      added to the navigator's scores before NMS (fgjax.models.regions, our reading).
    guide_weight: the prior's weight (it is standardised per image).
  """
  navigator_guide: str = 'none'
  guide_weight: float = 2.0

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False):
    """Forward pass.

    Args:
      images: [B, H, W, 3] normalised float32.
      labels: unused (the navigator ranks by the parts' own cross-entropies, in the loss).
      train: BatchNorm batch statistics and dropout when True.

    Returns:
      'logits' [B, C] (concatenated classifier, the prediction), 'global_logits' [B, C],
      'part_logits' [B, m, C], 'part_scores' [B, m] (navigator scores of the parts),
      'boxes' [B, m, 4] (y0, x0, y1, x1 in input pixels), 'box_valid' [B, m] (False where
      NMS ran out of boxes), 'anchor_scores' [B, A] (the navigator's); with a navigator
      guide also 'guide_logits' [B, C].
    """
    del labels
    regions.check_counts(self.cat_num, self.proposal_num, 'cat_num', 'proposal_num')
    height, width = images.shape[1:3]
    anchors, pad_px, part_px = regions.anchors_and_sizes(
        (height, width), self.pad, self.part_size, self.reference_size, self.anchor_grid)
    backbone = regions.shared_backbone(self, separate_part_stats=self.separate_part_stats)
    features = backbone(images, train)
    anchor_scores = regions.navigate(features['stage4'], anchors.shape[0], (height, width),
                                     width=self.navigator_width, dtype=self.dtype,
                                     grid=self.anchor_grid,
                                     reference_size=self.reference_size)

    selection, guide_logits = regions.guide_anchor_scores(
        features['stage4'], anchor_scores, anchors, (height, width),
        num_classes=self.num_classes, guide=self.navigator_guide, weight=self.guide_weight,
        train=train)
    regions.sow_ranking_scores(self, 'selection_scores', selection)
    indices, valid, boxes, part_features = regions.zoom_and_describe(
        backbone, images, anchors, selection, num=self.proposal_num, iou=self.nms_iou,
        pad_px=pad_px, part_px=part_px, train=train,
        separate_stats=self.separate_part_stats)
    return {
        **regions.concat_heads(features['pooled'], part_features, num_classes=self.num_classes,
                               cat_num=self.cat_num, dropout_rate=self.dropout_rate,
                               train=train),
        'part_scores': jnp.take_along_axis(anchor_scores, indices, axis=1),
        'boxes': boxes,
        'box_valid': valid,
        'anchor_scores': anchor_scores,
        **({} if guide_logits is None else {'guide_logits': guide_logits}),
    }

  @staticmethod
  def per_example_losses(outputs, labels):
    """Per-example loss terms [B]: 'loss' = global + rank + concat + part (+ guide, the
    guide classifier's cross-entropy, with a navigator guide)."""
    part_ce = ranking.part_cross_entropy(outputs['part_logits'], labels)   # [B, m]
    losses = {
        'loss_global': ranking.cross_entropy(outputs['global_logits'], labels),
        'loss_rank': ranking.ranking_loss(outputs['part_scores'], part_ce),
        'loss_concat': ranking.cross_entropy(outputs['logits'], labels),
        'loss_part': jnp.mean(part_ce, axis=1),
    }
    if 'guide_logits' in outputs:
      losses['loss_guide'] = ranking.cross_entropy(outputs['guide_logits'], labels)
    losses['loss'] = sum(losses.values())
    return losses
