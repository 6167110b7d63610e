"""Images as evaluation feeds them to the model, from files or from memory, and where a
model-input pixel lies in the original image.

Every image reaches the model as encoded bytes through evaluation's own transform
(fgjax.data.pipeline.eval_transform: decode, RGB, resize to resize_size square, centre
crop image_size): a file as it is on disk, a PIL image or a uint8 array losslessly as PNG
(`encode_lossless`). An in-memory image is therefore preprocessed exactly as a PNG file
of the same pixels. A JPEG file is not the same as its decoded pixels: evaluation decodes
a JPEG over twice resize_size at 1/2, 1/4 or 1/8 scale (PIL's draft mode, by the DCT), so
pass the file's path to get evaluation's input for it.

Original pixels are the image's stored pixel grid, as PIL.Image.open reads it; EXIF
orientation is not applied (evaluation does not apply it either), so a photo that a viewer
shows rotated has its regions in the unrotated grid.

  loaded = read_images(['a.jpg', PIL.Image.open('b.png'), array], spec)
  boxes_xyxy = boxes_to_original(boxes_yxyx, spec, loaded.span_hw[i], loaded.original_hw[i])
"""

import dataclasses
import io
import os

import numpy as np
import PIL.Image

from fgjax.data import pipeline


def encode_lossless(image) -> bytes:
  """A PIL image, or a uint8 array [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA),
  as PNG bytes of its pixels converted to RGB by PIL's `convert('RGB')` (grayscale
  repeated, alpha dropped, a palette looked up): the conversion evaluation applies after
  decoding a file of any other mode, so the input is the same as for that file."""
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise ValueError(f'An image array must be uint8 (0..255), got {image.dtype}: '
                       'scale and convert it first, e.g. (x * 255).round().astype(np.uint8).')
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if image.ndim not in (2, 3) or channels not in (1, 3, 4):
      raise ValueError(f'An image array must be [H, W] or [H, W, 1, 3 or 4], got {image.shape}.')
    pixels = image.reshape(image.shape[:2]) if channels == 1 else image
    image = PIL.Image.fromarray(pixels)  # L, RGB or RGBA by the shape.
  elif not isinstance(image, PIL.Image.Image):
    raise TypeError(f'Expected a path, a PIL image or a uint8 array, got {type(image).__name__}.')
  buffer = io.BytesIO()
  # Lossless; level 1: fast, the size does not matter here.
  image.convert('RGB').save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue()


def original_extent(data: bytes, resize_size: int, crop_bottom: int = 0):
  """(size (H, W), span (H, W)) of an encoded image: its size in pixels, and the extent, in
  its pixels from the top-left corner, that evaluation resizes to `resize_size` square
  (pipeline.decode_resize_crop): the image less its `crop_bottom` banner rows.

  A JPEG over twice `resize_size` is decoded at scale 1/s, s in 2, 4, 8 (PIL's draft, as
  the pipeline does): decoded pixel j holds original pixels [j s, (j + 1) s), and there
  are ceil(W / s) of them, the last reaching up to s - 1 pixels past the image. The span
  is then the decoded size times s (>= the image size), so that resizing it is linear in
  original pixels."""
  with PIL.Image.open(io.BytesIO(data)) as img:
    width, height = img.size
    drafted = img.draft('RGB', (resize_size, resize_size + crop_bottom))
    # draft returns None for other formats, and the decoded box (0, 0, W / s, H / s).
    scale = 1 if drafted is None else round(width / drafted[1][2])
    decoded_w, decoded_h = img.size
  rows = int(round(crop_bottom * decoded_h / height)) if crop_bottom else 0
  return (height, width), ((decoded_h - rows) * scale, decoded_w * scale)


def _name(item, position: int) -> str:
  """A path's own name, the file a PIL image was opened from (PIL.Image.open keeps it as
  `filename`; a derived image has none), or 'images[i]' for another in-memory image."""
  if isinstance(item, (str, os.PathLike)):
    return os.fspath(item)
  return getattr(item, 'filename', '') or f'images[{position}]'


def _encoded(item) -> bytes:
  """Encoded bytes of a path, a PIL image or an array; ValueError saying why not."""
  if not isinstance(item, (str, os.PathLike)):
    return encode_lossless(item)
  try:
    with open(item, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f'cannot read the file ({type(e).__name__}: {e.strerror or e})') from e
  if not data:
    raise ValueError('the file is empty')
  return data


def _model_input(data: bytes, transform, resize_size: int):
  """(model input uint8 [S, S, 3], size (H, W), span (H, W)); ValueError saying why not."""
  try:
    image = transform({'image': data, 'label': 0, 'crop_bottom': 0})['image']
    size, span = original_extent(data, resize_size)
  except PIL.UnidentifiedImageError as e:  # Its message names a BytesIO, not the file.
    raise ValueError('not an image: no format that PIL reads recognises it') from e
  except Exception as e:  # PIL raises many types for broken or truncated files.
    raise ValueError(f'cannot decode the image ({type(e).__name__}: {e})') from e
  return image, size, span


@dataclasses.dataclass
class LoadedImages:
  """Images preprocessed as evaluation does, and those that could not be read."""
  images: np.ndarray  # uint8 [N, S, S, 3]: the readable ones, in the order given.
  names: list[str]  # [N] their paths (a PIL image's file), or 'images[i]' in memory.
  positions: list[int]  # [N] their indices in the list given.
  original_hw: np.ndarray  # int [N, 2]: each image's (height, width) in pixels.
  span_hw: np.ndarray  # float [N, 2]: the part of it evaluation resizes (original_extent).
  skipped: list[tuple[str, str]]  # (name, why) of each that could not be read, in order.


def read_images(items, spec: pipeline.ImageSpec) -> LoadedImages:
  """Image files (paths), PIL images or uint8 arrays, of any size -> LoadedImages: each
  preprocessed exactly as evaluation does (module docstring). An unreadable, truncated or
  non-image file is left out and listed in `skipped` with the reason."""
  transform = pipeline.eval_transform(spec)
  images, names, positions, sizes, spans, skipped = [], [], [], [], [], []
  for position, item in enumerate(items):
    name = _name(item, position)
    try:
      image, size, span = _model_input(_encoded(item), transform, spec.resize_size)
    except ValueError as e:
      skipped.append((name, str(e)))
      continue
    images.append(image)
    names.append(name)
    positions.append(position)
    sizes.append(size)
    spans.append(span)
  empty = np.zeros((0, spec.image_size, spec.image_size, 3), np.uint8)
  return LoadedImages(np.stack(images) if images else empty, names, positions,
                      np.array(sizes, np.int64).reshape(-1, 2),
                      np.array(spans, np.float64).reshape(-1, 2), skipped)


def load_images(items, spec: pipeline.ImageSpec) -> LoadedImages:
  """read_images, where an image that cannot be read is an error naming it."""
  loaded = read_images(items, spec)
  if loaded.skipped:
    name, why = loaded.skipped[0]
    raise ValueError(f'{name}: {why}.')
  return loaded


def boxes_to_original(boxes, spec: pipeline.ImageSpec, span_hw, original_hw=None) -> np.ndarray:
  """Regions in model-input pixels -> the same regions in the original image's pixels.

  Evaluation resizes the image's span (original_extent) to resize_size square, then keeps
  the centre image_size square, from o = (resize_size - image_size) // 2
  (pipeline.eval_transform). Both are linear in continuous pixel coordinates (pixel p
  spans [p, p + 1), as boxes and crops read them), so model-input coordinate u lies at

      y = (o + u) * span_h / resize_size,   x = (o + u) * span_w / resize_size

  in the original. Boxes are first clipped to the model input [0, image_size], since past
  it the model saw zero padding, not the image (region boxes may reach up to the padding
  into it, fgjax.ops.crop.zoom_into_regions), then mapped, then clipped to the image.

  Args:
    boxes: [..., 4] (y0, x0, y1, x1) in model-input pixels.
    spec: the run's ImageSpec.
    span_hw: (H, W) span of the image (original_extent).
    original_hw: (H, W) of the image to clip to; None for the span.

  Returns:
    float64 [..., 4] (x0, y0, x1, y1): x first, in original pixels.
  """
  boxes = np.clip(np.asarray(boxes, np.float64), 0.0, spec.image_size)
  offset = (spec.resize_size - spec.image_size) // 2
  span_h, span_w = (float(v) for v in span_hw)
  height, width = (float(v) for v in (span_hw if original_hw is None else original_hw))
  y = np.clip((offset + boxes[..., 0::2]) * span_h / spec.resize_size, 0.0, height)
  x = np.clip((offset + boxes[..., 1::2]) * span_w / spec.resize_size, 0.0, width)
  return np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)
