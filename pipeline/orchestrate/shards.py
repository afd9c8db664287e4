"""A stage run in parts on separate machines, then merged: `edgebuild validate BUILD --target T
--shard i/N` runs part i of N of each target stage named; `edgebuild merge` makes the stages' outputs
from all the parts and publishes the manifest and gate as a whole run would.

A shard file (`<build>/shards/<stage>.shard-<i>-of-<N>.npz`) holds the part's arrays and a `meta`
entry: the stage, its cache key, i and N, the part's record and each array's sha256. The key covers the
stage's code, toolchain, config and input files, so merge refuses a part made from another build, and
the sha256s let a part be verified on its own. With EDGEBUILD_SHARD_KEY (a secret the shard and merge
jobs share) a part is signed, and a merge that holds the secret takes only signed parts and stores the
merged outputs in the stage cache (and the remote one) under the stage's key: a later build gets them as
a hit. An unsigned merge is trusted as given and never cached.
"""

import dataclasses
import hashlib
import hmac
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline import stages as stage_registry
from pipeline.orchestrate import build as engine
from pipeline.engine.cache import StageCache
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.progress import Progress
from pipeline.engine.remote import remote_for
from pipeline.engine.stage import StageContext, config_view
from pipeline.engine.text import first_few

SHARD_DIR = "shards"
# The secret shard and merge jobs share (a CI secret): a shard signed with it proves it came from a job
# that holds it. Without it merge trusts the files as given, and keeps the merged result out of the caches.
KEY_ENV = "EDGEBUILD_SHARD_KEY"
KEY = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"^(?P<stage>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.npz$")


def parse(text):
    """'i/N' -> (i, N), 1 <= i <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(f"--shard is i/N with 1 <= i <= N (the i-th of N parts); received {text!r}. "
                         "Write it as, for example, --shard 1/4.")
    return int(m.group(1)), int(m.group(2))


def shard_path(build_dir, stage_name, i, n):
    return Path(build_dir) / SHARD_DIR / f"{stage_name.replace(':', '-')}.shard-{i}-of-{n}.npz"


def _array_sha256(a):
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def _stages_named(config, names):
    plan = stage_registry.plan(config)
    by_name = {s.name: s for s in plan}
    chosen = []
    for name in names:
        stage = by_name.get(name)
        if stage is None or not stage.shardable:
            shardable = [s.name for s in plan if s.shardable]
            raise InputError(f"only a build's target stages run in shards; {name!r} is not one of this build's "
                             f"({first_few(shardable, 6)}). Name a target of validate.targets with --target.")
        chosen.append(stage)
    return chosen


def run(config, options, names, i, n):
    """Run part i of n of each stage named, from the outputs in the build directory (no build lock:
    parts of one build may run side by side); returns the shard files written."""
    build_dir = config.build_dir
    records = engine.load_records(build_dir)
    written = []
    for stage in _stages_named(config, names):
        external = stage.external(config) if stage.external else {}
        inputs, selected, key, _ = engine.prepare(stage, config, build_dir, external, records)
        dest = shard_path(build_dir, stage.name, i, n)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.stem}-"))
        started = time.perf_counter()
        try:
            part = dataclasses.replace(stage, params={**stage.params, "shard": [i, n]})
            (build_dir / "logs").mkdir(parents=True, exist_ok=True)
            record = engine.run_in_process(part, selected, inputs, staging, options,
                                           build_dir / "logs" / f"{dest.stem}.log", remote=config.cache.remote)
            import numpy as np

            with np.load(staging / "shard.npz") as f:
                arrays = {k: f[k] for k in f.files}
            meta = {"stage": stage.name, "params": stage.params, "key": key, "shard": [i, n], "record": record,
                    "sha256": {k: _array_sha256(v) for k, v in arrays.items()}}
            secret = _secret()
            if secret:
                meta["hmac"] = _signature(meta, secret)
            atomic_save_npz(dest, meta=np.array(json.dumps(meta)), **arrays)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        options.log(f"{'ran':>6}  {stage.name:<28} {time.perf_counter() - started:>7.1f} s  shard {i}/{n} -> {dest}")
        written.append(dest)
    return written


def _secret():
    value = os.environ.get(KEY_ENV, "")
    return value.encode() if value else None


def _signature(meta, secret):
    """HMAC-SHA256 of the shard's meta (which holds every array's sha256) under the jobs' secret."""
    body = json.dumps({k: v for k, v in meta.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def _check_meta(meta):
    """The fields merge reads, with their types: a crafted or damaged shard is refused by name."""
    shard = meta.get("shard") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("stage"), str) or not isinstance(meta.get("params"), dict) \
            or not isinstance(meta.get("key"), str) or not KEY.fullmatch(meta["key"]) \
            or not isinstance(meta.get("record"), dict) or not isinstance(meta.get("sha256"), dict) \
            or not (isinstance(shard, list) and len(shard) == 2 and all(type(v) is int for v in shard)
                    and 1 <= shard[0] <= shard[1]) \
            or not (meta.get("hmac") is None or (isinstance(meta["hmac"], str) and KEY.fullmatch(meta["hmac"]))):
        raise ValueError("its meta entry lacks stage, params, key, shard [i, N], record or sha256, or has one of "
                         "another type")


def read(path):
    """(meta, arrays) of a shard file, verified against the sha256s it records."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        _check_meta(meta)
        bad = [k for k, v in arrays.items() if meta["sha256"].get(k) != _array_sha256(v)]
        if bad or set(meta["sha256"]) != set(arrays):
            raise ValueError(f"its arrays {first_few(bad or sorted(set(meta['sha256']) ^ set(arrays)), 3)} do not "
                             "match the sha256 it records")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"a shard file must be one edgebuild wrote, unchanged; {path} is not ({exc}). Run that "
                         "shard again.") from None
    return meta, arrays


def _signed(pieces):
    """Whether every shard carries a valid signature under the jobs' secret (EDGEBUILD_SHARD_KEY): False
    when merge has no secret; with one, a shard not signed with it is refused."""
    secret = _secret()
    if secret is None:
        return False
    forged = [str(p) for p, m, _ in pieces
              if not (isinstance(m.get("hmac"), str) and hmac.compare_digest(m["hmac"], _signature(m, secret)))]
    if forged:
        raise InputError(f"merge runs with {KEY_ENV} set, so it takes only shards signed with that secret; "
                         f"{first_few(forged, 3)} {'is' if len(forged) == 1 else 'are'} unsigned or signed with "
                         f"another. Run the shard jobs with the same {KEY_ENV}.")
    return True


def find(build_dir, paths):
    """The shard files among `paths` (files, or directories searched for *.shard-*-of-*.npz); by default
    the build directory's shards/."""
    found = []
    gone = [str(p) for p in paths if not Path(p).exists()]
    if gone:
        raise InputError(f"merge reads the shard files (or directories of them) it is given; {first_few(gone, 3)} "
                         "does not exist. Pass the paths the shard jobs' files were downloaded to.")
    for p in [Path(p) for p in paths] or [Path(build_dir) / SHARD_DIR]:
        found += sorted(q for q in p.rglob("*.npz") if NAME.match(q.name)) if p.is_dir() else [p]
    if not found:
        raise InputError(f"merge needs the shard files of `edgebuild validate BUILD --target T --shard i/N`; none "
                         f"are in {first_few([str(p) for p in paths] or [str(Path(build_dir) / SHARD_DIR)], 3)}. "
                         "Pass the files (or the directory they were downloaded to).")
    return found


def params_of(build_dir, paths):
    """The stage parameters recorded in the shard files (for example which target each is for)."""
    return [read(path)[0]["params"] for path in find(build_dir, paths)]


def merge(config, options, paths, baseline=None):
    """Merge the shards of every stage they belong to into the build directory, then publish the
    manifest and gate; returns a BuildResult."""
    build_dir = config.build_dir
    by_stage = {}
    for path in find(build_dir, paths):
        meta, arrays = read(path)
        by_stage.setdefault(meta["stage"], []).append((path, meta, arrays))
    chosen = _stages_named(config, list(by_stage))
    plan = stage_registry.plan(config)
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    cache = StageCache(options.cache_dir, warn=warn, remote=remote_for(config.cache.remote, warn)) \
        if config.cache.enabled else None
    result = engine.BuildResult(build_dir)
    with engine.build_lock(build_dir):
        records = engine.load_records(build_dir)
        for stage in chosen:
            started = time.perf_counter()
            external = stage.external(config) if stage.external else {}
            inputs, selected, key, parts = engine.prepare(stage, config, build_dir, external, records)
            pieces = _complete(stage, by_stage[stage.name], key)
            signed = _signed(pieces)
            if not signed:
                warn(f"the shards of {stage.name} are not signed ({KEY_ENV} is not set), so merge trusts them as "
                     "given and keeps the merged result out of the stage cache; set the same secret in the shard "
                     "and merge jobs")
            staging = Path(tempfile.mkdtemp(dir=build_dir, prefix=f".stage-{stage.name.replace(':', '-')}-"))
            try:
                module = importlib.import_module(stage.module)
                ctx = StageContext(Progress(None, quiet=True), str(options.cache_dir), stage.params,
                                   config.cache.remote)
                record = module.merge(config_view(selected), inputs, [(m["record"], a) for _, m, a in pieces],
                                      staging, ctx)
                record["merged_from"] = [str(p) for p, _, _ in pieces]
                record["shards_signed"] = signed
                engine.publish_outputs(stage, staging, build_dir, cache if signed else None, key, record)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            records[stage.name] = result.records[stage.name] = engine.write_record(
                stage, config, build_dir, options, key, parts, record, None, started,
                ran=f"merged {len(pieces)}")
        problem = engine.why_not_publishable(plan, config, records, build_dir)
        if problem:
            raise InputError(f"merge publishes the build's manifest, which needs every stage finished; {problem}. "
                             "Run `edgebuild build --until evaluate` (and the targets not sharded) first.")
        result.manifest, result.gate = engine.publish(config, {s.name: records[s.name] for s in plan}, build_dir,
                                                      baseline)
    return result


def _complete(stage, pieces, key):
    """The shards of one stage in order, checked: made from this build (the same key) and every i of one N
    present exactly once."""
    other = [str(p) for p, m, _ in pieces if m["key"] != key]
    if other:
        raise InputError(f"every shard of {stage.name} must be made from this build (the same model, test set, "
                         f"config and edgebuild); {first_few(other, 3)} {'was' if len(other) == 1 else 'were'} not. "
                         "Run those shards again on this build.")
    counts = {m["shard"][1] for _, m, _ in pieces}
    if len(counts) > 1:
        raise InputError(f"the shards of {stage.name} must all split it into the same N parts; they use "
                         f"{sorted(counts)}. Run every shard with one --shard i/N.")
    n = counts.pop()
    seen = sorted(m["shard"][0] for _, m, _ in pieces)
    if seen != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(seen))
        repeated = sorted({i for i in seen if seen.count(i) > 1})
        raise InputError(f"{stage.name} needs each of its {n} shards exactly once; "
                         + (f"missing {', '.join(f'{i}/{n}' for i in missing)}" if missing else "")
                         + ("; " if missing and repeated else "")
                         + (f"given more than once {', '.join(f'{i}/{n}' for i in repeated)}" if repeated else "")
                         + ". Run the missing shards, or pass each file once.")
    return sorted(pieces, key=lambda piece: piece[1]["shard"][0])
