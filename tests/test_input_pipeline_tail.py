"""The train pipeline runs a pp string's trailing value_range over whole batches (`split_batch_tail`): which ops move, and batches that are
bit-identical to running the whole string per example."""

import numpy as np
import pytest

from big_vision import input_pipeline as ip

I1K_TRAIN = 'decode|inception_crop(24)|flip_lr|value_range(-1, 1)|onehot(10, key="label", key_result="labels")|keep("image", "labels")'


@pytest.mark.parametrize(
    "pp, head, tail",
    [
        ('decode|flip_lr|value_range(-1, 1)|keep("image", "label")', 'decode|flip_lr|keep("image", "label")', "value_range(-1, 1)"),
        (I1K_TRAIN, I1K_TRAIN.replace("|value_range(-1, 1)", ""), "value_range(-1, 1)"),
        ("decode|value_range(0, 1)|value_range(-1, 1, 0, 1)", "decode", "value_range(0, 1)|value_range(-1, 1, 0, 1)"),
        ('decode|value_range(-1, 1)|keep("label")', 'decode|value_range(-1, 1)|keep("label")', ""),  # its image is dropped
        ("decode|value_range(-1, 1)|flip_lr", "decode|value_range(-1, 1)|flip_lr", ""),  # an image op follows
        (
            'decode|value_range(key="labels")|onehot(10, key="label", key_result="labels")',
            'decode|value_range(key="labels")|onehot(10, key="label", key_result="labels")',
            "",
        ),
    ],
)
def test_only_trailing_value_ranges_past_ops_that_leave_their_key_move(pp, head, tail) -> None:
    assert ip.split_batch_tail(pp) == (head, tail)


def test_batch_tail_gives_the_per_example_values_bit_for_bit(digits_dir) -> None:
    builder = ip.make_builder("sklearn_digits", digits_dir)
    kw = {"epoch": 1, "seed": 3, "shuffle_buffer": 64, "start_step": 2}
    fast = ip.make_train_dataset(builder, "train", I1K_TRAIN, 32, batch_tail=True, **kw).take(3)
    plain = ip.make_train_dataset(builder, "train", I1K_TRAIN, 32, batch_tail=False, **kw).take(3)
    n = 0
    for a, b in zip(fast.as_numpy_iterator(), plain.as_numpy_iterator(), strict=True):
        assert a.keys() == b.keys() == {"image", "labels"}
        assert a["image"].dtype == np.float32 and np.array_equal(a["image"], b["image"]) and np.array_equal(a["labels"], b["labels"])
        n += 1
    assert n == 3
