"""The built-in demo data set: synthetic, fine-grained, generated from a seed.

Every image shows the same kind of scene: a cluttered background of random
bars and blobs, and one large object (an ellipse of a random warm colour) that
dominates the picture. The class is decided only by a small glyph, a 3x3
binary pattern drawn in dark ink on the object at a random place, about 1/9 of
the image side. Glyphs of all classes share colour and size, so a model must
find the glyph and read its shape: global pooling over the whole picture sees
mostly clutter and object, which is what makes mining and zooming into regions
pay off. A few decoy glyphs of a pattern no class uses sit in the clutter.

The images are written once, as PNG files inside the TFDS ArrayRecord data set
(`fgjax_demo`), and go through exactly the grain pipeline of the real data sets.
No download is needed: `download_and_prepare()` generates everything.
"""

import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from fgjax.data import common

NUM_CLASSES = 10
IMAGE_SIZE = 128  # Stored images are IMAGE_SIZE x IMAGE_SIZE RGB.
# Pixels per glyph cell: a glyph is 3x3 cells (12x12 px) plus a one-pixel border, 14 px
# in all; at the demo's 64-px input a cell is 2 px. (Version 2 drew 2-px cells, one pixel
# at 64 px: from scratch, training stayed at chance for a random number of epochs and
# ended anywhere from 44 % to 96 % with the seed or the CPU. Comparing methods is the
# parts benchmark's job, fgjax/data/parts.py; the demo only has to train reliably.)
GLYPH_CELL = 4
# Builder config -> split sizes. 'tiny' is for tests: its test split (37) divides
# no batch size, which exercises exact (padded, masked) evaluation.
SPLIT_SIZES = {'default': {'train': 2000, 'test': 500}, 'tiny': {'train': 96, 'test': 37}}
_SPLIT_SEEDS = {'train': 1, 'test': 2}


def _glyph_patterns(num_classes: int) -> np.ndarray:
  """`num_classes` + 1 distinct 3x3 binary patterns; the last one is the decoy."""
  rng = np.random.default_rng(1234)
  patterns = []
  seen = set()
  while len(patterns) < num_classes + 1:
    p = rng.integers(0, 2, size=(3, 3)).astype(bool)
    # Enough ink to be visible, and not a rotation/flip of the solid square.
    if not 3 <= p.sum() <= 6:
      continue
    key = p.tobytes()
    if key in seen:
      continue
    seen.add(key)
    patterns.append(p)
  return np.stack(patterns)


PATTERNS = _glyph_patterns(NUM_CLASSES)


def _draw_glyph(img: np.ndarray, pattern: np.ndarray, y: int, x: int, ink, paper):
  """Draws a glyph with a one-pixel paper border, top-left corner at (y, x)."""
  size = 3 * GLYPH_CELL
  img[y:y + size + 2, x:x + size + 2] = paper
  cells = np.kron(pattern, np.ones((GLYPH_CELL, GLYPH_CELL), bool))
  img[y + 1:y + 1 + size, x + 1:x + 1 + size][cells] = ink


def render_example(rng: np.random.Generator, label: int):
  """One demo image [IMAGE_SIZE, IMAGE_SIZE, 3] uint8, its object box and its glyph box.

  Boxes are (x0, y0, x1, y1) in pixels; the glyph box includes the paper border.
  """
  s = IMAGE_SIZE
  img = (rng.uniform(60, 200, size=3)[None, None] +
         rng.normal(0, 12, size=(s, s, 3))).clip(0, 255)
  yy, xx = np.mgrid[0:s, 0:s]
  for _ in range(rng.integers(10, 18)):  # Clutter: random bars.
    y0, x0 = rng.integers(0, s, size=2)
    h, w = rng.integers(2, s // 3, size=2)
    if rng.random() < 0.5:
      h = max(2, h // 6)
    else:
      w = max(2, w // 6)
    img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
  # The object: a large ellipse, the same kind in every image.
  cy, cx = rng.uniform(0.4, 0.6, size=2) * s
  ry, rx = rng.uniform(0.25, 0.38, size=2) * s
  inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  colour = np.array([rng.uniform(170, 240), rng.uniform(90, 150), rng.uniform(20, 70)])
  img[inside] = colour + rng.normal(0, 8, size=(int(inside.sum()), 3))
  img = img.clip(0, 255).astype(np.uint8)
  glyph = 3 * GLYPH_CELL + 2
  paper = np.array([235, 235, 225], np.uint8)
  ink = np.array([20, 20, 30], np.uint8)
  # The class glyph somewhere well inside the object.
  angle = rng.uniform(0, 2 * np.pi)
  radius = rng.uniform(0, 0.45)
  gy = int(cy + radius * ry * np.sin(angle) - glyph / 2)
  gx = int(cx + radius * rx * np.cos(angle) - glyph / 2)
  gy, gx = np.clip([gy, gx], 0, s - glyph)
  # Decoys first so that the class glyph is never covered.
  for _ in range(rng.integers(1, 3)):
    dy, dx = rng.integers(0, s - glyph, size=2)
    _draw_glyph(img, PATTERNS[-1], dy, dx, ink, paper)
  _draw_glyph(img, PATTERNS[label], gy, gx, ink, paper)
  box = (max(0.0, cx - rx), max(0.0, cy - ry), min(s, cx + rx), min(s, cy + ry))
  return img, box, (float(gx), float(gy), float(gx + glyph), float(gy + glyph))


def _render_split(split: str, num_examples: int):
  rng = np.random.default_rng(_SPLIT_SEEDS[split])
  labels = np.arange(num_examples) % NUM_CLASSES
  rng.shuffle(labels)
  for label in labels:
    yield int(label), *render_example(rng, int(label))


def generate_split(split: str, num_examples: int):
  """Yields (image uint8 [S, S, 3], label, object box) for `split`, deterministically."""
  for label, img, box, _ in _render_split(split, num_examples):
    yield img, label, box


def glyph_boxes(split: str, num_examples: int) -> np.ndarray:
  """float64 [N, 4] class-glyph boxes (x0, y0, x1, y1, stored pixels) of `split`, in order.

  Not stored in the data set (the real data sets have no such box); regenerated from the
  seed, for measuring whether a region model's boxes find the glyph
  (`fgjax.localization`).
  """
  return np.array([glyph for _, _, _, glyph in _render_split(split, num_examples)], np.float64)


def class_names() -> list[str]:
  return [f'glyph_{i:02d}' for i in range(NUM_CLASSES)]


class FgjaxDemo(tfds.core.GeneratorBasedBuilder):
  """Synthetic fine-grained demo data set (see the module docstring)."""

  VERSION = tfds.core.Version('3.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '2.0.0': '2-px glyph cells (3 px before): a harder, finer-grained task.',
                   '3.0.0': '4-px glyph cells: the demo trains reliably from scratch.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='default', description='2,000 train / 500 test images.'),
      tfds.core.BuilderConfig(name='tiny', description='96 train / 37 test images, for tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.features_dict(class_names()),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, size)
            for split, size in SPLIT_SIZES[self.builder_config.name].items()}

  def _generate_examples(self, split, num_examples):
    names = class_names()
    s = IMAGE_SIZE
    for i, (img, label, (x0, y0, x1, y1)) in enumerate(generate_split(split, num_examples)):
      buf = io.BytesIO()
      PIL.Image.fromarray(img).save(buf, format='PNG')
      file_name = f'{split}/{i:05d}.png'
      yield file_name, {
          'image': buf.getvalue(),
          'label': label,
          'label_name': names[label],
          'bbox': common.normalised_bbox(x0, y0, x1, y1, s, s),
          'file_name': file_name,
          'image_id': i + 1,
          'crop_bottom': 0,
      }
