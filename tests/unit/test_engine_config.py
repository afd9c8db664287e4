"""engine.config and engine.stage: the typed config, its errors, and what a stage receives of it."""

import pytest

from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.engine.stage import config_view, select_config


def test_defaults_load_and_overrides_parse_as_toml():
    config = config_mod.load(None, ["train.epochs=2", "data.source=digits", 'validate.targets=["rpi5-litert"]'])
    assert config.train.epochs == 2 and config.data.source == "digits"
    assert config.validate.targets == ["rpi5-litert"]
    assert config.build_dir.name == "digits"


@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", "Did you mean 'epochs'?"),
    ("trian.epochs=2", "Did you mean 'train'?"),
    ("train.epochs=two", "must be of type int"),
    ("train.epochs=-1", "between 0"),
    ("data.channels=2", "must be one of 1, 3"),
    ("train.recipe=small_cn", "Did you mean 'small_cnn'?"),
    ("epochs=2", "--set takes section.key=value"),
    ('export.formats=["onnx"]', "export.formats must include 'tflite'"),
    ('export.formats=["tflite", "pt"]', "a list of distinct items from 'tflite', 'onnx'"),
    ('export.formats=["tflite", "tflite"]', "a list of distinct items"),
    ("qat.gelu='erf'", "must be one of 'sigmoid', 'native'"),
])
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(InputError, match=message.replace("?", r"\?").replace("(", r"\(")):
        config_mod.load(None, [override])


def test_a_config_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text("[qat]\nlearning_rat = 1e-4\n")
    with pytest.raises(InputError, match=r"unknown config key 'qat.learning_rat' in .*e.toml. Did you mean 'learning_rate'"):
        config_mod.load(path)
    path.write_text("[qat\n")
    with pytest.raises(InputError, match="not valid TOML"):
        config_mod.load(path)


def test_a_stage_receives_only_what_it_declares():
    config = config_mod.load(None, ["train.epochs=3"])
    selected = select_config(config, ("build.seed", "train", "preprocess"))
    assert set(selected) == {"build", "train", "preprocess"} and selected["build"] == {"seed": 0}
    view = config_view(selected)
    assert view.train == config.train  # a whole section arrives typed
    assert view.build.seed == 0 and not hasattr(view.build, "name")  # a key arrives alone
    assert not hasattr(view, "gate")


def test_an_unknown_key_or_section_in_set_is_named_as_coming_from_set():
    """Found by a new-user trial: a misspelt --set key was reported as unknown 'in defaults'."""
    with pytest.raises(InputError, match=r"unknown config key 'preprocess.pixel_rang' \(from --set\)\. Did you mean 'pixel_range'"):
        config_mod.load(None, ["preprocess.pixel_rang=[-1, 1]"])
    with pytest.raises(InputError, match=r"unknown config section \[preprocss\] \(from --set preprocss.pixel_range\)"):
        config_mod.load(None, ["preprocss.pixel_range=[-1, 1]"])


def test_export_formats_decide_the_onnx_files_every_stage_reads():
    from pipeline.stages import evaluate, export, resources, target

    both, tflite = config_mod.load(None, []), config_mod.load(None, ['export.formats=["tflite"]'])
    (stage,) = export.stages(both)
    # asked for, the ONNX files may still be missing (a conversion that failed); the stages after export run without
    assert set(export.ONNX_OUTPUTS) <= set(stage.outputs) and set(stage.optional) == set(export.ONNX_OUTPUTS)
    assert set(evaluate.STAGE.optional_inputs) == set(export.ONNX_OUTPUTS)
    (stage,) = export.stages(tflite)
    assert not set(export.ONNX_OUTPUTS) & set(stage.outputs)
    assert resources.stages(tflite)[0].inputs == ("model_int8.tflite",)
    assert resources.stages(both)[0].inputs == ("model_int8.tflite", "model_int8.onnx")
    with pytest.raises(InputError, match="target rpi5-onnxruntime runs the int8 ONNX"):
        target.stages(config_mod.load(None, ['export.formats=["tflite"]', 'validate.targets=["rpi5-onnxruntime"]']))
    assert export.gate({"formats": ["tflite"], "made": ["tflite"]}, tflite) == []
    (made,) = export.gate({"formats": ["tflite", "onnx"], "made": ["tflite", "onnx"]}, both)
    (refused,) = export.gate({"formats": ["tflite", "onnx"], "made": ["tflite"], "onnx_error": "tf2onnx: no"}, both)
    assert made["passed"] and not refused["passed"] and refused["detail"] == "tf2onnx: no"
