"""FGVC-Aircraft 2013b (variant level), the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=aircraft --manual_dir=/path/with/fgvc-aircraft-2013b.tar.gz
  python launch/train.py --config=configs/aircraft.py --workdir=runs/aircraft_resnet \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

Trains on trainval (6,667), tests on test (3,333). Family or manufacturer
level: --config.data.builder_config=family (prepare with --builder_config too).
Published top-1: plain ResNet-50 about 93.3; NTS-Net 91.4; FDL 92.1.
"""

from fgjax import config_lib


def get_config():
  c = config_lib.papers_recipe('aircraft')
  c.data.builder_config = 'variant'
  c.data.train_split = 'trainval'
  return c
