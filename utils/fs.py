"""Files that may be local or remote: `gs://bucket/dir` (or any `scheme://` path TensorFlow's gfile knows, `file://` included).

Local paths use `os` directly (fsync, atomic rename). Remote paths go through `tf.io.gfile`, imported only when a remote path is used (through
`utils.tf_import`, which keeps TensorFlow after torch_xla). GCS has no rename: `gfile.rename` copies then deletes, and an object only appears once its upload is
complete, so a reader never sees half a file under the final name either way.
"""

import io
import os
import tempfile
from collections.abc import Callable
from typing import IO


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    from utils.tf_import import tf

    return tf.io.gfile


def join(dpath: str, *names: str) -> str:
    """`os.path.join`; fine for URLs too (`gs://b/run` + `x.pt`)."""
    return os.path.join(dpath, *names)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    return _gfile().exists(path) and not _gfile().isdir(path)


def makedirs(dpath: str) -> None:
    if is_remote(dpath):
        _gfile().makedirs(dpath)
    else:
        os.makedirs(dpath, exist_ok=True)


def listdir(dpath: str) -> list[str]:
    """Names in `dpath` (no trailing `/` on sub-directories); [] if it does not exist."""
    if not isdir(dpath):
        return []
    if is_remote(dpath):
        return [name.rstrip("/") for name in _gfile().listdir(dpath)]
    return os.listdir(dpath)


def remove(path: str) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def open_file(path: str, mode: str = "r") -> IO:
    """`open()` for local paths, `tf.io.gfile.GFile` for remote ones (text or binary by `mode`)."""
    return _gfile().GFile(path, mode) if is_remote(path) else open(path, mode)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as fd:
        return fd.read()


def open_bytes(path: str) -> IO[bytes]:
    """A seekable binary file object for `path` (remote files are read into memory first)."""
    return io.BytesIO(read_bytes(path)) if is_remote(path) else open(path, "rb")


def write_atomic(fpath: str, write_fn: Callable[[IO[bytes]], None]) -> None:
    """Write `fpath` so it appears only once complete: a temp name in the same dir, flushed and fsynced, then renamed.

    Remote: written to a local temp file, copied next to `fpath` under a temp name, then renamed. A crash at any point leaves at most a `*.tmp.*` file behind,
    never a truncated `fpath`.
    """
    dpath = os.path.dirname(fpath)
    tmp_fpath = f"{fpath}.tmp.{os.getpid()}"
    if is_remote(fpath):
        gfile = _gfile()
        with tempfile.TemporaryDirectory() as local_dpath:
            local_fpath = os.path.join(local_dpath, os.path.basename(fpath))
            with open(local_fpath, "wb") as fd:
                write_fn(fd)
            gfile.copy(local_fpath, tmp_fpath, overwrite=True)
        gfile.rename(tmp_fpath, fpath, overwrite=True)
        return
    try:
        with open(tmp_fpath, "wb") as fd:
            write_fn(fd)
            fd.flush()
            os.fsync(fd.fileno())
        os.replace(tmp_fpath, fpath)
    except BaseException:
        if os.path.exists(tmp_fpath):
            os.remove(tmp_fpath)
        raise
    _fsync_dir(dpath or ".")


def write_text_atomic(fpath: str, text: str, what: str = "--output_dir") -> None:
    """`write_atomic` for a small text file; a failed write is an `OutputWriteError` that names the file."""
    from utils.errors import OutputWriteError

    try:
        write_atomic(fpath, lambda fd: fd.write(text.encode("utf-8")))
    except OSError as e:
        raise OutputWriteError(f"could not write {fpath} ({e.strerror or e}); check that {what} is on a writable filesystem with free space") from e


def _fsync_dir(dpath: str) -> None:
    """Make the rename itself durable (the directory entry), not only the file's bytes."""
    fd = os.open(dpath, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
