"""The orchestrator's helpers, in-process: shard completeness, config overrides, consistency of a build
directory, and putting back the last good build."""

import hashlib
import json
from types import SimpleNamespace

import pytest

from pipeline.cli import _targets_for
from pipeline.engine import config as config_mod
from pipeline.engine.config import parse_override
from pipeline.engine.errors import InputError
from pipeline.engine.stage import Stage
from pipeline.orchestrate import build, shards

STAGE = SimpleNamespace(name="target:rpi5-litert")


def piece(i, n, key="k"):
    return (f"s{i}-of-{n}.npz", {"key": key, "shard": [i, n]}, {})


def test_shards_are_complete_only_with_each_part_of_one_split_exactly_once():
    assert [p[1]["shard"][0] for p in shards._complete(STAGE, [piece(3, 3), piece(1, 3), piece(2, 3)], "k")] == [1, 2, 3]
    with pytest.raises(InputError, match=r"missing 2/3"):
        shards._complete(STAGE, [piece(1, 3), piece(3, 3)], "k")
    with pytest.raises(InputError, match=r"given more than once 1/2"):
        shards._complete(STAGE, [piece(1, 2), piece(1, 2), piece(2, 2)], "k")
    with pytest.raises(InputError, match=r"the same N parts; they use \[2, 3\]"):
        shards._complete(STAGE, [piece(1, 2), piece(2, 3)], "k")
    with pytest.raises(InputError, match=r"made from this build.*s2-of-2.npz"):
        shards._complete(STAGE, [piece(1, 2), piece(2, 2, key="other")], "k")


@pytest.mark.parametrize("text, expected", [
    ("train.epochs=2", ("train", "epochs", 2)),
    ("data.source=my/photos", ("data", "source", "my/photos")),  # a bare word is a string
    ('validate.targets=["rpi5-litert"]', ("validate", "targets", ["rpi5-litert"])),
    ("gate.max_int8_drop=0.5", ("gate", "max_int8_drop", 0.5)),
    ("build.name=a=b", ("build", "name", "a=b")),  # the first '=' splits
])
def test_parse_override_reads_the_value_as_toml(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["train.epochs", "epochs=2", "=2", "v=" + "[" * 5000])
def test_parse_override_refuses_what_is_no_section_key_value(text):
    with pytest.raises(InputError, match="--set"):
        parse_override(text)


def test_a_stage_must_run_with_the_config_its_inputs_were_made_with():
    stage = Stage("evaluate", "m", config=("preprocess",))
    made = {"stage": "export", "config": {"preprocess": {"mean": [0.5], "std": []}}}
    build.check_consistent(stage, {"preprocess": {"mean": [0.5], "std": []}}, [made])
    build.check_consistent(stage, {"train": {"epochs": 3}}, [made])  # nothing shared: nothing to compare
    with pytest.raises(InputError, match=r"stage export made them with preprocess.mean = \[0.5\], the config now "
                                         r"says \[0.25\]"):
        build.check_consistent(stage, {"preprocess": {"mean": [0.25], "std": []}}, [made])


def _good_build(tmp_path):
    d = tmp_path / "b"
    (d / "records").mkdir(parents=True)
    (d / "model.bin").write_bytes(b"model")
    (d / "records" / "x.json").write_text("{}")
    art = {"path": "model.bin", "bytes": 5, "sha256": hashlib.sha256(b"model").hexdigest()}
    (d / "manifest.json").write_text(json.dumps({"artifacts": {"model": art}}))
    return d


def test_a_failed_run_puts_the_last_good_build_back_exactly(tmp_path):
    d = _good_build(tmp_path)
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert build.keep_previous(d)
    (d / "model.tmp").write_bytes(b"half-written")  # what the failed run published (a build replaces files,
    (d / "model.tmp").replace(d / "model.bin")  # never rewrites them in place: the kept links stay intact)
    (d / "new.bin").write_bytes(b"new")  # and added
    assert build.restore_previous(d)
    assert {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    assert not build.restore_previous(d)  # nothing kept any more


def test_a_build_whose_manifest_no_longer_matches_is_not_kept(tmp_path):
    d = _good_build(tmp_path)
    (d / "model.bin").write_bytes(b"edited")
    assert not build.keep_previous(d) and not (d / build.PREVIOUS).exists()


def test_why_not_publishable_names_the_first_problem(tmp_path):
    config = config_mod.load(None, [])
    d = tmp_path / "b"
    d.mkdir()
    (d / "in.bin").write_bytes(b"a")
    (d / "out.bin").write_bytes(b"b")
    first = Stage("first", "m", config=(), outputs=("in.bin",))
    second = Stage("second", "m", config=("train.epochs",), inputs=("in.bin",), outputs=("out.bin",))
    digest = hashlib.sha256(b"a").hexdigest()
    good = {"first": {"stage": "first", "key_parts": {"inputs": {}}, "config": {}},
            "second": {"stage": "second", "key_parts": {"inputs": {"in.bin": digest}}, "config": {"train": {"epochs": 10}}}}
    plan = [first, second]
    assert build.why_not_publishable(plan, config, good, d) is None
    assert "stage second has not finished" in build.why_not_publishable(plan, config, {"first": good["first"]}, d)
    old = {**good, "second": {"stage": "second", "config": {}}}
    assert "written by an older edgebuild" in build.why_not_publishable(plan, config, old, d)
    (d / "in.bin").write_bytes(b"changed")
    assert "made from another in.bin" in build.why_not_publishable(plan, config, good, d)
    (d / "in.bin").write_bytes(b"a")
    other = config_mod.load(None, ["train.epochs=3"])
    assert "train.epochs = 10" in build.why_not_publishable(plan, other, good, d)


def test_a_model_file_is_validated_on_the_targets_that_run_its_format(tmp_path):
    tflite, onnx = tmp_path / "m.tflite", tmp_path / "m.onnx"
    tflite.write_bytes(b"TFL3")
    onnx.write_bytes(b"\x08\x07")
    both = 'validate.targets=["rpi5-litert", "rpi5-onnxruntime", "cortex-m-tflm"]'
    assert _targets_for(config_mod.load(None, [f'validate.model="{tflite}"', both]), ()) == ["rpi5-litert", "cortex-m-tflm"]
    assert _targets_for(config_mod.load(None, [f'validate.model="{onnx}"', both]), ()) == ["rpi5-onnxruntime"]
    # none of the configured ones runs it: every shipped emulated target of its format
    only_tflite = 'validate.targets=["rpi5-litert"]'
    assert _targets_for(config_mod.load(None, [f'validate.model="{onnx}"', only_tflite]), ()) == ["rpi5-onnxruntime"]
    # --target is added as given
    assert _targets_for(config_mod.load(None, [f'validate.model="{tflite}"', only_tflite]), ("host",)) == ["rpi5-litert", "host"]


def test_typed_overrides_are_checked_like_set_lines():
    assert config_mod.load(None, [("train.epochs", 2), "train.epochs=4"]).train.epochs == 4  # in order
    assert config_mod.load(None, [("data.source", "my photos/x")]).data.source == "my photos/x"  # no quoting
    with pytest.raises(InputError, match="must be of type int"):
        config_mod.load(None, [("train.epochs", "2")])
    with pytest.raises(InputError, match=r"unknown config key 'train.epoch'"):
        config_mod.load(None, [("train.epoch", 2)])


def test_targets_added_from_outside_are_names_never_paths():
    from pipeline.cli import _with_targets

    config = config_mod.load(None, [])
    assert _with_targets(config, ["rpi5-litert"]).validate.targets == ["rpi5-litert"]
    with pytest.raises(InputError, match="must be a name"):
        _with_targets(config, ["rpi5-litert", "../../etc/x"])
