"""The embedded default dataset: scikit-learn's handwritten digits as a real TFDS dataset.

1797 8x8 grayscale images of the digits 0-9 ship inside scikit-learn (`load_digits`), so this
dataset is prepared offline in about a second. Pixels (0..16) are scaled to uint8 (0..255) and stored
PNG-encoded, so the default run reads it exactly like an ImageNet run reads JPEGs: TFDS -> decode
-> pp ops. The train/test split is a fixed seeded permutation (1437 / 360).
"""

import numpy as np
import tensorflow_datasets as tfds

from utils.tf_import import tf  # noqa: F401  (import order: torch_xla before TensorFlow)

N_TEST = 360
SPLIT_SEED = 0


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits, PNG-encoded."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 1437 train / 360 test, seeded split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "id": tf.int64,
                }
            ),
            supervised_keys=("image", "label"),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything ships inside scikit-learn; nothing is downloaded
        from sklearn.datasets import load_digits

        digits = load_digits()
        images_n88 = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images_n88))
        test_idx, train_idx = np.sort(order[:N_TEST]), np.sort(order[N_TEST:])
        return {
            "train": self._generate_examples(images_n88, digits.target, train_idx),
            "test": self._generate_examples(images_n88, digits.target, test_idx),
        }

    def _generate_examples(self, images_n88: np.ndarray, labels_n: np.ndarray, idx: np.ndarray):
        for i in idx:
            yield int(i), {"image": images_n88[i][:, :, None], "label": int(labels_n[i]), "id": int(i)}
