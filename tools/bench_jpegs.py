"""ImageNet-like JPEG files built from the photos that ship with scikit-image, as an ImageFolder tree and as a TFDS dataset.

Random crops, rescales and flips of the `skimage.data` photos give any number of distinct RGB images: about 60% at 500 px on the longer side
(ImageNet's typical 500x375 and 500x333), the rest 300 to 800 px; JPEG quality 90 (PIL, 4:2:0). The TFDS builder stores the file bytes
unchanged, so both loaders decode the same JPEGs. It lives in its own module because TFDS builders cannot be defined in `__main__`.
"""

import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from utils.tf_import import tf  # noqa: F401  (torch_xla before TensorFlow)

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


def _load_photos() -> list[tuple[str, np.ndarray]]:
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


def write_jpegs(folder_dpath: str, n_images: int, seed: int) -> list[tuple[str, int]]:
    """`n_images` distinct JPEGs in an ImageFolder tree (one class per source photo); returns (path, label) pairs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _load_photos()
    files = []
    for i in range(n_images):
        label = i % len(photos)
        name, src = photos[label]
        h, w = src.shape[:2]
        area = rng.uniform(0.35, 1.0) * h * w
        # w / h, mostly landscape as in ImageNet
        aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3], p=[0.45, 0.2, 0.1, 0.15, 0.1]) * rng.uniform(0.95, 1.05)
        ch, cw = min(h, int(round(np.sqrt(area / aspect)))), min(w, int(round(np.sqrt(area * aspect))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        long_side = 500 if rng.random() < 0.6 else int(rng.integers(300, 801))
        scale = long_side / max(ch, cw)
        im = Image.fromarray(np.ascontiguousarray(crop)).resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BILINEAR)
        class_dpath = os.path.join(folder_dpath, f"{label:02d}_{name}")
        os.makedirs(class_dpath, exist_ok=True)
        fpath = os.path.join(class_dpath, f"{i:05d}.jpg")
        im.save(fpath, format="JPEG", quality=90)
        files.append((fpath, label))
    return files


class BenchJpegs(tfds.core.GeneratorBasedBuilder):
    """JPEG files from a folder (`manual_dir`, an ImageFolder tree), stored as they are."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Written by tools/bench_input_pipeline.py."

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"), "label": tfds.features.ClassLabel(names=PHOTO_NAMES)}
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        return {"train": self._generate_examples(str(dl_manager.manual_dir))}

    def _generate_examples(self, folder_dpath: str) -> Iterator[tuple[str, dict]]:
        for class_dname in sorted(os.listdir(folder_dpath)):
            label = int(class_dname.split("_")[0])
            for fname in sorted(os.listdir(os.path.join(folder_dpath, class_dname))):
                yield f"{class_dname}/{fname}", {"image": os.path.join(folder_dpath, class_dname, fname), "label": label}


def make_tfds(data_dpath: str, folder_dpath: str) -> tfds.core.DatasetBuilder:
    """Prepare (once) the TFDS dataset `bench_jpegs` in `data_dpath` from the ImageFolder tree `folder_dpath`."""
    builder = BenchJpegs(data_dir=data_dpath)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder_dpath))
    return builder
