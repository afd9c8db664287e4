"""The remote cache: stage outputs and emulated target environments shared by every runner that
points at one object store (`s3://bucket/prefix`) or shared mount (`file:///mnt/cache`), through fsspec.

Layout under the URL:
- `blobs/<sha256>`: file contents, named by their sha256, so immutable; a writer skips one already there.
- `stages/<key>.json`: a stage entry, {"sha256": {output: blob}, "record": ...}, written after its blobs.
- `environments/<name>-<env key>.json`: an emulated target environment, {"blob": sha256, "bytes": n}, the
  directory as one zstd-compressed tar.

A reader never sees a half-written object: an object store publishes an object only once its upload
completed, and on a mount each file is written under a temporary name and renamed. Every blob is
verified by sha256 when read, so a corrupt or partial one is a miss with a warning, never a wrong hit.
Two runners writing one key write the same blobs and each a complete entry: either entry is valid.
A remote that cannot be reached or written is a warning: the build goes on with the local cache.
Credentials come from the store's own chain (for S3: the AWS environment variables and config
files); edgebuild neither reads nor logs them, and refuses a URL that carries any.
"""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import publishing_dir, sha256_file


def check_url(url):
    """Refuse a remote URL that carries credentials (the manifest records the config) or no scheme."""
    if not url:
        return
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise InputError(f"cache.remote must be a URL with a scheme and '://' (s3://bucket/prefix, "
                         f"file:///shared/cache); received {url!r}. Write it in that form.")
    if parts.password or parts.username:
        raise InputError("cache.remote must not carry credentials (they would be written to the manifest); received "
                         "a URL with a user name in it. Remove them from the URL and use the store's own credential "
                         "chain (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials).")


class RemoteCache:
    def __init__(self, url, warn):
        check_url(url)
        try:
            import fsspec

            options = {"config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 2}}} \
                if urlsplit(url).scheme in ("s3", "s3a") else {}
            self.fs, self.root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise InputError(f"cache.remote {url!r} cannot be opened: {exc}. Use an s3:// or file:// URL, or "
                             "install the fsspec filesystem for its scheme.") from None
        self.url = url
        self.warn = warn
        self.down = False  # set by the first failure to reach the remote: the rest of the run goes without it
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _path(self, *parts):
        return "/".join([self.root.rstrip("/"), *parts])

    # --- objects

    def _put(self, local_path, path):
        if self.local:  # a rename on one file system is atomic; an object store's upload already is
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local_path), tmp)
            self.fs.mv(tmp, path)
        else:
            self.fs.put_file(str(local_path), path)

    def _put_json(self, obj, path):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(obj, f)
        try:
            self._put(f.name, path)
        finally:
            os.unlink(f.name)

    def _get_json(self, path):
        """The JSON object at `path`, or None when there is none."""
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _put_blob(self, local_path, sha):
        path = self._path("blobs", sha)
        if not self.fs.exists(path):
            self._put(local_path, path)

    def _get_blob(self, sha, dest):
        """Download blob `sha` to `dest` and verify it; ValueError when its content is not `sha`."""
        self.fs.get_file(self._path("blobs", sha), str(dest))
        got = sha256_file(dest)
        if got != sha:
            raise ValueError(f"blob {sha[:12]} holds content with sha256 {got[:12]} (corrupt or partial)")

    def _guard(self, what, fn, *args):
        """Run a remote operation; a failure is a warning and None (the local cache carries on). A corrupt
        or missing object is a miss; any other failure (unreachable, no such bucket, denied) turns the
        remote off for the rest of the run, so a dead endpoint costs one timeout, not one per stage."""
        if self.down:
            return None
        try:
            return fn(*args)
        except (ValueError, FileNotFoundError) as exc:
            self.warn(f"remote cache {self.url}: {what} failed ({type(exc).__name__}: {exc}); continuing without it")
        except Exception as exc:  # botocore and aiohttp raise their own types for network and auth errors
            self.down = True
            self.warn(f"remote cache {self.url}: {what} failed ({type(exc).__name__}: {exc}); this run goes on "
                      "without the remote cache. Check the URL, the bucket and the credentials.")
        return None

    # --- stage entries

    def fetch_stage(self, key, outputs, local_entry):
        """Restore stage entry `key` into the local cache directory `local_entry`; True on a verified hit."""
        return bool(self._guard(f"reading stage entry {key[:12]}", self._fetch_stage, key, outputs, Path(local_entry)))

    def _fetch_stage(self, key, outputs, local_entry):
        meta = self._get_json(self._path("stages", f"{key}.json"))
        if meta is None:
            return False
        with publishing_dir(local_entry) as tmp:
            for name in outputs:
                self._get_blob(meta["sha256"][name], tmp / name)
            (tmp / "meta.json").write_text(json.dumps(meta))
        return True

    def has_stage(self, key):
        return bool(self._guard("looking up a stage entry", self.fs.exists, self._path("stages", f"{key}.json")))

    def push_stage(self, key, local_entry):
        """Upload a local stage entry (its blobs first, then the entry that names them)."""
        self._guard(f"writing stage entry {key[:12]}", self._push_stage, key, Path(local_entry))

    def _push_stage(self, key, local_entry):
        meta = json.loads((local_entry / "meta.json").read_text())
        for name, sha in meta["sha256"].items():
            self._put_blob(local_entry / name, sha)
        self._put_json(meta, self._path("stages", f"{key}.json"))
        return True

    # --- emulated target environments

    def fetch_tree(self, name, dest, log=print):
        """Restore the directory stored as `name` into `dest` (published atomically); True on a hit."""
        return bool(self._guard(f"restoring {name}", self._fetch_tree, name, Path(dest), log))

    def _fetch_tree(self, name, dest, log):
        ref = self._get_json(self._path("environments", f"{name}.json"))
        if ref is None:
            return False
        log(f"{name}: restoring from the remote cache ({ref['bytes'] / 2**20:.0f} MiB)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as work:
            archive = Path(work) / "tree.tar.zst"
            self._get_blob(ref["blob"], archive)
            with publishing_dir(dest) as tmp:
                _tar(["-x", "-f", str(archive), "-C", str(tmp)])
        return True

    def push_tree(self, name, src, log=print):
        """Upload directory `src` as `name` (skipped when the remote has it)."""
        if self._guard(f"looking up {name}", self.fs.exists, self._path("environments", f"{name}.json")):
            return
        self._guard(f"writing {name}", self._push_tree, name, Path(src), log)

    def _push_tree(self, name, src, log):
        with tempfile.TemporaryDirectory(dir=src.parent, prefix=".push-") as work:
            archive = Path(work) / "tree.tar.zst"
            _tar(["-c", "-f", str(archive), "-C", str(src), "."])
            sha, size = sha256_file(archive), archive.stat().st_size
            log(f"{name}: storing in the remote cache ({size / 2**20:.0f} MiB)")
            self._put_blob(archive, sha)
            self._put_json({"blob": sha, "bytes": size}, self._path("environments", f"{name}.json"))
        return True


def _tar(args):
    """GNU tar through zstd (a 700 MB environment packs in about 2 s, against 10 s with gzip)."""
    if shutil.which("zstd") is None:
        raise OSError("zstd is not installed (apt-get install -y zstd; the README's install command does)")
    proc = subprocess.run(["tar", "--zstd", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"tar {args[0]} failed: {proc.stderr.strip()[-300:]}")


def remote_for(url, warn):
    """The RemoteCache for cache.remote, or None when it is ''."""
    return RemoteCache(url, warn) if url else None
