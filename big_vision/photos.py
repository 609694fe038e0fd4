"""An embedded ImageNet-like JPEG dataset: crops of the photos that ship with scikit-image, as a real TFDS dataset (`--data_set photos`).

Random crops, rescales and flips of 16 `skimage.data` photos (one class each) give distinct RGB JPEGs: about 60% at 500 px on the longer
side (ImageNet's typical 500x375 and 500x333), the rest 300 to 800 px, quality 90 (PIL, 4:2:0). ImageNet pp strings run on it unchanged
(`decode_jpeg_and_inception_crop`, `resize_small`), which is what recipe smoke runs (`--smoke`) and the input-pipeline benchmark need;
prepared offline in a few seconds. Splits: train (256) and validation (64), seeded.
"""

import io

import numpy as np
import tensorflow_datasets as tfds

from utils.tf_import import tf  # noqa: F401  (import order: torch_xla before TensorFlow)

PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "horse",
)
SPLIT_SIZES = {"train": 256, "validation": 64}


def load_photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB image) of every photo in PHOTO_NAMES."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        im = np.asarray(getattr(skimage.data, name)())
        if im.dtype == bool:  # horse is a binary silhouette
            im = im.astype(np.uint8) * 255
        assert im.dtype == np.uint8, f"skimage.data.{name} is {im.dtype}, expected uint8"
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        photos.append((name, np.ascontiguousarray(im[..., :3]).astype(np.uint8)))
    return photos


def make_image(rng: np.random.Generator, src: np.ndarray):
    """One PIL image: a random crop of `src` (area 35-100%, mostly landscape), maybe flipped, rescaled to an ImageNet-like size."""
    from PIL import Image

    h, w = src.shape[:2]
    area = rng.uniform(0.35, 1.0) * h * w
    aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3], p=[0.45, 0.2, 0.1, 0.15, 0.1]) * rng.uniform(0.95, 1.05)  # w / h
    ch, cw = min(h, int(round(np.sqrt(area / aspect)))), min(w, int(round(np.sqrt(area * aspect))))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = src[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    long_side = 500 if rng.random() < 0.6 else int(rng.integers(300, 801))
    scale = long_side / max(ch, cw)
    return Image.fromarray(np.ascontiguousarray(crop)).resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BILINEAR)


class LocalPhotos(tfds.core.GeneratorBasedBuilder):
    """JPEG crops of scikit-image's sample photos, 16 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 256 train / 64 validation, seeded."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"), "label": tfds.features.ClassLabel(names=PHOTO_NAMES)}
            ),
            supervised_keys=("image", "label"),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything ships inside scikit-image; nothing is downloaded
        return {split: self._generate_examples(split, n, seed) for seed, (split, n) in enumerate(SPLIT_SIZES.items())}

    def _generate_examples(self, split: str, n_images: int, seed: int):
        rng = np.random.default_rng(seed)
        photos = load_photos()
        for i in range(n_images):
            label = i % len(photos)
            buf = io.BytesIO()
            make_image(rng, photos[label][1]).save(buf, format="JPEG", quality=90)
            yield f"{split}-{i:05d}", {"image": buf.getvalue(), "label": label}
