"""What every fgjax data set stores, and the checks the builders share.

Every builder (CUB, FGVC-Aircraft, Stanford Cars and the built-in demo) writes
the same features, so that one grain pipeline reads them all:

  image:       the encoded image file exactly as it was in the archive (never
               re-encoded); read back as bytes with `SkipDecoding`.
  label:       class index, 0-based.
  label_name:  class name.
  bbox:        object box (ymin, xmin, ymax, xmax), normalised to the image as
               the pipeline sees it, i.e. after `crop_bottom` rows are removed.
  file_name:   path of the image inside the official layout.
  image_id:    the official id (1-based where the data set has one).
  crop_bottom: rows to cut from the bottom at decode time (FGVC-Aircraft's
               20-pixel copyright banner; 0 elsewhere).
"""

import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

BAD_IMAGE_POLICIES = ('error', 'skip')


class BadImageError(ValueError):
  """An image file that cannot be decoded."""


def features_dict(class_names=None) -> tfds.features.FeaturesDict:
  """The features every fgjax builder writes (see the module docstring).

  Args:
    class_names: the class names in label order, or None when they are only
      known once the official files are read: the builder then sets
      `features['label'].names` before writing, and a prepared data set
      restores them from its folder.
  """
  label = (tfds.features.ClassLabel() if class_names is None
           else tfds.features.ClassLabel(names=list(class_names)))
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(),
      'label': label,
      'label_name': tfds.features.Text(),
      'bbox': tfds.features.BBoxFeature(),
      'file_name': tfds.features.Text(),
      'image_id': tfds.features.Scalar(dtype=np.int64),
      'crop_bottom': tfds.features.Scalar(dtype=np.int32),
  })


def check_image(data: bytes, path: str) -> tuple[int, int]:
  """Fully decodes `data` and returns (width, height); BadImageError otherwise."""
  try:
    with PIL.Image.open(io.BytesIO(data)) as img:
      img.load()
      return img.size
  except Exception as e:  # PIL raises many types for broken files.
    raise BadImageError(f'{path}: cannot decode image ({type(e).__name__}: {e}).') from e


def normalised_bbox(x0, y0, x1, y1, width, height) -> tfds.features.BBox:
  """Pixel box (x0, y0, x1, y1) -> tfds BBox normalised to [0, 1], clipped."""
  def clip(v):
    return min(1.0, max(0.0, float(v)))
  return tfds.features.BBox(ymin=clip(y0 / height), xmin=clip(x0 / width),
                            ymax=clip(y1 / height), xmax=clip(x1 / width))
