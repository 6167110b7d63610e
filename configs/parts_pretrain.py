"""The parts benchmark's ImageNet analogue: a backbone trained on 20 OTHER detail classes.

  python launch/train.py --config=configs/parts_pretrain.py --workdir=runs/parts_pretrain

resnet_tiny from scratch on the 'pretrain' builder config of fgjax_parts
(fgjax/data/parts.py): 4,000 scenes whose glyphs use patterns that are neither a class
nor a decoy of the benchmark, at cell sizes of 6 to 24 px. Like ImageNet models, which
are trained at 224 and fine-tuned at 448, it trains at half the benchmark's input: 112 px
from a 128 resize, where its glyph cells are 1.5 to 6 px, the sizes the benchmark's
detail has at 224 before (2 px) and after (about 7 px) a region model zooms in. Every
method of configs/parts.py starts from this run's backbone (`model.pretrained_path`);
its classifier is thrown away. README.md has the measured accuracy and wall time.
"""

from fgjax import config_lib


def get_config():
  c = config_lib.base_config()
  c.data.name = 'parts'
  c.data.builder_config = 'pretrain'
  c.data.image_size = 112
  c.data.resize_size = 128
  c.model.name = 'resnet'
  c.model.backbone = 'resnet_tiny'
  c.train.batch_size = 32
  c.train.epochs = 30
  c.train.base_lr = 0.1
  c.train.warmup_epochs = 2.0
  c.train.lr_decay_epochs = 20
  c.train.lr_decay_factor = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.log_every_steps = 25
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 500
  c.eval.batch_size = 100
  return c
