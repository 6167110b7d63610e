"""Stanford Cars (train 8,144 / test 8,041): the papers' recipe, ResNet-50 at 448.

  python launch/prepare_data.py --dataset=cars --manual_dir=/path/with/stanford_cars
  python launch/train.py --config=configs/cars.py:fdl --workdir=runs/cars_fdl \
      --config.model.pretrained_path=/path/to/resnet50-0676ba61.pth

The method follows the colon: resnet (default), nts, fdl, ssanet or scrim (P x K batches).
Published top-1 (ResNet-50, 448, ImageNet-pretrained): resnet about 94.1, nts 93.9, fdl 94.1, ssanet not published.
"""

from fgjax import config_lib


def get_config(method: str = 'resnet'):
  config_lib.check_method(method)
  c = config_lib.base_config()
  c.data.name = 'cars'
  c.model.name = method
  c.data.image_size = 448  # Random 448 crop (train) or centre crop (test) ...
  c.data.resize_size = 600  # ... of the image resized to 600 x 600.
  c.data.num_workers = 8
  c.model.backbone = 'resnet50'
  c.train.batch_size = 16
  c.train.epochs = 100
  c.train.base_lr = 0.01
  c.train.pretrained_lr_mult = 0.1  # The pretrained backbone learns at 0.001.
  c.train.lr_decay_epochs = 40
  c.train.lr_decay_factor = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.model.regions.proposal_num = 6  # Region models: NTS-Net's and FDL's m regions after NMS,
  c.model.regions.cat_num = 4  # l of them in the concatenated / hybrid feature,
  c.model.regions.nms_iou = 0.25  # NMS at IoU 0.25,
  c.model.regions.part_size = 224  # each zoomed to 224 px.
  if method == 'scrim':  # Its contrastive loss needs several images per class: 4 x 4.
    c.data.sampler = 'class_balanced'
    c.data.classes_per_batch = 4
  return c
