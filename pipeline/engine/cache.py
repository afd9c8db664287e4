"""Content-addressed stage cache.

A stage's key is the sha256 of its name, the digest of its code (its module and every project module
it imports), the versions of the tools its process runs, its declared config, its inputs' hashes
and its external inputs, so keys chain from stage to stage and an edit, an upgrade or a changed
file is a miss. An entry is a directory written under a temporary name and os.replace'd into place;
every output's sha256 is checked on read, and a corrupt or partial entry is a miss with a warning,
never a wrong hit.
"""

import hashlib
import json
import os
import platform
import shutil
import warnings
from pathlib import Path

from pipeline.engine.codehash import code_digest, versions
from pipeline.engine.config import canonical_json
from pipeline.engine.fsutil import atomic_copy, publishing_dir, sha256_file

RUNNER = "pipeline.engine.runner"  # runs every stage: its code is part of every key


def keyed_config(stage, selected):
    """The declared config without the entries the stage declares as not keyed."""
    keyed = {section: dict(values) for section, values in selected.items()}
    for entry in stage.key_ignores:
        section, _, key = entry.partition(".")
        keyed.get(section, {}).pop(key, None)
    return keyed


def host_platform():
    """What the stage's process runs on besides its Python packages: the machine, the OS and the C library
    (a wheel's compiled code, and so an output's bytes, may differ between them)."""
    libc = platform.libc_ver()
    return {"machine": platform.machine(), "system": platform.system(), "libc": "-".join(v for v in libc if v)}


def stage_key(stage, selected, input_hashes, external):
    """(key, parts): the cache key of one run of `stage` and what it is made of. A JAX stage's key covers
    the XLA_FLAGS the user set (they change the compiled code: the ISA cap the stage process adds is in the
    runner's code, which every key covers)."""
    digest, modules = code_digest(stage.module, RUNNER)
    parts = {
        "stage": stage.name,
        "code": digest,
        "modules": modules,
        "toolchain": versions(stage.toolchain),
        "host": host_platform(),
        "config": keyed_config(stage, selected),
        "params": stage.params,
        "inputs": input_hashes,
        "external": external,
    }
    if stage.backend == "jax":
        parts["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return hashlib.sha256(canonical_json(parts)).hexdigest(), parts


class StageCache:
    """The local cache, over an optional remote one (`pipeline.engine.remote`): a local miss is looked
    up remotely and restored locally; a stored entry is written back to the remote."""

    def __init__(self, root, warn=warnings.warn, remote=None):
        self.root = Path(root) / "stages"
        self.warn = warn
        self.remote = remote
        self.source = {}  # key -> "local" or "remote": where the last get found it

    def get(self, key, outputs):
        """Return (entry_dir, record) for a valid entry, else None."""
        entry = self.root / key
        self.source[key] = "local"
        if not entry.is_dir() and self.remote is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.source[key] = "remote"
            self.remote.fetch_stage(key, outputs, entry)
        hit = self._get_local(key, outputs)
        if hit and self.source[key] == "local" and self.remote is not None and not self.remote.has_stage(key):
            self.remote.push_stage(key, entry)  # a runner with a warm local cache fills an empty remote
        return hit

    def _get_local(self, key, outputs):
        entry = self.root / key
        meta_path = entry / "meta.json"
        if not entry.is_dir():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            for name in outputs:
                if sha256_file(entry / name) != meta["sha256"][name]:
                    raise ValueError(f"{name} does not match its recorded sha256")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.warn(f"cache entry {key[:12]} is corrupt ({exc}); ignoring it and re-running the stage")
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return entry, meta["record"]

    def put(self, key, src_dir, outputs, record):
        """Store a stage's outputs; a cache that cannot be written (full, read-only) is a warning:
        the build goes on without it."""
        try:
            self._put(key, src_dir, outputs, record)
        except OSError as exc:
            self.warn(f"could not store stage outputs in the cache {self.root} ({exc.strerror}); continuing without")
            return
        if self.remote is not None:
            self.remote.push_stage(key, self.root / key)

    def _put(self, key, src_dir, outputs, record):
        with publishing_dir(self.root / key) as tmp:
            hashes = {}
            for name in outputs:
                atomic_copy(Path(src_dir) / name, tmp / name)
                hashes[name] = sha256_file(tmp / name)
            (tmp / "meta.json").write_text(json.dumps({"sha256": hashes, "record": record}))

    def clear(self):
        n = len([p for p in self.root.iterdir() if p.is_dir()]) if self.root.is_dir() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return n
