"""manifest.json: the contract that flashing scripts, gates and CI read, and nothing else.

It carries a schema version checked on read, every artifact's path (relative to the manifest),
sha256 and size, the int8 input/output quantization, metrics per runtime and target, the gate
verdict, and the toolchain versions. Every manifest is validated against `manifest.schema.json` on
write and on read.
"""

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_write_text, sha256_file

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
TOOLCHAIN = {
    "keras": "keras",
    "tensorflow": ("tensorflow", "tensorflow-cpu"),  # whichever distribution provides it
    "jax": "jax",
    "jaxlib": "jaxlib",
    "ai_edge_litert": "ai-edge-litert",
    "onnx": "onnx",
    "tf2onnx": "tf2onnx",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
}


def toolchain_versions(records):
    """The versions that made the artifacts: what each stage's process loaded (recorded with its
    outputs, so a cached stage reports the toolchain that ran it, not the one running now)."""
    loaded = {}
    for rec in records.values():
        for dist, version in (rec.get("toolchain") or {}).items():
            loaded.setdefault(dist, version)
    versions = {"python": loaded.get("python", platform.python_version())}
    for key, dists in TOOLCHAIN.items():
        versions[key] = next((loaded[d] for d in ((dists,) if isinstance(dists, str) else dists) if loaded.get(d)), None)
    try:
        versions["edgebuild"] = metadata.version("edgebuild")
    except metadata.PackageNotFoundError:
        versions["edgebuild"] = None
    return versions


def artifact(build_dir, filename, **fields):
    """The manifest entry of one file of the build directory: path (relative to the manifest), sha256, size."""
    path = build_dir / filename
    return {"path": filename, "sha256": sha256_file(path), "bytes": path.stat().st_size, **fields}


def tensor(t):
    """A model input's or output's manifest entry: dtype, shape and quantization."""
    return {k: t[k] for k in ("dtype", "shape", "scale", "zero_point")}


def from_pixel(contract):
    """What an artifact's input entry says of the pixel (or feature) -> input step (`preprocess.describe`'s
    contract)."""
    formula = contract.get("int8_formula") or contract["float_formula"]
    if contract.get("form") == "tensor":
        return {"from_feature": {k: contract[k] for k in ("scale", "offset")}, "formula": formula}
    return {"from_pixel": {k: contract[k] for k in ("pixel_scale", "pixel_offset", "mean", "std")}, "formula": formula}


def dataset_fields(record, build_dir):
    """The manifest fields of a stage that writes dataset.npz (a build's data stage, a validation's
    test set): the classes, the input shape, the split sizes, the test set's record and the file."""
    return {"class_names": record["class_names"], "input_shape": record["input_shape"], "splits": record["splits"],
            "test_set": record.get("test_set"), "artifacts": {"dataset": artifact(build_dir, "dataset.npz")}}


def merge(into, fields):
    """Merge a stage's manifest fields into the manifest being assembled: nested dicts merge key by
    key (several stages add to `artifacts` and `metrics`), anything else is set."""
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


# the top-level order of a written manifest (keys not named here follow, in the order they came)
ORDER = ("schema_version", "kind", "name", "config_sha256", "config", "seed", "class_names", "input_shape",
         "preprocessing", "preprocess", "built_here", "splits", "test_set", "artifacts", "metrics", "test_split",
         "stages", "toolchain")


def assemble(config, records, contributions):
    """The manifest of a build (or of the validation of a model file, `validate.model`): the head (what it
    is, the config), the fields each stage of the plan contributes (`contributions`, in plan order:
    the stage registry's `publish` hooks), each stage's cache state and the toolchain."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "validation" if config.validate.model else "build",
        "name": config.build.name,
        "config_sha256": config.sha256(),
        "config": config.to_dict(),
        "seed": config.build.seed,
    }
    if config.validate.model:
        manifest["built_here"] = False
    for fields in contributions:
        merge(manifest, fields)
    manifest["stages"] = {name: {"cached": rec["cached"], "wall_seconds": rec["wall_seconds"], "key": rec["key"]}
                          for name, rec in records.items()}
    manifest["toolchain"] = toolchain_versions(records)
    return {k: manifest[k] for k in (*[k for k in ORDER if k in manifest], *[k for k in manifest if k not in ORDER])}


def validate(manifest, origin="manifest", sections=None):
    """Check a manifest against the published JSON Schema, with `sections` ({name: schema fragment}: the
    sections of declared stages) as its properties too; raise InputError naming the field."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    schema["properties"].update(sections or {})
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "(top level)"
        raise InputError(f"{origin} does not follow the manifest schema at {where}: {e.message}.")


def seal(manifest):
    """sha256 over the manifest's content (every field but the seal, canonical JSON): a manifest edited
    after edgebuild wrote it no longer matches its seal."""
    body = {k: v for k, v in manifest.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(path, manifest, sections=None):
    manifest.pop("seal", None)
    validate(manifest, f"the manifest for {path}", sections)
    manifest["seal"] = seal(manifest)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=False, allow_nan=False) + "\n")


def read(path):
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"manifest {path} does not exist. Pass the manifest.json of a finished build.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest {path} is not valid JSON ({exc}). Pass an edgebuild manifest.json.") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise InputError(
            f"manifest schema_version must be {SCHEMA_VERSION}; received {version!r} in {path}. "
            "Rebuild it with this edgebuild version, or use the edgebuild that wrote it."
        )
    validate({k: v for k, v in manifest.items() if k != "seal"}, str(path))
    if "seal" in manifest and manifest["seal"] != seal(manifest):
        raise InputError(
            f"manifest {path} was changed after edgebuild wrote it: its content no longer matches its seal. Use "
            "the manifest as edgebuild wrote it (or run the build or validation again)."
        )
    return manifest


def read_baseline(path, warn=None):
    """A baseline manifest: sealed (an older or hand-edited manifest is refused), with a warning when
    its own gate failed. Its file is remembered in memory as `_file` {path, sha256}, so the gate
    records which file it compared with."""
    manifest = read(path)
    if "seal" not in manifest:
        raise InputError(f"the baseline {path} has no seal: it was written by an older edgebuild or rewritten by "
                         "hand, so its numbers cannot be trusted. Gate against a manifest this edgebuild wrote.")
    _check_own_figures(manifest, path)
    if warn and (manifest.get("gate") or {}).get("verdict") == "fail":
        warn(f"the baseline {path} failed its own gate; comparing with it anyway")
    manifest["_file"] = {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}
    return manifest


def released_metrics(manifest):
    """The host metrics of the model a manifest releases: a build's int8 model, or a validated file."""
    m = manifest["metrics"]
    return m.get("host") if manifest.get("kind") == "validation" else m.get("int8_host")


def _check_own_figures(manifest, path):
    """A baseline's accuracy must follow from its own predictions and labels (per sample) and its
    per-class accuracies from the same: figures that contradict each other are refused."""
    deployed = released_metrics(manifest)
    labels = (manifest.get("test_split") or {}).get("labels")
    if not deployed or labels is None or "top1" not in deployed:
        return
    top1 = deployed["top1"]
    if len(top1) != len(labels):
        raise InputError(f"the baseline {path} has {len(top1)} predictions for {len(labels)} test labels. Use a "
                         "manifest edgebuild wrote.")
    accuracy = sum(p == t for p, t in zip(top1, labels)) / max(1, len(labels))
    if abs(accuracy - deployed["accuracy"]) > 1e-6:
        raise InputError(f"the baseline {path} says accuracy {deployed['accuracy']:.6f}, but its own predictions "
                         f"and labels give {accuracy:.6f}: its figures contradict each other. Use a manifest "
                         "edgebuild wrote.")
    for c, name in enumerate(manifest["class_names"]):
        idx = [i for i, t in enumerate(labels) if t == c]
        want = deployed["per_class"].get(name)
        if idx and want is not None and abs(sum(top1[i] == c for i in idx) / len(idx) - want) > 1e-6:
            raise InputError(f"the baseline {path} says class {name} accuracy {want:.6f}, which its own "
                             "predictions and labels contradict. Use a manifest edgebuild wrote.")


def changed_artifacts(build_dir, manifest):
    """The artifacts of `manifest` whose file in build_dir is missing or has other content."""
    changed = []
    for key, art in (manifest.get("artifacts") or {}).items():
        path = Path(build_dir) / art["path"]
        if not path.is_file():
            changed.append(f"{art['path']} is missing")
        elif path.stat().st_size != art["bytes"] or sha256_file(path) != art["sha256"]:
            changed.append(f"{art['path']} has other content ({path.stat().st_size:,} bytes, manifest says "
                           f"{art['bytes']:,}, sha256 {art['sha256'][:12]}…)")
    return changed
