"""The parts benchmark: every method fine-tuned from the same pretrained backbone.

  python launch/train.py --config=configs/parts_pretrain.py --workdir=runs/parts_pretrain
  python launch/compare.py --config=configs/parts.py --methods=resnet,nts,fdl,ssanet \
      --seeds=0,1,2 --workdir=runs/compare

or one method: `python launch/train.py --config=configs/parts.py:fdl --workdir=runs/parts_fdl`.
The data (fgjax/data/parts.py: 10 classes told apart by an 11-px glyph on a ~500 x 375
scene, 2,000 train / 1,000 test) is generated on first use. The papers' protocol at
benchmark scale: 224 px input from a 256 resize (the papers: 448 from 600), parts of
112 px from a 112-px padded image (224 at 448, scaled), the backbone of
runs/parts_pretrain (the ImageNet analogue), SGD momentum 0.9, lr 0.01 with the
pretrained backbone at 0.1x, x0.1 after 7 of 10 epochs. FDL scores one region per
attention-map cell, as its paper describes ("each pixel in M corresponds to a region"):
96 px at 448, i.e. 48 px at 224, centred on the cell's receptive field. NTS-Net and SSANet
train and are evaluated with the navigator guide (model.regions.navigator_guide;
fgjax.models.regions; our reading). README.md has the results.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  config_lib.check_method(method)
  c = config_lib.base_config()
  c.data.name = 'parts'
  c.data.image_size = 224
  c.data.resize_size = 256
  c.model.name = method
  c.model.backbone = 'resnet_tiny'
  c.model.pretrained_path = 'runs/parts_pretrain'
  c.model.fdl.region_size = 96  # One region per map cell (at 448; 48 px at 224).
  # NTS-Net's navigator (and SSANet's, the same) learns nothing here without the guide;
  # kept at test ('always'): the navigator alone ('train') varies with the seed (README).
  c.model.regions.navigator_guide = 'always'  # nts and ssanet (fdl has no navigator).
  c.train.batch_size = 32
  if method == 'scrim':  # Its contrastive loss needs several images per class: 8 x 4.
    c.data.sampler = 'class_balanced'
    c.data.classes_per_batch = 8
  c.train.epochs = 10
  c.train.base_lr = 0.01
  c.train.pretrained_lr_mult = 0.1
  c.train.lr_decay_epochs = 7
  c.train.lr_decay_factor = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.log_every_steps = 25
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 250
  c.eval.batch_size = 96
  return c
