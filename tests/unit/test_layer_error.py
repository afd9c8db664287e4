"""The per-layer report's arithmetic (device.layer_error) and its matching of .tflite tensors to float
Keras layers (model.layer_refs), in-process."""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.device import layer_error  # noqa: E402
from pipeline.model import layer_refs  # noqa: E402


def test_snr_cosine_and_max_error_of_dequantized_values():
    reference = np.array([[1.0, -1.0, 2.0, -2.0]])
    got = layer_error.tensor_error(np.array([[2, -2, 4, -3]], np.int8), 0.5, 0, reference)
    # dequantized [1, -1, 2, -1.5]: error power 0.25 against signal power 10
    assert got["snr_db"] == round(10 * math.log10(10 / 0.25), 2)
    assert got["max_abs_error"] == 0.5
    q = np.array([1, -1, 2, -1.5])
    assert got["cosine"] == round(float(q @ reference[0] / np.linalg.norm(q) / np.linalg.norm(reference)), 6)
    # the zero point is taken off before the scale
    shifted = layer_error.tensor_error(np.array([[12, 8, 14, 7]], np.int8), 0.5, 10, reference)
    assert shifted == got
    # an exact tensor has no finite SNR; an all-zero activation has no SNR or cosine
    assert layer_error.tensor_error(np.array([[2, -2, 4, -4]]), 0.5, 0, reference)["snr_db"] is None
    zero = layer_error.tensor_error(np.array([[1, 0]]), 1.0, 0, np.zeros((1, 2)))
    assert zero["snr_db"] is None and zero["cosine"] is None and zero["max_abs_error"] == 1.0


def test_the_worst_layers_are_those_that_lose_the_most_at_their_own_op():
    rows = [{"layer": "a", "snr_db": 35.0, "lost_db": 14.9}, {"layer": "b", "snr_db": 8.0, "lost_db": 27.0},
            {"layer": "c", "snr_db": 6.0, "lost_db": 2.0}, {"layer": "d", "snr_db": None, "lost_db": None}]
    assert [r["layer"] for r in layer_error.worst(rows)] == ["b", "a", "c"]
    assert layer_error.worst_line({"worst": layer_error.worst(rows)}) == "worst layer: b (SNR 8.0 dB, 27.0 dB lost there)"
    assert layer_error.worst_line({"worst": []}) == "" and layer_error.worst_line(None) == ""


def _model():
    inp = keras.Input((8, 8, 1), name="x")
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.ReLU(name="act")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(y)
    y = keras.layers.BatchNormalization(name="bn_b")(y)  # after a convolution with its own activation: not fused
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    y = keras.layers.Dense(6, activation="gelu", name="dense")(y)
    y = keras.layers.Dense(3, name="logits")(y)
    return keras.Model(inp, y, name="m")


def test_tensors_are_matched_to_the_float_layer_whose_output_they_are():
    model = _model()
    tensors = {  # names as the converter writes them, QAT's and a post-training conversion's
        10: {"name": "m_qat_1/conv_1/Relu;m_qat_1/conv_1/BiasAdd", "op_index": 0},  # QAT folded bn and act into conv
        11: {"name": "m_1/conv_b_1/Relu;m_1/conv_b_1/BiasAdd", "op_index": 1},
        12: {"name": "m_1/bn_b_1/batchnorm/mul_1", "op_index": 2},
        13: {"name": "m_1/bn_b_1/batchnorm/add_1", "op_index": 3},
        14: {"name": "m_qat_1/gap_out_quant_1/Mean;m_qat_1/gap_1/Mean", "op_index": 4},
        15: {"name": "m_qat_1/dense_1/BiasAdd", "op_index": 5},  # before the sigmoid-form GELU
        16: {"name": "m_qat_1/dense_gelu_1/mul_1", "op_index": 6},  # the GELU's last MUL: the layer's output
        17: {"name": "StatefulPartitionedCall_1:0", "op_index": 7},
        18: {"name": "unrelated/Reshape", "op_index": 8},
    }
    assert layer_refs.match(model, tensors, outputs={17}) == {10: "act", 11: "conv_b", 13: "bn_b", 14: "gap",
                                                             16: "dense", 17: "logits"}


def test_references_are_the_float_activations_in_the_tensors_shape():
    model = _model()
    x = np.random.RandomState(0).rand(5, 8, 8, 1).astype("float32")
    tensors = {10: {"shape": [1, 8, 8, 4]}, 14: {"shape": [1, 4]}, 17: {"shape": [1, 3]}, 19: {"shape": [1, 5]}}
    refs = layer_refs.references(model, {10: "act", 14: "gap", 17: "logits", 19: "dense"}, x, tensors)
    assert set(refs) == {10, 14, 17}  # dense's 6 values do not fit a tensor of 5
    np.testing.assert_allclose(refs[17], model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    act = keras.Model(model.inputs, model.get_layer("act").output).predict(x, verbose=0)
    np.testing.assert_allclose(refs[10], act, rtol=1e-5, atol=1e-6)
    assert refs[14].shape == (5, 4)
