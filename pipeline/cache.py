"""Content-addressed stage cache.

A stage's key is the sha256 of its name, code version, canonical-JSON config and its inputs'
hashes, so keys chain from stage to stage. An entry is a directory written under a temporary name
and os.replace'd into place; every output's sha256 is checked on read, and a corrupt or partial
entry is a miss with a warning, never a wrong hit.
"""

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .config import canonical_json
from .fsutil import atomic_copy, sha256_file


def stage_key(stage, config_values, input_hashes, external):
    import hashlib

    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": config_values,
        "inputs": input_hashes,
        "external": external,
    }
    return hashlib.sha256(canonical_json(payload)).hexdigest()


class StageCache:
    def __init__(self, root, warn=warnings.warn):
        self.root = Path(root) / "stages"
        self.warn = warn

    def get(self, key, outputs):
        """Return (entry_dir, record) for a valid entry, else None."""
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
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key[:12]}-"))
        try:
            hashes = {}
            for name in outputs:
                atomic_copy(Path(src_dir) / name, tmp / name)
                hashes[name] = sha256_file(tmp / name)
            (tmp / "meta.json").write_text(json.dumps({"sha256": hashes, "record": record}))
            try:
                os.replace(tmp, self.root / key)
            except OSError:  # another build stored the same key first: theirs is as good
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def clear(self):
        n = len([p for p in self.root.iterdir() if p.is_dir()]) if self.root.is_dir() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return n
