"""engine.cache: entries are verified on read, keys change with every part they are made of."""

import json

from pipeline.engine.cache import StageCache, stage_key
from pipeline.engine.stage import Stage

STAGE = Stage("s", "pipeline.stages.data", config=("train.epochs",), outputs=("out.txt",), toolchain=("numpy",))


def _entry(tmp_path, text="hello"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "out.txt").write_text(text)
    return src


def test_put_then_get_returns_the_outputs_and_record(tmp_path):
    cache = StageCache(tmp_path / "c")
    cache.put("k1", _entry(tmp_path), ("out.txt",), {"n": 1})
    entry, record = cache.get("k1", ("out.txt",))
    assert (entry / "out.txt").read_text() == "hello" and record == {"n": 1}
    assert cache.get("k2", ("out.txt",)) is None
    assert not [p for p in (tmp_path / "c" / "stages").iterdir() if p.name.startswith(".")], "no temporary left"


def test_a_corrupt_or_partial_entry_is_a_miss_with_a_warning(tmp_path):
    warnings = []
    cache = StageCache(tmp_path / "c", warn=warnings.append)
    cache.put("k1", _entry(tmp_path), ("out.txt",), {})
    (tmp_path / "c" / "stages" / "k1" / "out.txt").write_text("rot")
    assert cache.get("k1", ("out.txt",)) is None and "corrupt" in warnings[-1]
    cache.put("k2", _entry(tmp_path), ("out.txt",), {})
    (tmp_path / "c" / "stages" / "k2" / "meta.json").write_text("{")
    assert cache.get("k2", ("out.txt",)) is None and len(warnings) == 2
    assert not (tmp_path / "c" / "stages" / "k1").exists(), "a corrupt entry is removed"
    cache.put("k3", _entry(tmp_path), ("out.txt",), {})
    assert cache.clear() == 1 and cache.get("k3", ("out.txt",)) is None


def test_the_key_changes_with_config_inputs_external_and_params_only():
    selected = {"train": {"epochs": 3}}
    key, parts = stage_key(STAGE, selected, {"a": "1"}, {"f": "x"})
    assert parts["toolchain"]["numpy"] and parts["code"] and "pipeline.stages.data" in parts["modules"]
    assert stage_key(STAGE, selected, {"a": "1"}, {"f": "x"})[0] == key
    assert stage_key(STAGE, {"train": {"epochs": 4}}, {"a": "1"}, {"f": "x"})[0] != key
    assert stage_key(STAGE, selected, {"a": "2"}, {"f": "x"})[0] != key
    assert stage_key(STAGE, selected, {"a": "1"}, {"f": "y"})[0] != key
    other = Stage("s", "pipeline.stages.data", config=("train.epochs",), outputs=("out.txt",), toolchain=("numpy",),
                  params={"target": "t"})
    assert stage_key(other, selected, {"a": "1"}, {"f": "x"})[0] != key
    json.dumps(parts)  # recorded with the stage: plain JSON


def test_the_key_covers_the_host_platform_and_a_jax_stages_xla_flags(monkeypatch):
    import platform

    jax_stage = Stage("t", "pipeline.stages.train", config=("train.epochs",), outputs=("o",), backend="jax")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    key, parts = stage_key(jax_stage, {"train": {"epochs": 3}}, {}, {})
    plain, _ = stage_key(STAGE, {"train": {"epochs": 3}}, {}, {})
    assert parts["host"]["machine"] == platform.machine() and parts["host"]["system"] == platform.system()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert stage_key(jax_stage, {"train": {"epochs": 3}}, {}, {})[0] != key
    assert stage_key(STAGE, {"train": {"epochs": 3}}, {}, {})[0] == plain  # no XLA in a numpy stage
    monkeypatch.setattr(platform, "machine", lambda: "aarch64" if parts["host"]["machine"] != "aarch64" else "x86_64")
    assert stage_key(STAGE, {"train": {"epochs": 3}}, {}, {})[0] != plain


def test_entries_a_stage_declares_unkeyed_do_not_change_the_key():
    stage = Stage("s", "pipeline.stages.data", config=("data.calibration_file", "data.calibration_samples"),
                  key_ignores=("data.calibration_file",))
    one = stage_key(stage, {"data": {"calibration_file": "a.json", "calibration_samples": 5}}, {}, {})[0]
    two = stage_key(stage, {"data": {"calibration_file": "b.json", "calibration_samples": 5}}, {}, {})[0]
    three = stage_key(stage, {"data": {"calibration_file": "a.json", "calibration_samples": 6}}, {}, {})[0]
    assert one == two != three


def test_an_upgraded_toolchain_changes_the_key(tmp_path, monkeypatch):
    key, _ = stage_key(STAGE, {"train": {"epochs": 3}}, {}, {})
    dist = tmp_path / "numpy-99.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 99.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    upgraded, parts = stage_key(STAGE, {"train": {"epochs": 3}}, {}, {})
    assert upgraded != key and parts["toolchain"]["numpy"] == "99.0"


def test_a_manifest_is_true_only_while_every_artifact_it_names_is_unchanged(tmp_path):
    import hashlib

    from pipeline.orchestrate.build import manifest_still_true

    (tmp_path / "model.tflite").write_bytes(b"int8 model")
    digest = hashlib.sha256(b"int8 model").hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"int8": {"path": "model.tflite", "sha256": digest, "bytes": 10}}}))
    assert manifest_still_true(tmp_path)
    (tmp_path / "model.tflite").write_bytes(b"another model")  # a failed rebuild replaced it
    assert not manifest_still_true(tmp_path)
    (tmp_path / "model.tflite").unlink()
    assert not manifest_still_true(tmp_path)
    (tmp_path / "manifest.json").unlink()
    assert manifest_still_true(tmp_path)  # no manifest: nothing vouched for
