"""CUB-200-2011, the papers' recipe (NTS-Net / FDL), ResNet-50 at 448.

  python launch/prepare_data.py --dataset=cub --manual_dir=/path/with/CUB_200_2011.tgz
  python launch/train.py --config=configs/cub.py --workdir=runs/cub_resnet \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

Published top-1 (ResNet-50, 448): plain ResNet-50 about 86.7 (FDL's table
gives 84.5 for [18]); NTS-Net 87.5; FDL 87.6; SSANet 88.5.
Pick the method with --config.model.name=resnet|nts|fdl|ssanet.
"""

from fgjax import config_lib


def get_config():
  c = config_lib.papers_recipe('cub')
  return c
