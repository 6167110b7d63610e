"""The built-in demo: synthetic fine-grained data, a tiny ResNet, 2 CPU cores.

  python launch/train.py --config=configs/demo.py --workdir=runs/demo

The demo data set (10 classes told apart only by an 8-px glyph, see fgjax/data/demo.py)
is generated on first use; no download. 50 epochs, about 3 minutes on 2 CPU cores, data
generation and compilation included. Expected test accuracy: 86-96 % (seeds 0, 1, 2 with
--config.seed=S: 86.0, 95.6, 94.2 %; chance is 10 %). Any method runs on it from scratch
(--config=configs/demo.py:nts, or fdl, ssanet); configs/demo_finetune.py starts them
from this run's backbone instead, the papers' protocol. Settings:
fgjax.config_lib.demo_recipe.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  return config_lib.demo_recipe(method)
