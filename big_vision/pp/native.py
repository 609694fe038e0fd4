"""Native TF kernels for pp ops, built on first use, and used only where they give TensorFlow's own bits.

`get_resize_bilinear_uint8()` is the op in `native/resize_bilinear_uint8.cc`: the pp ops' bilinear resize of a uint8 image (resize, then
clip and cast back to uint8) in one kernel, about 3.6x less CPU than `tf.image.resize` + clip + cast on ImageNet-sized crops (TF's kernel
reads four input pixels per output value, one at a time; this one lerps each input row once, with 4-wide loads for 3 channels, then whole
rows). With TF's kernel the resize was about a quarter of the ImageNet train pipeline's CPU.

Built with the compiler in `$CXX` (default g++) against the installed TensorFlow's headers and flags (`tf.sysconfig`), into
`$PP_NATIVE_CACHE` (default `~/.cache/pp_native`) under a name that hashes the source, the TF version, the flags and the compiler, so an
upgrade rebuilds it; concurrent processes each build to a temporary file and rename it into place. Before first use the op is run on check
images (down- and up-scaling, 1, 3 and 4 channels, one-pixel sides) and compared bit for bit with TF's resize; a build, load or check that
fails logs one warning and the pp ops keep TF's kernels, which give the same values. `PP_NATIVE_OPS=0` turns the native ops off.
"""

import functools
import hashlib
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable

import numpy as np

from utils.tf_import import tf

log = logging.getLogger(__name__)

SRC_DPATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
ENV_SWITCH = "PP_NATIVE_OPS"
ENV_CACHE = "PP_NATIVE_CACHE"
BUILD_TIMEOUT_S = 300
# (input h, w, c), (output h, w): the check images; random pixels, seeded.
CHECK_CASES = (((375, 500, 3), (224, 224)), ((97, 61, 3), (224, 224)), ((224, 224, 3), (224, 224)), ((1, 1, 3), (5, 7)))
CHECK_CASES += (((333, 257, 1), (160, 96)), ((40, 700, 4), (13, 224)), ((601, 3, 3), (224, 1)))


def _arch_flags() -> list[str]:
    """-mavx2 where this CPU has AVX2 (the gathers for 1, 2 or 4 channels); other CPUs get the scalar loop there, with the same values."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as fd:
            flags = next((line.split(":", 1)[1].split() for line in fd if line.startswith("flags")), [])
    except OSError:
        return []
    return ["-mavx2"] if "avx2" in flags else []


def _build(name: str) -> str:
    """The shared library of `native/NAME.cc`, compiled unless the cache holds it; raises RuntimeError with the compiler's last line."""
    src_fpath = os.path.join(SRC_DPATH, f"{name}.cc")
    cxx = os.environ.get("CXX", "g++")
    flags = ["-std=c++17", "-shared", "-fPIC", "-O3", "-ffp-contract=off", "-w", *_arch_flags()]
    flags += [*tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    with open(src_fpath, "rb") as fd:
        key = hashlib.sha256(b"\0".join([fd.read(), tf.__version__.encode(), cxx.encode(), *(f.encode() for f in flags)])).hexdigest()[:16]
    cache_dpath = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "pp_native")
    so_fpath = os.path.join(cache_dpath, f"{name}-{key}.so")
    if os.path.exists(so_fpath):
        return so_fpath
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler {cxx!r} (set CXX)")
    os.makedirs(cache_dpath, exist_ok=True)
    fd, tmp_fpath = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=cache_dpath)
    os.close(fd)
    try:
        _compile([cxx, src_fpath, "-o", tmp_fpath, *flags])
        os.replace(tmp_fpath, so_fpath)  # atomic: a concurrent process sees the old state or the whole file
    finally:
        if os.path.exists(tmp_fpath):
            os.remove(tmp_fpath)
    return so_fpath


def _compile(cmd: list[str]) -> None:
    """Run the compiler in its own process group, all of which is killed if it outlives BUILD_TIMEOUT_S or the caller is interrupted."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {(err.strip().splitlines() or ['no output'])[-1]}")


def tf_resize_uint8(image: tf.Tensor, hw) -> tf.Tensor:
    """TF's bilinear resize of a uint8 image, clipped and cast back: what the native op must equal."""
    return tf.cast(tf.clip_by_value(tf.image.resize(image, hw, method="bilinear", antialias=False), 0, 255), tf.uint8)


def _check(op: Callable) -> str | None:
    """None when `op` gives TF's bits on every check image, else what differed."""
    rng = np.random.default_rng(0)
    for shape, hw in CHECK_CASES:
        x = tf.constant(rng.integers(0, 256, shape, dtype=np.uint8))
        got, want = op(x, tf.constant(hw, tf.int32)).numpy(), tf_resize_uint8(x, hw).numpy()
        if got.shape != want.shape or not np.array_equal(got, want):
            return f"{shape} -> {hw}: {int(np.sum(got != want)) if got.shape == want.shape else got.shape} values differ from TF's"
    return None


@functools.cache
def get_resize_bilinear_uint8() -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None:
    """(uint8 [h, w, c] image, int32 [2] size) -> uint8 [size..., c], or None where the native op is off, cannot be built or differs."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    with tf.init_scope():  # the build check runs eagerly, also when a pp function is being traced
        try:
            op = tf.load_op_library(_build("resize_bilinear_uint8")).resize_bilinear_uint8
            problem = _check(op)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, tf.errors.OpError) as e:
            problem = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if problem:
        log.warning("pp resize: TF's kernel (the native one is not used: %s; %s=0 skips it)", problem, ENV_SWITCH)
        return None
    return op
