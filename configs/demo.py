"""The built-in demo: synthetic fine-grained data, a tiny ResNet, 2 CPU cores.

  python launch/train.py --config=configs/demo.py --workdir=runs/demo

The demo data set (10 classes told apart only by a 14-px glyph of 4-px cells on a 128-px
scene, see fgjax/data/demo.py) is generated on first use; no download. resnet_tiny from
scratch at 64 px (a glyph cell is 2 px there), batch 32, 50 epochs, lr 0.1 with 3
warm-up epochs (the region models sum 3-4 losses through the backbone; without a warm-up
lr 0.1 kills their ReLUs in the first epoch), x0.3 at epochs 15, 30 and 45, weight decay
1e-4. Training leaves chance after a number of epochs that varies with the seed and the
CPU; 50 epochs leave time to converge after it. README.md has the measured accuracy per
seed and the wall time. Any method runs on it (--config=configs/demo.py:nts, or fdl,
ssanet, scrim); the parts benchmark (configs/parts.py) is where methods are compared.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  config_lib.check_method(method)
  c = config_lib.base_config()
  c.data.name = 'demo'
  c.data.image_size = 64
  c.data.resize_size = 72
  c.model.name = method
  c.model.backbone = 'resnet_tiny'
  c.train.batch_size = 32
  if method == 'scrim':  # Its contrastive loss needs several images per class: 8 x 4.
    c.data.sampler = 'class_balanced'
    c.data.classes_per_batch = 8
  c.train.epochs = 50
  c.train.base_lr = 0.1
  c.train.warmup_epochs = 3.0
  c.train.lr_decay_epochs = 15
  c.train.lr_decay_factor = 0.3
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.log_every_steps = 25
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 250
  c.eval.batch_size = 100
  return c
