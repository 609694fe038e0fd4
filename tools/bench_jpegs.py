"""ImageNet-like JPEG files built from the photos that ship with scikit-image (big_vision/photos.py makes each image), as an ImageFolder tree
and as a TFDS dataset of any size. The TFDS builder stores the file bytes unchanged, so both loaders decode the same JPEGs.
It lives in its own module because TFDS builders cannot be defined in `__main__`.
"""

import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from big_vision import photos as photos_lib
from big_vision.photos import PHOTO_NAMES
from utils.tf_import import tf  # noqa: F401  (torch_xla before TensorFlow)


def write_jpegs(folder_dpath: str, n_images: int, seed: int) -> list[tuple[str, int]]:
    """`n_images` distinct JPEGs in an ImageFolder tree (one class per source photo); returns (path, label) pairs."""
    rng = np.random.default_rng(seed)
    photos = photos_lib.load_photos()
    files = []
    for i in range(n_images):
        label = i % len(photos)
        name, src = photos[label]
        class_dpath = os.path.join(folder_dpath, f"{label:02d}_{name}")
        os.makedirs(class_dpath, exist_ok=True)
        fpath = os.path.join(class_dpath, f"{i:05d}.jpg")
        photos_lib.make_image(rng, src).save(fpath, format="JPEG", quality=90)
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
