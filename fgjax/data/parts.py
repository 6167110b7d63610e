"""The parts benchmark: synthetic fine-grained data at the papers' geometry.

Each image is a photograph-sized scene (about CUB's 500 x 375: width 420-560, height
300-420, stored as JPEG) of one large shared object, an ellipse of a random warm colour
with a smaller overlapping 'head', on a textured, cluttered background. The class is
decided only by a small detail: a 3 x 3 binary glyph of 3-px cells (11 px with its
border, about 1/45 of the image side) printed at a random place on the object. Decoy
glyphs of patterns no class uses are scattered over the object and the clutter. At the
benchmark's 224-px input (a 256 x 256 resize, then a crop) a glyph cell is 1.6 px wide and
2.1 px high on average: barely readable, and a single glyph is 0.07 % of the picture, so
global average pooling sees mostly object, clutter and decoys. Zoomed in 2-4x by a region
model, the cells are 4-8 px, the sizes the pretraining task taught the backbone to read.

Each example stores, besides the features every fgjax builder writes (fgjax.data.common),
`detail_bbox`: the class glyph's box, border included, normalised like `bbox`, so that
every evaluation can score whether a model's regions hold the detail
(fgjax.localization).

Builder configs:
- 'default' (the benchmark): 10 classes, 2,000 train / 1,000 test images.
- 'pretrain' (the ImageNet analogue): 20 OTHER glyph patterns, disjoint from the
  benchmark's classes and its decoys, 4,000 train / 500 test, glyph cells of 6 to 24 px
  (details at many scales and mostly larger than the benchmark's, as ImageNet's objects
  are larger than a bird's markings). A backbone trained on it (configs/parts_pretrain.py,
  at half the benchmark's input size, as ResNets are pretrained at 224 and fine-tuned at
  448) is where every method starts, as the papers start from ImageNet weights.
- 'tiny': the benchmark's task, 48 train / 20 test images, for tests.

Glyph patterns are left-right symmetric, so the random horizontal flip of the training
pipeline never turns one class into another; any two patterns of one builder config
(classes and decoys) differ in at least two cells.
"""

import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from fgjax.data import common

NUM_CLASSES = 10
NUM_PRETRAIN_CLASSES = 20
NUM_DECOY_PATTERNS = 3
GLYPH_CELL = 3  # Stored pixels per glyph cell on the benchmark.
PRETRAIN_CELLS = (6, 24)  # Cell sizes (inclusive range) of the pretraining task.
WIDTHS, HEIGHTS = (420, 560), (300, 420)  # Inclusive ranges of the stored image size.
JPEG_QUALITY = 92
SPLIT_SIZES = {
    'default': {'train': 2000, 'test': 1000},
    'pretrain': {'train': 4000, 'test': 500},
    'tiny': {'train': 48, 'test': 20},
}
_SPLIT_SEEDS = {'train': 11, 'test': 12}
_CONFIG_SEEDS = {'default': 0, 'tiny': 0, 'pretrain': 100}
PAPER = np.array([235, 235, 225], np.uint8)
INK = np.array([20, 20, 30], np.uint8)


def _symmetric_patterns() -> list[np.ndarray]:
  """Every left-right symmetric 3x3 pattern with 3 to 6 ink cells, in a fixed order."""
  out = []
  for bits in range(64):  # Columns 0 and 2 are equal: 6 free cells.
    left = np.array([(bits >> i) & 1 for i in range(3)], bool)
    mid = np.array([(bits >> i) & 1 for i in range(3, 6)], bool)
    pattern = np.stack([left, mid, left], axis=1)
    if 3 <= pattern.sum() <= 6:
      out.append(pattern)
  return out


def _pick_patterns():
  """(benchmark classes [10,3,3], decoys [3,3,3], pretraining classes [20,3,3]).

  Chosen greedily in a seeded random order so that the benchmark's classes and decoys
  differ pairwise in >= 2 cells, and so do the pretraining classes among themselves;
  no pretraining pattern is a benchmark class or decoy.
  """
  pool = _symmetric_patterns()
  order = np.random.default_rng(2024).permutation(len(pool))

  def greedy(count, candidates):
    chosen = []
    for i in candidates:
      if all((pool[i] != pool[j]).sum() >= 2 for j in chosen):
        chosen.append(i)
        if len(chosen) == count:
          return chosen
    raise RuntimeError('Not enough distinct glyph patterns.')

  bench = greedy(NUM_CLASSES + NUM_DECOY_PATTERNS, order)
  pretrain = greedy(NUM_PRETRAIN_CLASSES, [i for i in order if i not in bench])
  stack = lambda idx: np.stack([pool[i] for i in idx])
  return stack(bench[:NUM_CLASSES]), stack(bench[NUM_CLASSES:]), stack(pretrain)


PATTERNS, DECOYS, PRETRAIN_PATTERNS = _pick_patterns()


def glyph_side(cell: int) -> int:
  """Side of a glyph in pixels: 3 cells plus a one-cell-half paper border each side."""
  return 3 * cell + 2 * max(1, cell // 2)


def draw_glyph(img: np.ndarray, pattern: np.ndarray, y: int, x: int, cell: int) -> None:
  """Draws `pattern` on paper, top-left corner at (y, x), side glyph_side(cell)."""
  border = max(1, cell // 2)
  side = glyph_side(cell)
  img[y:y + side, x:x + side] = PAPER
  ink = np.kron(pattern, np.ones((cell, cell), bool))
  img[y + border:y + border + 3 * cell, x + border:x + border + 3 * cell][ink] = INK


def _background(rng, height, width):
  """Smooth random colour field plus pixel noise, float32 [H, W, 3]."""
  coarse = rng.uniform(50, 210, size=(4, 5, 3)).astype(np.uint8)
  field = np.asarray(PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.BICUBIC),
                     np.float32)
  return field + rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)


def _clutter(rng, img):
  height, width = img.shape[:2]
  for _ in range(rng.integers(15, 30)):
    y0, x0 = rng.integers(0, height), rng.integers(0, width)
    long_side, short_side = rng.integers(20, width // 3), rng.integers(3, 12)
    h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, size=3)
  for _ in range(rng.integers(4, 9)):  # Blobs.
    cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(8, 30)
    y0, y1 = int(max(0, cy - r)), int(min(height, cy + r + 1))
    x0, x1 = int(max(0, cx - r)), int(min(width, cx + r + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0, 255, size=3)


def _object(rng, img):
  """Paints the shared object; returns its mask [H, W] and box (x0, y0, x1, y1)."""
  height, width = img.shape[:2]
  yy, xx = np.mgrid[0:height, 0:width]
  cy, cx = rng.uniform(0.42, 0.58) * height, rng.uniform(0.42, 0.58) * width
  ry, rx = rng.uniform(0.28, 0.38) * height, rng.uniform(0.26, 0.36) * width
  body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  angle = rng.uniform(0, 2 * np.pi)
  hy, hx = cy + 0.9 * ry * np.sin(angle), cx + 0.9 * rx * np.cos(angle)
  hr = rng.uniform(0.35, 0.5) * min(ry, rx)
  head = (yy - hy) ** 2 + (xx - hx) ** 2 <= hr * hr
  mask = body | head
  colour = np.array([rng.uniform(170, 240), rng.uniform(90, 150), rng.uniform(20, 70)])
  img[mask] = colour + rng.normal(0, 9, size=(int(mask.sum()), 3))
  ys, xs = np.nonzero(mask)
  return mask, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _free_spot(rng, side, height, width, taken, mask=None, tries=200):
  """Top-left corner of a side x side square not overlapping `taken` boxes (with margin),
  inside `mask` (all four corners) when given."""
  if mask is not None:
    ys, xs = np.nonzero(mask[:height - side, :width - side])
  for _ in range(tries):
    if mask is not None:
      k = rng.integers(len(ys))
      y, x = int(ys[k]), int(xs[k])
      if not (mask[y, x + side - 1] and mask[y + side - 1, x] and mask[y + side - 1, x + side - 1]):
        continue
    else:
      y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
    margin = side // 2
    if all(y + side + margin <= ty0 or ty1 + margin <= y or x + side + margin <= tx0
           or tx1 + margin <= x for ty0, tx0, ty1, tx1 in taken):
      return y, x
  return None


def render_example(rng: np.random.Generator, label: int, patterns: np.ndarray,
                   cell_range: tuple[int, int] = (GLYPH_CELL, GLYPH_CELL)):
  """One scene: (uint8 [H, W, 3], object box, detail box), boxes (x0, y0, x1, y1) in px.

  The class glyph `patterns[label]` lies wholly on the object; 2-4 decoy glyphs
  (fgjax.data.parts.DECOYS) lie anywhere else, never touching it.
  """
  height = int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
  width = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1))
  img = _background(rng, height, width)
  _clutter(rng, img)
  mask, object_box = _object(rng, img)
  img = img.clip(0, 255).astype(np.uint8)
  cell = int(rng.integers(cell_range[0], cell_range[1] + 1))
  side = glyph_side(cell)
  spot = _free_spot(rng, side, height, width, [], mask)
  if spot is None:
    raise RuntimeError(f'No place on the object for a {side}-px glyph.')
  y, x = spot
  draw_glyph(img, patterns[label], y, x, cell)
  taken = [(y, x, y + side, x + side)]
  for i in range(int(rng.integers(2, 5))):
    # Half of the decoys sit on the object, so that the object alone does not find the detail.
    spot = _free_spot(rng, side, height, width, taken, mask if i % 2 == 0 else None)
    if spot is None:
      continue
    draw_glyph(img, DECOYS[rng.integers(len(DECOYS))], spot[0], spot[1], cell)
    taken.append((spot[0], spot[1], spot[0] + side, spot[1] + side))
  return img, object_box, (float(x), float(y), float(x + side), float(y + side))


def task(config_name: str):
  """(class patterns, glyph cell range) of a builder config."""
  if config_name == 'pretrain':
    return PRETRAIN_PATTERNS, PRETRAIN_CELLS
  return PATTERNS, (GLYPH_CELL, GLYPH_CELL)


def generate_split(config_name: str, split: str, num_examples: int | None = None):
  """Yields (image uint8, label, object box, detail box) of a split, deterministically."""
  patterns, cells = task(config_name)
  num_examples = SPLIT_SIZES[config_name][split] if num_examples is None else num_examples
  rng = np.random.default_rng([_CONFIG_SEEDS[config_name], _SPLIT_SEEDS[split]])
  labels = np.arange(num_examples) % len(patterns)
  rng.shuffle(labels)
  for label in labels:
    img, object_box, detail_box = render_example(rng, int(label), patterns, cells)
    yield img, int(label), object_box, detail_box


def class_names(config_name: str = 'default') -> list[str]:
  prefix = 'pretrain_glyph' if config_name == 'pretrain' else 'glyph'
  return [f'{prefix}_{i:02d}' for i in range(len(task(config_name)[0]))]


class FgjaxParts(tfds.core.GeneratorBasedBuilder):
  """Synthetic parts benchmark (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='default', description='Benchmark: 10 classes, 2,000 / 1,000.'),
      tfds.core.BuilderConfig(name='pretrain', description='ImageNet analogue: 20 other classes.'),
      tfds.core.BuilderConfig(name='tiny', description='48 train / 20 test images, for tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    features = dict(common.features_dict(class_names(self.builder_config.name)).items())
    features['detail_bbox'] = tfds.features.BBoxFeature()
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict(features),
                                 supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split)
            for split in SPLIT_SIZES[self.builder_config.name]}

  def _generate_examples(self, split):
    name = self.builder_config.name
    names = class_names(name)
    for i, (img, label, box, detail) in enumerate(generate_split(name, split)):
      height, width = img.shape[:2]
      buf = io.BytesIO()
      PIL.Image.fromarray(img).save(buf, format='JPEG', quality=JPEG_QUALITY)
      file_name = f'{split}/{i:05d}.jpg'
      yield file_name, {
          'image': buf.getvalue(),
          'label': label,
          'label_name': names[label],
          'bbox': common.normalised_bbox(*box, width, height),
          'detail_bbox': common.normalised_bbox(*detail, width, height),
          'file_name': file_name,
          'image_id': i + 1,
          'crop_bottom': 0,
      }
