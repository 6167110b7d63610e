"""SCRIM ("Spatial-aware collaborative region mining for fine-grained recognition", 2024).

`model.name='scrim'`. Only the abstract is public: everything below is our reading of it,
each choice behind a switch. Per image:

  1. backbone(image) -> stages and the pooled feature f.
  2. Dual CPL (coarse parts localization, `dual_cpl`): module 'cpl_<stage>' reads one stage
     (`cpl_stages`, default stage3 and stage4: the "hierarchical" correlations). A 1x1
     convolution gives `cpl_parts` (G) attention maps; each is a softmax over the map's
     positions, and part g's feature is the attention-weighted mean of the (gradient-
     flowing) stage features: P_k [B, G, n_k]. A linear embedding of each part,
     L2-normalised and concatenated over g, then normalised again, is the module's
     contrastive descriptor e_k [B, G * D]. With dual_cpl=False only the last stage's
     module exists.
  3. Contrastive loss (`use_contrastive`): per module, the supervised contrastive loss
     (fgjax.ops.contrastive, temperature `temperature`) over the batch's descriptors e_k:
     the same class from the same module is pulled together, other classes pushed apart.
     Batches need several images per class: data.sampler='class_balanced'. The loss sees
     the examples of one device (our reading; the P x K sampler lays each class's K
     images out on the same device when K divides the per-device batch).
  4. Dual FPL (fine parts localization, `use_fpl`, `dual_fpl`): FPL k refines CPL k. Its
     own navigator (NTS-Net's, on stop_gradient(stage4)) scores the shared anchors; the
     CPL's attention (max over its G maps, smoothed, box-mean scored on its own grid,
     standardised per image, no gradient) is added with weight `cpl_guide_weight`
     before the shared greedy NMS keeps proposal_num / K boxes (K FPLs: NTS-Net's budget
     of parts split evenly); those are zoomed (shared
     crop) and described by the same backbone. A part classifier per FPL gives their
     cross-entropies; the ranking loss (NTS-Net's) orders the navigator's own scores by
     them. With dual_fpl=False one FPL, refining the last CPL.
  5. Classifier over the fused feature [f, mean_g P_1, ..., top cat_num / K regions of
     each FPL]: 'logits', the prediction. 'global_logits' = fc(f).

Loss per example: global CE + fused CE + sum over FPLs of (ranking + mean part CE) +
`contrastive_weight` x sum over CPLs of the contrastive loss (0 for an image whose class
has no other image in the batch).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fgjax.models import regions
from fgjax.ops import contrastive
from fgjax.ops import ranking

STAGE_STRIDES = {'stage1': 4, 'stage2': 8, 'stage3': 16, 'stage4': 32}


class CoarseParts(nn.Module):
  """One CPL: G spatial-softmax part attentions over a stage map, pooled part features
  and their contrastive descriptor (module docstring, step 2).

  Everything here computes in float32 whatever the model's dtype: the attention is the
  prior that orders its FPL's anchors before NMS (attention logits rounded to bfloat16
  tie positions), and the descriptors feed the contrastive softmax. The layers are small
  (a 1x1 convolution to G channels, a Dense on G pooled vectors).
  """
  num_parts: int
  embed_width: int

  @nn.compact
  def __call__(self, fmap):
    batch, h, w, n = fmap.shape
    fmap = fmap.astype(jnp.float32)
    logits = nn.Conv(self.num_parts, (1, 1), dtype=jnp.float32, name='attention')(fmap)
    attention = jax.nn.softmax(logits.reshape(batch, h * w, -1), axis=1)
    parts = jnp.einsum('bsg,bsn->bgn', attention, fmap.reshape(batch, h * w, n))  # [B, G, n]
    embedded = nn.Dense(self.embed_width, dtype=jnp.float32, name='embed')(parts)
    embedded = embedded / jnp.maximum(jnp.linalg.norm(embedded, axis=-1, keepdims=True), 1e-12)
    descriptor = embedded.reshape(batch, -1)
    descriptor = descriptor / jnp.maximum(jnp.linalg.norm(descriptor, axis=-1, keepdims=True),
                                          1e-12)
    return attention.reshape(batch, h, w, -1), parts, descriptor


class SCRIM(regions.NavigatedModel):
  """SCRIM on a shared ResNet backbone (module docstring).

  Attributes (beyond those of regions.RegionModel and regions.NavigatedModel):
    cpl_stages: backbone stages of the CPLs, coarse to fine semantics.
    cpl_parts: G, part attentions per CPL.
    embed_width: D, width of each part's contrastive embedding.
    temperature: of the contrastive loss.
    contrastive_weight: its weight in the loss.
    cpl_guide_weight: weight of a CPL's attention prior on its FPL's scores (0: none).
    proposal_num, cat_num: regions kept after NMS and regions in the fused feature, in all;
      each of the K FPLs keeps proposal_num / K and contributes its top cat_num / K (NTS-Net's
      budget of 6 and 4 parts, split evenly).
    dual_cpl, dual_fpl, use_fpl, use_contrastive: the ablation switches.
  """
  cpl_stages: Sequence[str] = ('stage3', 'stage4')
  cpl_parts: int = 4
  embed_width: int = 128
  temperature: float = 0.1
  contrastive_weight: float = 1.0
  cpl_guide_weight: float = 2.0
  dual_cpl: bool = True
  dual_fpl: bool = True
  use_fpl: bool = True
  use_contrastive: bool = True

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False):
    """Forward pass.

    Returns:
      'logits' [B, C] (fused classifier, the prediction), 'global_logits' [B, C];
      per CPL on stage s 'cpl_{s}_attention' [B, h_s, w_s, G], 'cpl_{s}_descriptor'
      [B, G D]; per FPL 'fpl_{s}_part_logits' [B, M, C], 'fpl_{s}_part_scores' [B, M],
      'fpl_{s}_boxes' [B, M, 4], 'fpl_{s}_box_valid', 'fpl_{s}_anchor_scores' [B, A];
      'boxes' [B, K M, 4] (all
      FPLs' boxes, rank by rank, the last stage's FPL first: its first box, the other
      FPL's first, its second, ...) and 'box_valid' [B, K M] in the same order;
      with use_contrastive and labels in training, 'loss_contrast' [B].
    """
    for stage in self.cpl_stages:
      if stage not in STAGE_STRIDES:
        raise ValueError(f'Unknown cpl stage {stage!r}; valid: {sorted(STAGE_STRIDES)}.')
    stages = tuple(self.cpl_stages) if self.dual_cpl else tuple(self.cpl_stages[-1:])
    refined = (stages if self.dual_fpl else stages[-1:]) if self.use_fpl else ()
    num_fpl = len(refined)
    if num_fpl and (self.proposal_num % num_fpl or self.cat_num % num_fpl):
      raise ValueError(f'proposal_num={self.proposal_num} and cat_num={self.cat_num} must '
                       f'split evenly over the {num_fpl} FPLs.')
    per_fpl, cat_per_fpl = self.proposal_num // max(num_fpl, 1), self.cat_num // max(num_fpl, 1)
    regions.check_counts(cat_per_fpl, per_fpl, 'cat_num per FPL', 'proposal_num per FPL')
    height, width = images.shape[1:3]
    backbone = regions.shared_backbone(self, separate_part_stats=self.separate_part_stats)
    features = backbone(images, train)
    outputs, coarse = {}, []
    for stage in stages:
      attention, parts, descriptor = CoarseParts(self.cpl_parts, self.embed_width,
                                                 name=f'cpl_{stage}')(features[stage])
      outputs[f'cpl_{stage}_attention'] = attention
      outputs[f'cpl_{stage}_descriptor'] = descriptor
      coarse.append(jnp.mean(parts, axis=1))
      if self.use_contrastive and train and labels is not None:
        loss, _ = contrastive.supervised_contrastive(descriptor, labels, self.temperature)
        outputs['loss_contrast'] = outputs.get('loss_contrast', 0.0) + (
            self.contrastive_weight * loss)

    fine = []
    if self.use_fpl:
      anchors, pad_px, part_px = regions.anchors_and_sizes(
          (height, width), self.pad, self.part_size, self.reference_size, self.anchor_grid)
      for stage in refined:
        k = f'fpl_{stage}'
        scores = regions.navigate(features['stage4'], anchors.shape[0], (height, width),
                                  width=self.navigator_width, dtype=self.dtype,
                                  grid=self.anchor_grid, reference_size=self.reference_size,
                                  name=f'{k}_navigator')
        selection = scores
        if self.cpl_guide_weight:
          selection = scores + self.cpl_guide_weight * regions.attention_prior(
              jnp.max(outputs[f'cpl_{stage}_attention'], axis=-1), anchors, (height, width),
              STAGE_STRIDES[stage])
        regions.sow_ranking_scores(self, f'{k}_selection_scores', selection)
        indices, valid, boxes, part_features = regions.zoom_and_describe(
            backbone, images, anchors, selection, num=per_fpl, iou=self.nms_iou,
            pad_px=pad_px, part_px=part_px, train=train,
            separate_stats=self.separate_part_stats)
        part_features = nn.Dropout(self.dropout_rate, deterministic=not train)(part_features)
        outputs.update({
            f'{k}_part_logits': nn.Dense(self.num_classes, dtype=jnp.float32,
                                         name=f'{k}_part_fc')(part_features),
            f'{k}_part_scores': jnp.take_along_axis(scores, indices, axis=1),
            f'{k}_boxes': boxes, f'{k}_box_valid': valid, f'{k}_anchor_scores': scores})
        fine.append(part_features[:, :cat_per_fpl].reshape(images.shape[0], -1))
      # Rank-major over the FPLs: the first cat_num boxes are those the fused feature reads.
      # The last stage's FPL leads, the one a single-FPL model keeps, so that the top box
      # comes from the same module with and without dual_fpl.
      outputs['boxes'] = jnp.stack([outputs[f'fpl_{s}_boxes'] for s in refined[::-1]], axis=2
                                   ).reshape(images.shape[0], -1, 4)
      outputs['box_valid'] = jnp.stack([outputs[f'fpl_{s}_box_valid'] for s in refined[::-1]],
                                       axis=2).reshape(images.shape[0], -1)

    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(features['pooled'])
    fused = jnp.concatenate([pooled, *coarse, *fine], axis=1)
    outputs['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32, name='fused_fc')(fused)
    outputs['global_logits'] = nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(pooled)
    return outputs

  @staticmethod
  def per_example_losses(outputs, labels):
    """Per-example terms [B]: 'loss' = global + fused + per FPL (rank + part) + contrast."""
    losses = {'loss_global': ranking.cross_entropy(outputs['global_logits'], labels),
              'loss_fused': ranking.cross_entropy(outputs['logits'], labels)}
    for key in sorted(outputs):
      if key.endswith('_part_logits'):
        fpl = key[:-len('_part_logits')]
        part_ce = ranking.part_cross_entropy(outputs[key], labels)
        losses[f'loss_{fpl}_rank'] = ranking.ranking_loss(outputs[f'{fpl}_part_scores'],
                                                          part_ce)
        losses[f'loss_{fpl}_part'] = jnp.mean(part_ce, axis=1)
    if 'loss_contrast' in outputs:
      losses['loss_contrast'] = outputs['loss_contrast']
    losses['loss'] = sum(losses.values())
    return losses
