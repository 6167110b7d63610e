"""NABirds (555 classes, train 23,929 / test 24,633): the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=nabirds --manual_dir=/path/with/nabirds.tar.gz
  python launch/train.py --config=configs/nabirds.py:fdl --workdir=runs/nabirds_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1: we know of no number for these methods on NABirds (ResNet-50, 448), so
none to match; the recipe is the one they use on CUB, unchanged.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.papers_recipe('nabirds', method)
  return c
