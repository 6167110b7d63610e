"""The step every region model shares: keep the best boxes, zoom in, describe them.

NTS-Net, FDL and SSANet differ in how they score candidate boxes; from the scores on
they do the same thing, written once here. NTS-Net and SSANet also share their three
classifiers (`concat_heads`).

BatchNorm statistics of images and parts (`separate_part_stats`, our reading; default
True): the same backbone sees whole images and zoomed parts in one step. In training
each pass normalises with its own batch statistics. The reference implementations also
move ONE set of running averages twice per step (images, then parts), so at test time
whole images are normalised with averages dominated by the parts, whose statistics
differ (zoomed crops, a smaller input). With
separate_part_stats=True the backbone keeps one set of running averages for images
and one for parts (resnet.BatchNorm domains); convolutions and BatchNorm scale and
bias stay shared, and both sets start from the pretrained averages.
False reproduces the references.

Navigator guide (`navigator_guide`, our reading, not in the papers; default 'none'):
NTS-Net's navigator learns only from its Teacher, the part classifier, and the Teacher
learns only from the parts the navigator picks. On CUB an ImageNet backbone makes almost
every bird part informative from the first step; where one small detail decides the class,
the parts rarely hold it, the part classifier stays at chance, the ranking targets are
noise and the navigator settles on boxes away from the detail (README, parts benchmark).
The guide breaks that loop with a class activation prior, FDL's attention: a classifier
`guide_fc` on the gradient-stopped stage4 map, trained by its own cross-entropy
('guide_logits'; it changes neither the backbone nor the navigator), its maps (bias
included) max-pooled over classes, smoothed (sigma 1 cell), scored per anchor by box mean
(receptive-field registration, padding counted as the least attended value) and
standardised over the anchors of each image. NMS then orders anchors by navigator score +
`guide_weight` x prior: 'train' in training only, so the parts hold the detail early, the
Teacher learns, and the navigator learns to rank from informative targets while
evaluation uses the navigator alone; 'always' at evaluation too. The ranking loss and
SSANet's alignment constraint still read the navigator's own scores.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fgjax.models import navigator as navigator_lib
from fgjax.models import resnet
from fgjax.ops import anchors as anchors_lib
from fgjax.ops import cam_attention
from fgjax.ops import crop
from fgjax.ops import nms


class RegionModel(nn.Module):
  """The fields every region model has (nts, fdl, ssanet, scrim; config.model.regions
  gives them all but the first four).

  Attributes:
    num_classes: C.
    backbone: a name for `fgjax.models.resnet.get_backbone`.
    dtype: computation dtype of the backbone and the model's layers; logits are float32.
    bn_axis_name: BatchNorm's cross-device axis, or None.
    pointwise_conv: 'conv' or 'dot', how the backbone's 1x1 convolutions run
      (fgjax.models.resnet).
    proposal_num: regions kept per image after NMS (NTS-Net's PROPOSAL_NUM, FDL's m: 6).
    cat_num: the top-scoring regions in the concatenated / hybrid feature (CAT_NUM, l: 4).
    nms_iou: NMS suppression threshold (0.25).
    part_size: side of a zoomed region at `reference_size` (224).
    pad: zero padding at `reference_size` (224).
    reference_size: input size at which the pixel quantities are given (448).
    separate_part_stats: own BatchNorm running averages for the parts (module docstring).
    anchor_grid: 'feature' or 'scaled' (fgjax.ops.anchors; the same at 448).
  """
  num_classes: int
  backbone: str = 'resnet50'
  dtype: Any = jnp.float32
  bn_axis_name: Any = None
  pointwise_conv: str = 'conv'
  proposal_num: int = 6
  cat_num: int = 4
  nms_iou: float = 0.25
  part_size: int = 224
  pad: int = 224
  reference_size: int = 448
  separate_part_stats: bool = True
  anchor_grid: str = 'feature'


class NavigatedModel(RegionModel):
  """A region model whose proposals come from NTS-Net's navigator (nts, ssanet, scrim).

  Attributes:
    dropout_rate: dropout on pooled features in training only (0.5, NTS-Net's).
    navigator_width: channels of the navigator's convolutions (128).
  """
  dropout_rate: float = 0.5
  navigator_width: int = 128


def shared_backbone(model: 'RegionModel', *, separate_part_stats: bool):
  """The backbone a region model runs on images and parts (submodule 'backbone'), as the
  model's fields describe it (backbone, dtype, bn_axis_name, pointwise_conv)."""
  return resnet.get_backbone(model.backbone, dtype=model.dtype, bn_axis_name=model.bn_axis_name,
                             bn_domains=2 if separate_part_stats else 1,
                             pointwise_conv=model.pointwise_conv, name='backbone')


def check_counts(kept: int, total: int, kept_name: str, total_name: str) -> None:
  """Raises unless 0 < kept <= total (e.g. cat_num of proposal_num regions)."""
  if not 0 < kept <= total:
    raise ValueError(f'Need 0 < {kept_name} <= {total_name}, got {kept}, {total}.')


def navigate(stage4, num_anchors: int, image_hw, *, width: int, dtype, grid: str,
             reference_size: int, name: str = 'navigator'):
  """NTS-Net's navigator (submodule `name` of the calling model): scores [B, A].

  `grid` is the anchor grid ('scaled' or 'feature', fgjax.ops.anchors).
  """
  first = None
  if grid == 'scaled':
    first = anchors_lib.grid_sizes(image_hw, grid=grid, reference_size=reference_size)[0]
  scores = navigator_lib.Navigator(width=width, dtype=dtype, grid=first, name=name)(stage4)
  if scores.shape[1] != num_anchors:
    raise ValueError(f'{scores.shape[1]} navigator scores for {num_anchors} anchors at input '
                     f'{image_hw[0]}x{image_hw[1]}: the backbone stride is not 32.')
  return scores


# Flax collection of the scores NMS orders each model's candidates by; filled only when a
# caller asks for it (`apply(..., mutable=[RANKING_SCORES])`, train_step.predict_step's maps).
RANKING_SCORES = 'ranking_scores'


def sow_ranking_scores(module: nn.Module, name: str, scores) -> None:
  """Keeps `scores` [B, A] under `name` in RANKING_SCORES when that collection is mutable
  (never at init, so initialised variables hold only params and batch_stats)."""
  if not module.is_initializing():
    module.sow(RANKING_SCORES, name, scores)


GUIDES = ('none', 'train', 'always')
GUIDE_SMOOTH_SIGMA = 1.0  # FDL's default smoothing, in map cells.
FEATURE_STRIDE = 32  # Output stride of the backbone's stage4: input pixels per map cell.


def guide_anchor_scores(stage4, anchor_scores, anchors, image_hw, *, num_classes: int,
                        guide: str, weight: float, train: bool):
  """The scores NMS orders anchors by, and the guide's logits (module docstring).

  Args:
    stage4: [B, h, w, n] backbone map (gradient stopped here).
    anchor_scores: navigator scores [B, A].
    anchors: [A, 4] boxes in input pixels.
    image_hw: (H, W) of the input.
    num_classes: C of the guide classifier (submodule 'guide_fc' of the caller).
    guide: 'none', 'train' or 'always'.
    weight: multiplier of the standardised prior.
    train: training mode.

  Returns:
    (selection scores [B, A], guide logits [B, C] or None when guide='none').
  """
  if guide not in GUIDES:
    raise ValueError(f'Unknown navigator_guide {guide!r}; valid: {list(GUIDES)}.')
  if guide == 'none':
    return anchor_scores, None
  maps = nn.Dense(num_classes, dtype=jnp.float32, name='guide_fc')(
      lax.stop_gradient(stage4).astype(jnp.float32))                    # [B, h, w, C]
  logits = jnp.mean(maps, axis=(1, 2))
  if guide == 'train' and not train:  # Evaluation by the navigator alone.
    return anchor_scores, logits
  prior = attention_prior(jnp.max(maps, axis=-1), anchors, image_hw, FEATURE_STRIDE)
  return anchor_scores + weight * prior, logits


def attention_prior(attention, anchors, image_hw, stride: int):
  """A gradient-stopped prior [B, A] on anchors from an attention map [B, h, w] of the
  given stride: smoothed (sigma 1 cell), box-mean scored (receptive-field registration,
  padding counted as the least attended value), standardised over each image's anchors."""
  attention = cam_attention.gaussian_smooth(attention, GUIDE_SMOOTH_SIGMA)
  prior = cam_attention.box_mean_scores(attention, jnp.asarray(anchors), image_hw,
                                        alignment='receptive_field', padding='min',
                                        stride=stride)
  prior = (prior - jnp.mean(prior, axis=1, keepdims=True)) / (
      jnp.std(prior, axis=1, keepdims=True) + 1e-6)
  return lax.stop_gradient(prior)


def anchors_and_sizes(image_hw, pad: int, part_size: int, reference_size: int, grid: str):
  """NTS-Net's anchors [A, 4] for this input, and the padding and part side in pixels.

  `pad` and `part_size` are given at `reference_size` (448) and scaled to the input
  (fgjax.ops.anchors.scale_to_input); `grid` is 'scaled' or 'feature' (fgjax.ops.anchors).
  """
  anchors, pad_px = anchors_lib.region_anchors(image_hw, pad, reference_size=reference_size,
                                               grid=grid)
  return anchors, pad_px, anchors_lib.scale_to_input(part_size, image_hw, reference_size)


def zoom_and_describe(backbone, images, boxes, scores, *, num: int, iou: float, pad_px: int,
                      part_px: int, train: bool, separate_stats: bool):
  """Greedy NMS keeps `num` boxes per image; each is zoomed in and fed to `backbone`.

  Args:
    backbone: the model's shared ResNet module (called on the parts).
    images: [B, H, W, 3] normalised images.
    boxes: [A, 4] candidate boxes (y0, x0, y1, x1) in input pixels.
    scores: [B, A] candidate scores.
    num: boxes kept per image (m).
    iou: NMS threshold.
    pad_px: zero padding around each image before cropping (pixels).
    part_px: side of a zoomed part.
    train: BatchNorm in training mode for the parts.
    separate_stats: the parts use the backbone's second set of BatchNorm running
      statistics (domain 1; the backbone must have bn_domains=2) instead of the
      images' (module docstring).

  Returns:
    indices [B, m] into the candidates, valid [B, m] (False where NMS ran out of
    boxes), the selected boxes [B, m, 4], and their pooled features [B, m, D].
  """
  boxes = jnp.asarray(boxes)
  indices, valid = nms.batched_greedy_nms(boxes, scores, num, iou)
  selected = boxes[indices]                                               # [B, m, 4]
  parts = crop.zoom_into_regions(images, selected, pad_px, part_px)       # [B*m, S, S, 3]
  features = backbone(parts, train, domain=1 if separate_stats else 0)['pooled']
  return indices, valid, selected, features.reshape(images.shape[0], num, -1)


def concat_heads(global_feature, part_features, *, num_classes: int, cat_num: int,
                 dropout_rate: float, train: bool) -> dict:
  """NTS-Net's three classifiers (submodules 'concat_fc', 'fc', 'part_fc' of the caller).

  Dropout (`dropout_rate`, training only) on the global feature [B, D] and on the part
  features [B, m, D]; the concatenated classifier reads [top `cat_num` parts, global],
  the layout of the reference's `concat_net` weights. Returns 'logits' [B, C] (the
  concatenated classifier: the prediction), 'global_logits' [B, C], 'part_logits'
  [B, m, C], all float32.
  """
  dropout = nn.Dropout(dropout_rate, deterministic=not train)
  global_feature = dropout(global_feature)
  part_features = dropout(part_features)
  dense = lambda name: nn.Dense(num_classes, dtype=jnp.float32, name=name)
  concat = jnp.concatenate(
      [part_features[:, :cat_num].reshape(part_features.shape[0], -1), global_feature], axis=1)
  return {
      'logits': dense('concat_fc')(concat),
      'global_logits': dense('fc')(global_feature),
      'part_logits': dense('part_fc')(part_features),
  }
