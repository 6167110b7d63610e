"""Stanford Cars, the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=cars --manual_dir=/path/with/stanford_cars
  python launch/train.py --config=configs/cars.py --workdir=runs/cars_resnet \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

Train 8,144 / test 8,041. Published top-1: plain ResNet-50 about 94.1;
NTS-Net 93.9; FDL 94.1.
"""

from fgjax import config_lib


def get_config():
  c = config_lib.papers_recipe('cars')
  return c
