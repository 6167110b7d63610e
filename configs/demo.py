"""The built-in demo: synthetic fine-grained data, a tiny ResNet, 2 CPU cores.

  python launch/train.py --config=configs/demo.py --workdir=/tmp/fgjax_demo

The demo data set (10 classes told apart only by a 9-px glyph, see
fgjax/data/demo.py) is generated on first use; no download. Expected: test
accuracy far above the 10 % of chance (see README.md for measured figures).
Any method runs on it: --config=configs/demo.py:nts (or fdl, ssanet).
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.base_config()
  c.data.name = 'demo'
  c.data.data_dir = '~/tensorflow_datasets'
  c.data.image_size = 64
  c.data.resize_size = 72
  c.model.name = method
  c.model.backbone = 'resnet_tiny'
  c.train.batch_size = 32
  c.train.epochs = 20
  c.train.base_lr = 0.1
  # The region models sum 3-4 losses through the backbone; without a warm-up lr 0.1
  # kills their ReLUs in the first epoch (all logits equal). Same for every method.
  c.train.warmup_epochs = 2.0
  c.train.lr_decay_epochs = 14
  c.train.weight_decay = 1e-4
  c.train.log_every_steps = 25
  c.train.eval_every_epochs = 5
  c.train.checkpoint_every_steps = 250
  c.eval.batch_size = 100
  return c
