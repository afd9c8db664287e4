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
    from pipeline.model import preflight, qat

    for cls in (qat.ActivationQuantizer, qat.QuantConv2D, qat.QuantDepthwiseConv2D, qat.QuantDense):
        assert preflight._is_keras_own(cls), cls
