"""device.resources: flash, MACs and activation memory read from the shipped self-test models, with
every expected number derived by hand from their tensors, and the MAC total checked against Vela's."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.device import resources, tflite_info
from pipeline.engine import text

DEVICE = Path(resources.__file__).parent
TFLITE = DEVICE / "selftest_int8.tflite"  # int8 1x8x8x1 -> CONV_2D 3x3 (fused ReLU) 1x6x6x4 -> MEAN 1x4 -> FC 1x4
ONNX = DEVICE / "selftest_int8.onnx"  # the same model as a QDQ graph (tf2onnx), NCHW
VELA_ACTIVATIONS = {"Relu", "Relu6", "ReluN1To1", "Relu0To1", "Clamp", "Clip", "Sigmoid", "Tanh", "LeakyRelu"}


def test_tflite_macs_parameters_and_activation_bytes():
    res = resources.tflite_resources(TFLITE)
    conv, mean, fc = res["layers"]
    assert [layer["op"] for layer in res["layers"]] == ["CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert conv["macs"] == 3 * 3 * 1 * (6 * 6 * 4)  # kh*kw*cin per output element: 1296
    assert mean["macs"] == 6 * 6 * 4  # its input elements: 144
    assert fc["macs"] == 4 * 4  # input features per output element: 16
    assert res["macs"] == 1456
    # constant tensors: conv filter 4x3x3x1 int8 (36 elements, 36 B), conv bias [4] int32 (4, 16 B),
    # FC weights 4x4 int8 (16, 16 B; the FC has no bias), MEAN axes [2] int32 (2, 8 B)
    assert res["parameters"] == 36 + 4 + 16 + 2 == 58
    assert res["weight_bytes"] == 36 + 16 + 16 + 8 == 76
    assert res["model_bytes"] == TFLITE.stat().st_size
    # int8 activations, a -1 batch counted as 1: conv 8*8*1 in + 6*6*4 out; MEAN 144 in + 4 out; FC 4 in + 4 out
    assert [layer["activation_bytes"] for layer in res["layers"]] == [64 + 144, 144 + 4, 4 + 4]
    assert conv["output_shape"] == [1, 6, 6, 4] and fc["name"] == "StatefulPartitionedCall_1:0"
    assert [(x["op"], x["share"]) for x in res["largest_by_macs"]] == [
        ("CONV_2D", round(1296 / 1456, 4)), ("MEAN", round(144 / 1456, 4)), ("FULLY_CONNECTED", round(16 / 1456, 4))]
    assert res["largest_by_activation"][0] == {"name": conv["name"], "op": "CONV_2D", "activation_bytes": 208}
    assert res["peak_activation_bytes"] == 208


def test_tflite_weights_stored_by_offset_and_size_count_the_same(tmp_path):
    """A model over 2 GB keeps its buffers outside the flatbuffer, found by offset and size."""
    import flatbuffers

    model = tflite_info.read_model(TFLITE)
    moved = next(b for b in model.buffers if b.data is not None and len(b.data) == 36)  # the conv filter
    moved.data, moved.offset, moved.size = None, 4096, 36
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    (tmp_path / "m.tflite").write_bytes(builder.Output())
    res = resources.resources(tmp_path / "m.tflite")
    assert (res["parameters"], res["weight_bytes"], res["macs"]) == (58, 76, 1456)


def test_onnx_qdq_model_counts_the_same_macs():
    res = resources.resources(ONNX)
    assert res["format"] == "onnx" and res["uncounted"] == []
    macs = {layer["op"]: layer["macs"] for layer in res["layers"] if layer["macs"]}
    # Conv weight 4x1x3x3 reached through its DequantizeLinear: 1*3*3 per output element, 4*6*6 of them;
    # GlobalAveragePool: its input elements; MatMul: K=4 per output element, 4 of them
    assert macs == {"Conv": 1 * 3 * 3 * (4 * 6 * 6), "GlobalAveragePool": 4 * 6 * 6, "MatMul": 4 * 4}
    assert res["macs"] == 1456 == resources.tflite_resources(TFLITE)["macs"]
    # initializers: conv weight int8 4x1x3x3 (36 elements, 36 B), dense int8 4x4 (16, 16 B), conv bias int32 [4]
    # (4, 16 B), scales float32: two [4] and five scalars (13, 52 B), zero points int8: one [4] and three
    # scalars (7, 7 B), Reshape's shape int64 [4] (4, 32 B), Squeeze's axes int64 [2] (2, 16 B)
    assert res["parameters"] == 36 + 16 + 4 + 13 + 7 + 4 + 2 == 82
    assert res["weight_bytes"] == 36 + 16 + 16 + 52 + 7 + 32 + 16 == 175
    assert not {"QuantizeLinear", "DequantizeLinear"} & {layer["op"] for layer in res["layers"]}
    conv = next(layer for layer in res["layers"] if layer["op"] == "Conv")
    assert conv["output_shape"] == [1, 4, 6, 6]
    assert conv["activation_bytes"] == 8 * 8 * 1 + 4 * 6 * 6 * 4  # int8 input (the DequantizeLinear's source), float output


def test_onnx_grouped_conv_dynamic_batch_and_gemm(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "w"),
               numpy_helper.from_array(np.zeros((10, 8), np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    res = resources.onnx_resources(tmp_path / "m.onnx")
    macs = {layer["op"]: layer["macs"] for layer in res["layers"]}
    # batch N counts as 1; a group-2 conv reads 4/2 input channels: 2*3*3 per output element, 8*8*8 of them
    assert macs == {"Conv": 2 * 3 * 3 * (8 * 8 * 8), "GlobalAveragePool": 8 * 8 * 8, "Flatten": 0, "Gemm": 8 * 10}
    assert res["parameters"] == 8 * 2 * 3 * 3 + 10 * 8 and res["weight_bytes"] == 4 * res["parameters"]


@pytest.mark.parametrize("op, inputs, out, options, macs", [
    ("DEPTHWISE_CONV_2D", [[1, 8, 8, 4], [1, 3, 3, 4]], [1, 8, 8, 4], None, 3 * 3 * 256),
    ("TRANSPOSE_CONV", [[4], [2, 3, 3, 4], [1, 4, 4, 4]], [1, 8, 8, 2], None, 3 * 3 * 4 * 128),  # Vela's convention
    ("AVERAGE_POOL_2D", [[1, 8, 8, 4]], [1, 4, 4, 4], type("O", (), {"filterHeight": 2, "filterWidth": 2}), 4 * 64),
    ("BATCH_MATMUL", [[2, 3, 5], [2, 5, 7]], [2, 3, 7], type("O", (), {"adjX": False}), 2 * 3 * 7 * 5),
    ("BATCH_MATMUL", [[2, 5, 3], [2, 5, 7]], [2, 3, 7], type("O", (), {"adjX": True}), 2 * 3 * 7 * 5),
    ("ADD", [[1, 8], [1, 8]], [1, 8], None, 0),
    ("SOFTMAX", [[1, 8]], [1, 8], None, 0),
])
def test_tflite_mac_convention(op, inputs, out, options, macs):
    assert resources._tflite_macs(op, inputs, out, options) == macs


def test_a_dynamic_batch_counts_as_one():
    assert resources._dims([-1, 8, 8, 1]) == [1, 8, 8, 1]
    assert resources._dims([4, 8, 8, 1], [-1, 8, 8, 1]) == [1, 8, 8, 1]
    assert resources._dims([4, 8], [4, 8]) == [4, 8]


def test_layer_table_rows():
    rows = resources.layer_table(resources.tflite_resources(TFLITE), top=2)
    assert rows[0] == resources.LAYER_COLUMNS and len(rows) == 3
    assert rows[1][0:2] == ("0", "CONV_2D") and rows[1][3:] == ("1,296", "89.0%", "208")
    assert len(rows[1][2]) == 60 and rows[1][2].endswith("…")  # the conv's 70-character name, clipped
    assert rows[2][1:] == ("MEAN", "functional_qat_1/global_average_pooling2d_1/Mean", "144", "9.9%", "148")
    assert len(text.table(rows)) == 3


def test_vela_counts_our_macs_plus_the_activations_it_runs_as_poolings(tmp_path):
    """Vela counts an activation it runs as its own op (a 1x1 pooling) as one MAC per output element; we
    count activations 0. Vela 5.2 splits selftest_int8's fused CONV_2D ReLU off that way: its nn_macs is
    1600 = our 1456 + 144 (6*6*4, the conv's output elements)."""
    pytest.importorskip("ethosu.vela", reason="Arm Vela (pip package ethos-u-vela) is not installed here")
    run = subprocess.run([sys.executable, "-m", "ethosu.vela", str(TFLITE), "--accelerator-config", "ethos-u55-128",
                          "--output-dir", str(tmp_path), "--verbose-performance"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (summary,) = csv.DictReader(next(tmp_path.glob("*_summary_*.csv")).open())
    per_layer = list(csv.DictReader(next(tmp_path.glob("*_per-layer.csv")).open()))
    vela_macs = int(summary["nn_macs"])
    assert vela_macs == sum(int(row["MAC Count"]) for row in per_layer)

    ours = resources.tflite_resources(TFLITE)
    by_name = {layer["name"]: layer for layer in ours["layers"]}
    activations = [row for row in per_layer if row["NNG Operator"] in VELA_ACTIVATIONS]
    for row in activations:  # each writes the output of one of our ops: one MAC per element of it
        assert int(row["MAC Count"]) == math.prod(by_name[row["Name"]]["output_shape"]), row
    assert vela_macs == ours["macs"] + sum(int(row["MAC Count"]) for row in activations)
