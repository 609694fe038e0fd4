"""`python -m tools.test_tfds_loader` as a user runs it: a subprocess on the embedded digits dataset."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests import proc

REPO_DPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PJRT_DEVICE": "CPU", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return proc.run([sys.executable, "-m", "tools.test_tfds_loader", *argv], env=env, cwd=str(REPO_DPATH), timeout=240)


def test_describes_times_and_draws_digits(digits_dir, tmp_path):
    from PIL import Image

    grid_fpath = tmp_path / "grid.png"
    pp = 'decode|resize(32)|value_range(-1, 1)|keep("image", "label")'
    r = _run(
        "--data_dir",
        digits_dir,
        "--split",
        "train",
        "--num_samples",
        "8",
        "--pp",
        pp,
        "--batch_size",
        "32",
        "--time_it",
        "--seconds",
        "1",
        "--warmup_seconds",
        "0.5",
        "--save_grid",
        str(grid_fpath),
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "sklearn_digits/1.0.0 split 'train' (1437 examples)" in out
    assert re.search(r"image\s+shape \(32, 32, 3\)\s+dtype float32\s+min -1\s+max 1\s+mean -0\.\d+", out), out
    assert re.search(r"label\s+shape \(\)\s+dtype int64\s+min \d\s+max \d", out), out
    assert "id " not in out, "keep() dropped the id key"
    rate = float(re.search(r"input rate: ([\d.]+) images/s", out).group(1))
    assert rate > 0

    # 8 tiles in one row: 32 px images scaled x3 to 96 px, a 14 px caption strip, 4 px padding around every tile.
    with Image.open(grid_fpath) as im:
        assert im.format == "PNG"
        assert im.size == (8 * (96 + 4) + 4, 96 + 14 + 2 * 4)
        pixels = np.asarray(im.convert("RGB"))
    tiles = pixels[4 : 4 + 96]  # the image rows of all tiles (the batch spans -1..1, so some pixel of some tile is at each end)
    assert tiles.min() == 0 and tiles.max() == 255, "value_range(-1, 1) maps back to the full 0..255 display range"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--split", "tarin"], r"error: bad split 'tarin' for TFDS dataset sklearn_digits/1\.0\.0.*splits are train, test"),
        (["--pp", 'decode|resise(32)|keep("image", "label")'], r"error: unknown pp op 'resise'; did you mean resize"),
        (["--dataset", "sklearn_digit"], r"error: TFDS dataset 'sklearn_digit' is not prepared.*did you mean sklearn_digits"),
        (["--dataset", "mnist", "--data_dir", "/nonexistent/tfds"], r"error: --data_dir '/nonexistent/tfds' does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(digits_dir, argv, message):
    r = _run("--data_dir", digits_dir, *argv)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), r.stderr
    assert "Traceback" not in r.stderr
