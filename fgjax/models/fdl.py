"""FDL: "Learning to Focus and Discriminate for Fine-Grained Classification" (Feng, Fu,
Zhao; ICIP 2019). `model.name='fdl'`.

  1. backbone(image) -> Z [h, w, n], F^I = GAP(Z); image logits S = W F^I + b (Eq. 1).
  2. attention M = max_k sum_i W_ki Z_i (Eq. 2), Gaussian-smoothed (fgjax.ops.cam_attention).
  3. candidate regions scored on M, greedy NMS at IoU 0.25, top m = 6.
  4. each region is cut from the zero-padded image, zoomed to 224, gradient-stopped, and
     passed through the SAME backbone -> F^R_1..F^R_m; one region classifier for all.
  5. hybrid feature [F^I, F^R_1..F^R_l], l = 4 -> hybrid classifier, the prediction.

Loss: image-level CE + region-level CE (mean over the m regions) + hybrid CE, summed with
equal weights. The selection is discrete (NMS) and the crops are gradient-stopped, so the
attention influences training only through which regions are chosen, as in the paper.

Our readings, each with its switch:
- Region candidates (`region_size=None`): NTS-Net's anchors (1614 at 448; `anchor_grid` as in
  fgjax.models.nts), each scored by the mean of the smoothed M over the box, M read as a
  function of input pixels (fgjax.ops.cam_attention.box_mean_scores; METHOD_NOTES). The
  paper's text says instead that "each pixel in M corresponds to a region" and gives the
  localized regions as 160 x 160 at 448: `region_size=160` uses one square box of that side
  (scaled with the input) per cell of M (the stride-32 grid), scored by M at that cell.
- Where M lies on the input (`map_alignment`): 'receptive_field' (default) centres cell u
  on input pixel 32u, where the backbone's stage4 cell u is centred (measured:
  tests/test_registration.py); the outer cells extend to the image border. The per-cell
  boxes are centred there too (their integer corners put the centre at 32u, half a pixel
  off). 'top_left' is the original rule: cell u covers [32u, 32u+32) and the per-cell boxes
  are centred at 32u + 16, half a cell down-right of what the backbone saw.
- Boxes reaching into the padding (`padding_score`, box means only): 'min' (default) counts
  the part outside the image as the least attended value, the image's min M, so a box made
  mostly of padding no longer scores like the cells it clips; 'inside' (original) averages
  over box ∩ image only. Per-cell boxes are scored by their cell whatever their padding.
- Ties: candidates are ordered by decreasing area inside the image (then anchor order), and
  NMS visits equal scores in that order, so a tie goes to the box with more image in it.
- Smoothing: sigma = 1 map cell, kernel 2*ceil(3 sigma)+1 = 7, reflected borders
  (`smooth_sigma`, `smooth_kernel_size`; `smooth_sigma=0` switches it off). The paper gives
  no numbers.
- The image classifier has a bias (`classifier_bias=False` for Eq. 1 to the letter); the
  attention never uses it (Eq. 2 has none).
- Region-level loss: the mean over the m regions of their CE (the paper says only "softmax
  losses"; NTS-Net averages its part loss the same way).
- Sizes: as NTS-Net (fgjax.models.nts): pixel quantities at 448 scaled by min(H, W)/448.
- Fewer than m boxes after NMS (only at tiny inputs): fgjax.ops.nms's fill rule, flagged in
  'box_valid'.

Ablations of the paper: `image_level_only=True` trains and predicts with the image
classifier alone (no attention, no regions: a plain backbone + GAP + linear);
`cam_mode='single'` uses the map of the ground-truth class in training and of the predicted
class at evaluation instead of the max over classes.

BatchNorm: as in fgjax.models.nts, the backbone runs on the images and then on the regions,
each call normalising with its own batch statistics in training; the regions keep their own
running averages unless `separate_part_stats=False` (fgjax.models.regions).
"""

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fgjax.models import regions
from fgjax.ops import anchors as anchors_lib
from fgjax.ops import cam_attention
from fgjax.ops import ranking


def cell_region_boxes(image_hw, region_size: int, pad: int = 224, reference_size: int = 448,
                      map_alignment: str = 'receptive_field'):
  """The `region_size` candidates: one square box per stride-32 map cell, y-major.

  Args:
    image_hw: (H, W) of the input.
    region_size: box side at `reference_size` (the paper's 160 at 448).
    pad: padding at `reference_size`.
    reference_size: 448.
    map_alignment: 'receptive_field' centres cell u's box on input pixel 32u (continuous
      32u + 0.5 before NTS-Net's integer flooring); 'top_left' at 32u + 16 (original).

  Returns:
    boxes float32 [ceil(H/32) * ceil(W/32), 4], integral, input pixels; the padding in pixels.
  """
  if map_alignment not in cam_attention.ALIGNMENTS:
    raise ValueError(f'Unknown map_alignment {map_alignment!r}; valid: '
                     f'{list(cam_attention.ALIGNMENTS)}.')
  offset = (cam_attention.RECEPTIVE_FIELD_CENTRE if map_alignment == 'receptive_field'
            else None)
  level = anchors_lib.AnchorLevel(stride=regions.FEATURE_STRIDE, size=region_size,
                                  scales=(1.0,), aspect_ratios=(1.0,), centre_offset=offset)
  return anchors_lib.region_anchors(image_hw, pad, levels=(level,),
                                    reference_size=reference_size)


class FDL(regions.RegionModel):
  """FDL with a shared ResNet backbone.

  Attributes (beyond those of regions.RegionModel, where proposal_num is m and cat_num l;
  anchor_grid is used with region_size=None):
    image_level_only: ablation: the image classifier alone, no regions.
    cam_mode: 'max' (FDL) or 'single' (ground truth in training, prediction at test).
    smooth_sigma: Gaussian sigma in map cells; 0 disables smoothing.
    smooth_kernel_size: odd kernel side; None for 2*ceil(3 sigma)+1.
    region_size: None for NTS-Net's anchors scored by box means; a side at
      `reference_size` (the paper's 160) for one square region per map cell.
    classifier_bias: whether the image classifier has a bias.
    map_alignment: 'receptive_field' or 'top_left' (original): where M lies on the input.
    padding_score: 'min' or 'inside' (original): what box parts outside the image count as.
  """
  image_level_only: bool = False
  cam_mode: str = 'max'
  smooth_sigma: float = 1.0
  smooth_kernel_size: int | None = None
  region_size: int | None = None
  classifier_bias: bool = True
  map_alignment: str = 'receptive_field'
  padding_score: str = 'min'

  def _candidates(self, attention, image_hw):
    """Candidate boxes [A, 4] (input pixels) in tie-break order, their scores [B, A] and
    the padding."""
    grid = [-(-n // regions.FEATURE_STRIDE) for n in image_hw]
    if list(attention.shape[1:]) != grid:
      raise ValueError(f'Attention map {attention.shape[1:]} does not match the stride-32 '
                       f'grid of a {image_hw} input.')
    if self.region_size is None:
      boxes, pad_px = anchors_lib.region_anchors(image_hw, self.pad,
                                                 reference_size=self.reference_size,
                                                 grid=self.anchor_grid)
      # 'top_left' keeps the original H / h stride; the backbone's is 32 at any size.
      stride = regions.FEATURE_STRIDE if self.map_alignment == 'receptive_field' else None
      scores = cam_attention.box_mean_scores(attention, jnp.asarray(boxes), image_hw,
                                             alignment=self.map_alignment,
                                             padding=self.padding_score, stride=stride)
    else:
      boxes, pad_px = cell_region_boxes(image_hw, self.region_size, self.pad,
                                        self.reference_size, self.map_alignment)
      scores = attention.reshape(attention.shape[0], -1)
    order = cam_attention.tie_break_order(boxes, image_hw)
    return boxes[order], scores[:, order], pad_px

  @nn.compact
  def __call__(self, images, labels=None, train: bool = False):
    """Forward pass.

    Args:
      images: [B, H, W, 3] normalised float32.
      labels: int [B]; needed in training when cam_mode='single'.
      train: BatchNorm batch statistics when True.

    Returns:
      'logits' [B, C] (hybrid classifier; the image classifier when image_level_only),
      'image_logits' [B, C]; unless image_level_only also 'region_logits' [B, m, C],
      'boxes' [B, m, 4] (y0, x0, y1, x1 in input pixels), 'box_valid' [B, m] and
      'attention' [B, h, w] (smoothed M).
    """
    for name, valid in (('cam_mode', ('max', 'single')),
                        ('map_alignment', cam_attention.ALIGNMENTS),
                        ('padding_score', cam_attention.PADDING_SCORES)):
      if getattr(self, name) not in valid:
        raise ValueError(f'Unknown {name} {getattr(self, name)!r}; valid: {list(valid)}.')
    regions.check_counts(self.cat_num, self.proposal_num, 'cat_num', 'proposal_num')
    batch, height, width = images.shape[:3]
    backbone = regions.shared_backbone(
        self, separate_part_stats=self.separate_part_stats and not self.image_level_only)
    features = backbone(images, train)
    image_fc = nn.Dense(self.num_classes, use_bias=self.classifier_bias, dtype=jnp.float32,
                        name='image_fc')
    image_logits = image_fc(features['pooled'])
    if self.image_level_only:
      return {'logits': image_logits, 'image_logits': image_logits}

    class_index = None
    if self.cam_mode == 'single':
      if train and labels is None:
        raise ValueError("cam_mode='single' needs labels in training.")
      class_index = labels if train else jnp.argmax(image_logits, axis=-1)
    kernel = image_fc.variables['params']['kernel']
    attention = cam_attention.attention_map(lax.stop_gradient(features['stage4']),
                                            lax.stop_gradient(kernel), self.cam_mode,
                                            class_index)
    attention = cam_attention.gaussian_smooth(attention, self.smooth_sigma,
                                              self.smooth_kernel_size)

    candidates, scores, pad_px = self._candidates(attention, (height, width))
    part_px = anchors_lib.scale_to_input(self.part_size, (height, width), self.reference_size)
    _, valid, boxes, region_features = regions.zoom_and_describe(
        backbone, images, candidates, scores, num=self.proposal_num, iou=self.nms_iou,
        pad_px=pad_px, part_px=part_px, train=train,
        separate_stats=self.separate_part_stats)

    hybrid = jnp.concatenate(
        [features['pooled'], region_features[:, :self.cat_num].reshape(batch, -1)],
        axis=1)
    dense = lambda name: nn.Dense(self.num_classes, dtype=jnp.float32, name=name)
    return {
        'logits': dense('hybrid_fc')(hybrid),
        'image_logits': image_logits,
        'region_logits': dense('region_fc')(region_features),
        'boxes': boxes,
        'box_valid': valid,
        'attention': attention,
    }

  @staticmethod
  def per_example_losses(outputs, labels):
    """Per-example loss terms [B]: 'loss' = image + region + hybrid (image only in the
    image_level_only ablation)."""
    losses = {'loss_image': ranking.cross_entropy(outputs['image_logits'], labels)}
    if 'region_logits' in outputs:
      region_ce = ranking.part_cross_entropy(outputs['region_logits'], labels)
      losses['loss_region'] = jnp.mean(region_ce, axis=1)
      losses['loss_hybrid'] = ranking.cross_entropy(outputs['logits'], labels)
    losses['loss'] = sum(losses.values())
    return losses
