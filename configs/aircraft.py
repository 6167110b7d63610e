"""FGVC-Aircraft 2013b, variant level: the papers' recipe, ResNet-50 at 448.

Trains on trainval (6,667 images), tests on test (3,333).

  python launch/prepare_data.py --dataset=aircraft --manual_dir=/path/with/fgvc-aircraft-2013b.tar.gz
  python launch/train.py --config=configs/aircraft.py:fdl --workdir=runs/aircraft_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1 (ResNet-50, 448, ImageNet-pretrained): resnet about 93.3, nts 91.4,
fdl 92.1, ssanet not published.
Family or manufacturer level: --config.data.builder_config=family (prepare with
--builder_config=family too).
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  c = config_lib.papers_recipe('aircraft', method)
  c.data.builder_config = 'variant'
  c.data.train_split = 'trainval'
  return c
