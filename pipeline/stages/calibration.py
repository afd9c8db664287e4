"""calibration stage: verify the versioned calibration set, or make a new one.

`data.calibration_file` is the versioned copy (kept in version control). When it exists it is an
external input: the stage checks that its samples are still in this build's train split with the
same content, and outputs it unchanged. When it does not, the stage picks a stratified sample of
the train split and the engine pins the output there (the declared `pins`); the next build verifies
it. Outputs `calibration.json` (sample ids + content hashes, stratified by class).
"""

import hashlib
import json
from pathlib import Path

from pipeline.data.calibration import check_calibration, new_calibration
from pipeline.data.splits import load_dataset
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_write_text
from pipeline.engine.stage import Stage


def external(config):
    path = Path(config.data.calibration_file)
    if path.is_dir():
        raise InputError(f"data.calibration_file must name a file; {path} is a directory. Name a .json file in it, "
                         f"for example {path / 'calibration-v1.json'}.")
    return {"calibration_file": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None}


STAGE = Stage(
    "calibration", __name__, inputs=("dataset.npz",), outputs=("calibration.json",), toolchain=("numpy",),
    config=("build.seed", "data.source", "data.image_size", "data.channels", "data.calibration_samples",
            "data.calibration_file"),
    key_ignores=("data.calibration_file",), external=external, pins={"calibration.json": "data.calibration_file"},
)


def manifest(record, config):
    """The manifest's "calibration" section: the versioned calibration set the int8 model was made with."""
    pin = record["pins"]["calibration.json"]
    return {k: record[k] for k in ("samples", "sha256")} | {"file": pin["path"], "created": pin["written"]}


def publish(records, config, build_dir):
    from pipeline.release.manifest import artifact

    return {"artifacts": {"calibration": artifact(build_dir, "calibration.json")}}


def run(cfg, inputs, out_dir, ctx):
    data_cfg, seed = cfg.data, cfg.build.seed
    data = load_dataset(inputs["dataset.npz"])
    images, labels, ids, train_idx = data["x"], data["y"], data["ids"].tolist(), data["train"]
    path = Path(data_cfg.calibration_file)
    if path.exists():
        try:
            calib = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc}). Restore it from version control, or "
                             "point data.calibration_file at a new path to create a new version.") from None
        check_calibration(calib, ids, images, labels, train_idx, data_cfg, path)
        created = False
    else:
        calib = new_calibration(images, labels, ids, train_idx, [str(c) for c in data["class_names"]], data_cfg, seed)
        created = True
    text = json.dumps(calib, indent=1) + "\n"
    atomic_write_text(out_dir / "calibration.json", text)
    return {"samples": len(calib["samples"]), "created": created, "sha256": hashlib.sha256(text.encode()).hexdigest()}
