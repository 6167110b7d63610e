"""CUB-200-2011: the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=cub --manual_dir=/path/with/CUB_200_2011.tgz
  python launch/train.py --config=configs/cub.py:fdl --workdir=runs/cub_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1 (ResNet-50, 448, ImageNet-pretrained): resnet about 86.7 (FDL cites 84.5 for the ResNet-50 of its ref. [18]), nts 87.5, fdl 87.6
(image-level only 86.7, single-class CAM 87.3), ssanet 88.5.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.papers_recipe('cub', method)
  return c
