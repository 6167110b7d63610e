"""Stanford Cars (train 8,144 / test 8,041): the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=cars --manual_dir=/path/with/stanford_cars
  python launch/train.py --config=configs/cars.py:fdl --workdir=runs/cars_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1 (ResNet-50, 448, ImageNet-pretrained): resnet about 94.1, nts 93.9, fdl 94.1, ssanet not published.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.papers_recipe('cars', method)
  return c
