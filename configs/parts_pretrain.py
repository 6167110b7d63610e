"""The parts benchmark's ImageNet analogue: a backbone trained on 20 OTHER detail classes.

  python launch/train.py --config=configs/parts_pretrain.py --workdir=runs/parts_pretrain

resnet_tiny from scratch at 224 px on the 'pretrain' builder config of fgjax_parts
(fgjax/data/parts.py): 4,000 scenes whose glyphs use patterns that are neither a class
nor a decoy of the benchmark, at cell sizes of 4 to 12 px. Every method of
configs/parts.py starts from this run's backbone (`model.pretrained_path`), as the
papers start from ImageNet weights; its classifier is thrown away. README.md has the
measured accuracy and wall time.
"""

from fgjax import config_lib


def get_config():
  c = config_lib.base_config()
  c.data.name = 'parts'
  c.data.builder_config = 'pretrain'
  c.data.image_size = 224
  c.data.resize_size = 256
  c.model.name = 'resnet'
  c.model.backbone = 'resnet_tiny'
  c.train.batch_size = 32
  c.train.epochs = 16
  c.train.base_lr = 0.1
  c.train.warmup_epochs = 2.0
  c.train.lr_decay_epochs = 11
  c.train.lr_decay_factor = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.log_every_steps = 25
  c.train.eval_every_epochs = 4
  c.train.checkpoint_every_steps = 250
  c.eval.batch_size = 96
  return c
