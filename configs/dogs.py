"""Stanford Dogs (120 breeds, train 12,000 / test 8,580): the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=dogs --manual_dir=/path/with/stanford_dogs
  python launch/train.py --config=configs/dogs.py:fdl --workdir=runs/dogs_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1: we know of no number for these methods on Stanford Dogs (ResNet-50,
448), so none to match; the recipe is the one they use on CUB, unchanged. The images come
from ImageNet-1k's training set: an ImageNet-pretrained backbone has seen the test images,
which flatters every method alike.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.papers_recipe('dogs', method)
  return c
