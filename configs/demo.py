"""The built-in demo: synthetic fine-grained data, a tiny ResNet, 2 CPU cores.

  python launch/train.py --config=configs/demo.py --workdir=runs/demo

The demo data set (10 classes told apart only by an 8-px glyph, see fgjax/data/demo.py)
is generated on first use; no download. Expected: test accuracy far above the 10 % of
chance (README.md has the measured figures). Any method runs on it from scratch
(--config=configs/demo.py:nts, or fdl, ssanet); configs/demo_finetune.py starts them
from this run's backbone instead, the papers' protocol. Settings:
fgjax.config_lib.demo_recipe.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  return config_lib.demo_recipe(method)
