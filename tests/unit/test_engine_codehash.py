"""engine.codehash: a stage's code digest follows its imports (computed, never listed), and the
toolchain versions come from the installed distributions."""

import textwrap

from pipeline.engine.codehash import code_digest, versions


def _package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_digest_covers_every_module_reached_by_import_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _package(tmp_path, {
        "toy/__init__.py": "",
        "toy/stage.py": "from toy import lib\n\ndef run():\n    from .inner import deep  # a lazy import counts too\n",
        "toy/lib.py": "X = 1\n",
        "toy/inner/__init__.py": "",
        "toy/inner/deep.py": "Y = 2  # a comment\n",
        "toy/unrelated.py": "Z = 3\n",
    })
    digest, modules = code_digest("toy.stage")
    assert modules == ["toy", "toy.inner", "toy.inner.deep", "toy.lib", "toy.stage"]
    (tmp_path / "toy/unrelated.py").write_text("Z = 4\n")
    assert code_digest("toy.stage")[0] == digest  # not imported: not part of it
    (tmp_path / "toy/inner/deep.py").write_text("Y = 2  # another comment\n")
    assert code_digest("toy.stage")[0] == digest  # comments and formatting do not change the code
    (tmp_path / "toy/inner/deep.py").write_text("Y = 3\n")
    assert code_digest("toy.stage")[0] != digest  # a module two imports away does


def test_declared_code_files_are_part_of_the_digest(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _package(tmp_path, {"toy2/__init__.py": "", "toy2/stage.py": 'CODE_FILES = ("device.py",)\n',
                        "toy2/device.py": "print('runs on the device')\n"})
    digest, _ = code_digest("toy2.stage")
    (tmp_path / "toy2/device.py").write_text("print('changed')\n")
    assert code_digest("toy2.stage")[0] != digest


def test_a_stage_s_publishing_hooks_are_not_part_of_its_key(tmp_path, monkeypatch):
    """manifest(), gate(), report() and SCHEMA run in the publishing process on every publish: editing
    them (or what only they import) re-runs nothing; editing run() does."""
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = ("from toy3 import lib\n\ndef run(cfg, inputs, out_dir, ctx):\n    return {'n': lib.N}\n\n"
             "SCHEMA = {'type': 'object'}\n\ndef manifest(record, config):\n    from toy3 import view\n"
             "    return {'n': record['n']}\n")
    _package(tmp_path, {"toy3/__init__.py": "", "toy3/stage.py": stage, "toy3/lib.py": "N = 1\n",
                        "toy3/view.py": "V = 1\n"})
    digest, modules = code_digest("toy3.stage")
    assert "toy3.view" not in modules
    (tmp_path / "toy3/stage.py").write_text(stage.replace("{'n': record['n']}", "{'count': record['n']}")
                                            .replace("'object'", "'object', 'required': ['count']"))
    assert code_digest("toy3.stage")[0] == digest
    (tmp_path / "toy3/stage.py").write_text(stage.replace("{'n': lib.N}", "{'n': lib.N + 1}"))
    assert code_digest("toy3.stage")[0] != digest


def test_the_stages_never_key_the_manifest_code():
    """Editing how the manifest is assembled re-runs no stage: no stage's code reaches release/manifest."""
    from pipeline import stages
    from pipeline.engine import config as config_mod

    for stage in stages.plan(config_mod.load(None, [])):
        assert "pipeline.release.manifest" not in code_digest(stage.module)[1], stage.name


def test_versions_come_from_the_installed_distribution_metadata(tmp_path, monkeypatch):
    import numpy

    assert versions(("numpy",))["numpy"] == numpy.__version__
    assert versions(("no-such-distribution",))["no-such-distribution"] is None
    dist = tmp_path / "numpy-99.0.dist-info"  # another numpy installed first on the path: an upgrade
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 99.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert versions(("numpy",))["numpy"] == "99.0"


def test_every_stage_of_the_build_has_a_digest_over_the_package():
    from pipeline import stages
    from pipeline.engine import config as config_mod

    plan = stages.plan(config_mod.load(None, []))
    digests = {s.name: code_digest(s.module) for s in plan}
    for name, (digest, modules) in digests.items():
        assert all(m.startswith("pipeline") for m in modules) and len(digest) == 64
    assert "pipeline.model.qat" in digests["qat"][1] and "pipeline.model.qat" not in digests["data"][1]
    assert "pipeline.device.targets" in digests["target:rpi5-litert"][1]


def test_jax_stages_compile_for_avx2_unless_the_user_capped_the_isa():
    """Measured on an AVX-512 Xeon: the train stage's float.keras differs with and without the cap, and
    is byte-identical across runs with it (README, Reproducibility)."""
    from pipeline.engine.runner import XLA_ISA_FLAG, pin_xla_isa

    assert pin_xla_isa({}) == XLA_ISA_FLAG == "--xla_cpu_max_isa=AVX2"
    assert pin_xla_isa({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}) == "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX2"
    assert pin_xla_isa({"XLA_FLAGS": "--xla_cpu_max_isa=AVX512"}) == "--xla_cpu_max_isa=AVX512"

