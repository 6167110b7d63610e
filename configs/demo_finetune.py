"""Any method on the demo, starting from the backbone of a trained demo run.

  python launch/train.py --config=configs/demo.py --workdir=runs/demo             # resnet
  python launch/train.py --config=configs/demo_finetune.py:nts --workdir=runs/demo_nts

The second command reads the backbone of runs/demo (`--config.model.pretrained_path=DIR`
for another run); `:resnet`, `:fdl` and `:ssanet` work the same way, so every method gets
the same start and the same 10 epochs. This is the papers' protocol (they all fine-tune
ImageNet weights) at demo scale: from random weights the region branch has nothing to
bootstrap from (README.md, "Region models on the demo"). Settings:
fgjax.config_lib.demo_recipe(finetune=True).
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  return config_lib.demo_recipe(method, finetune=True)
