"""Regression tests for two small defects (issue 29, item 6): `edgebuild target image` ignored cache.dir,
and the serialization preflight named the QAT layers' module by its old path."""

def test_target_image_uses_the_configured_cache_dir(tmp_path, monkeypatch):
    """The image is built where validate.executor = "container" looks for it: cache.dir (image.build itself is
    tests/test_container.py's; here only which cache the command hands it)."""
    from click.testing import CliRunner

    from pipeline import cli
    from pipeline.device import image

    seen = []

    def build(target, cache_dir, log):
        seen.append(cache_dir)
        return {"tag": "t", "id": "0" * 12, "archive": str(tmp_path / "a.tar"), "bytes": 0}

    monkeypatch.setattr(image, "build", build)
    monkeypatch.delenv("EDGEBUILD_CACHE", raising=False)
    result = CliRunner().invoke(cli.main, ["target", "image", "rpi5-litert", "--set",
                                           f'cache.dir="{tmp_path / "mine"}"'])
    assert result.exit_code == 0, result.output
    assert seen == [tmp_path / "mine"]


def test_preflight_treats_the_qat_layers_as_edgebuilds_own():
    from pipeline.model import attention, preflight, qat

    for cls in (qat.ActivationQuantizer, qat.QuantConv2D, qat.QuantDepthwiseConv2D, qat.QuantDense,
                attention.QuantLayerNormalization, attention.QuantEinsumDense, attention.QuantAttention):
        assert preflight._is_keras_own(cls), cls


def test_the_manifest_schema_is_valid_and_says_each_block_once():
    """The published schema is a valid Draft 2020-12 schema whose repeated blocks (an artifact, an
    accuracy with its per-class figures, a sha256, a fraction) are $defs, referenced, not copied."""
    import json

    import jsonschema

    from pipeline.release.manifest import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    seen = {}

    def walk(node):
        if isinstance(node, dict):
            text = json.dumps(node, sort_keys=True)
            if len(text) > 100 and "$defs" not in node:
                seen[text] = seen.get(text, 0) + 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in schema.items() if k != "$defs"})
    walk(schema["$defs"])
    assert not [text for text, n in seen.items() if n > 1], "a block copied instead of a $ref"
    assert {"artifact", "model", "accuracy", "per_class", "sha256", "fraction"} <= set(schema["$defs"])


def test_bench_results_md_is_generated_from_results_json():
    """bench/RESULTS.md is what `make bench-results` renders from bench/results.json, never a hand edit;
    and every section says the CPU it was measured on."""
    import json

    from bench import render

    results = json.loads((render.HERE / "results.json").read_text())
    text = render.render(results)
    assert text == (render.HERE / "RESULTS.md").read_text(), "run make bench-results and commit bench/RESULTS.md"
    sections = [s for s in text.split("\n## ")[1:]]
    assert sections and all("measured 20" in s and "CPU not recorded" not in s for s in sections)
