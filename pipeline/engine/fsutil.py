"""Atomic file writes and hashing: a reader sees the old file or the whole new one, never half."""

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipeline.engine.errors import WriteError


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _replacing(path):
    """Yield a temporary path in `path`'s directory; when the block finishes, fsync it and
    os.replace it onto `path`; if the block fails, remove it. A failure of the write itself (one that
    names the temporary, or no file) is a WriteError naming `path`; others (a missing source) pass as
    they are."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual file mode
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.filename in (None, tmp, str(path), str(path.parent)) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if tmp and os.path.exists(tmp):
        os.unlink(tmp)


def atomic_write_bytes(path, data):
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def atomic_copy(src, dst):
    """Copy src to dst through a temporary file in dst's directory, then os.replace."""
    with _replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def _stream_fd(path):
    """The file descriptor of this process that `path` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N,
    through any links on the way), else None."""
    p = str(path)
    for _ in range(40):
        m = re.fullmatch(rf"/dev/(stdout|stderr)|/dev/fd/(\d+)|/proc/(?:self|{os.getpid()})/fd/(\d+)", p)
        if m:
            return {"stdout": 1, "stderr": 2}.get(m.group(1)) or int(m.group(2) or m.group(3))
        if not os.path.islink(p):
            return None
        p = os.path.join(os.path.dirname(p), os.readlink(p))
    return None


def _output(path):
    """How a file the user named (--junit, --output) is written, as `tee` would, only safer: ("fd", n) for one
    of this process's streams (/dev/stdout, even redirected to a file: written through its own descriptor,
    so it lands where the process's output stands); ("in place", path) for what is no regular file (a pipe,
    a terminal: never replaced by a file); ("replace", file) otherwise, a symlink followed to its file (the
    link stays). A directory is refused."""
    path = Path(path)
    fd = _stream_fd(path)
    if fd is not None:
        return "fd", fd
    if path.is_dir():
        raise WriteError(21, "Is a directory", str(path))
    if path.exists() and not path.is_file():
        return "in place", path
    return "replace", Path(os.path.realpath(path)) if path.is_symlink() else path


def write_output(path, data):
    """Write `data` (bytes) to a file the user named (see _output)."""
    import sys

    how, where = _output(path)
    if how == "replace":
        return atomic_write_bytes(where, data)
    try:
        if how == "fd":
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            view = memoryview(data)
            while view:
                view = view[os.write(where, view):]
        else:
            with open(where, "wb") as f:
                f.write(data)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror, str(path)) from None


def copy_output(src, path):
    """Copy src to a file the user named (see _output), without reading it whole when it is a file."""
    how, where = _output(path)
    if how == "replace":
        return atomic_copy(src, where)
    write_output(path, Path(src).read_bytes())


def atomic_save_model(model, path):
    """`model.save` to a temporary `.keras` next to `path`, then os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        _make_reproducible(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a failed write names the model being written, not its temporary
        if exc.filename in (None, str(tmp), str(path)):
            raise WriteError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _make_reproducible(keras_path):
    """Rewrite a `.keras` zip so the same model gives the same bytes: fixed entry timestamps, entries
    in name order, and no save date in metadata.json (Keras stamps the wall-clock time in both)."""
    import json
    import re
    import zipfile

    with zipfile.ZipFile(keras_path) as src:
        entries = {info.filename: src.read(info.filename) for info in src.infolist()}
    if "metadata.json" in entries:
        meta = json.loads(entries["metadata.json"])
        meta.pop("date_saved", None)
        entries["metadata.json"] = json.dumps(meta).encode()
    if "config.json" in entries:
        # shared_object_id is the id() (a memory address) of an object used twice; renumber in order
        ids = {}
        entries["config.json"] = re.sub(
            rb'"shared_object_id": (\d+)',
            lambda m: b'"shared_object_id": %d' % ids.setdefault(m.group(1), len(ids) + 1),
            entries["config.json"],
        )
    tmp = Path(f"{keras_path}.zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            dst.writestr(info, entries[name])
    os.replace(tmp, keras_path)


def atomic_save_npz(path, **arrays):
    """An uncompressed .npz whose bytes depend only on the arrays (np.savez stamps the time into
    every zip member, so the same data would hash differently and defeat the stage cache)."""
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    atomic_write_bytes(path, buf.getvalue())


@contextmanager
def publishing_dir(final):
    """Yield a new hidden directory beside `final`; when the block finishes, rename it to `final`
    (if another process published `final` first, theirs is kept: it is as good); if the block
    fails, remove it. A reader never sees a half-filled `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name[:40]}-"))
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def file_lock(path, when_held):
    """Hold an exclusive lock on the file `path` (made if missing) for the block, with this process's
    pid written in it. When another process holds it, `when_held(holder)` is called first with what the
    holder wrote ("pid N", or "" if it wrote nothing): it raises to refuse, or returns to wait for the
    lock. The lock goes with the process, so a killed holder never leaves it held."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        if held:
            f.seek(0)
            when_held(f.read().strip())
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def atomic_create(src, dst):
    """Copy src to dst only if dst does not exist, atomically (a hard link of a finished temporary
    file, which refuses to replace): True if this call created dst, False if it was already there."""
    with _replacing(Path(dst).with_name(f".{Path(dst).name}.new")) as tmp:
        shutil.copyfile(src, tmp)
        try:
            os.link(tmp, dst)
            created = True
        except FileExistsError:
            created = False
    os.unlink(Path(dst).with_name(f".{Path(dst).name}.new"))
    return created
