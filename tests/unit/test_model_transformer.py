"""Transformer layers on JAX, in this process: the QAT rewrite of LayerNormalization, MultiHeadAttention
and EinsumDense (what it becomes, how close it stays to the float model, what it refuses), and LoRA
adapters on attention projections merged back exactly."""

import keras
import numpy as np
import pytest

from pipeline.engine.errors import InputError
from pipeline.model import attention, qat, recipes, transfer


def _vit(mask=False, ln_axis=-1):
    """A small plain-Keras ViT block stack on 8x8 images: 16 tokens of 16 features."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Reshape((16, 16))(keras.layers.Conv2D(16, 2, strides=2)(inputs))
    for i in range(2):
        h = keras.layers.LayerNormalization(axis=ln_axis, name=f"ln{i}")(x)
        call = {"attention_mask": np.ones((1, 16, 16), bool)} if mask else {}
        attn = keras.layers.MultiHeadAttention(2, 8, name=f"attn{i}")
        h = attn(h, h, **call) if i == 0 else attn(query=h, value=h, **call)  # both ways of calling it
        x = keras.layers.Add()([x, h])
        h = keras.layers.Dense(32, activation="gelu", name=f"mlp{i}")(keras.layers.LayerNormalization()(x))
        x = keras.layers.Add()([x, keras.layers.Dense(16)(h)])
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(x))
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    rng = np.random.default_rng(4)
    for layer in model._flatten_layers():  # as after training: no zero bias or beta, no unit gamma
        if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.EinsumDense)):
            for v in layer._trainable_variables:
                if v.name in ("bias", "beta", "gamma"):
                    v.assign((v.name == "gamma") + rng.normal(0, 0.1, v.shape).astype("float32"))
    return model


def _snr_db(ref, got):
    ref, got = np.asarray(ref), np.asarray(got)
    return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))


def test_a_vit_becomes_the_int8_ops_litert_runs_and_stays_close_to_float():
    model = _vit()
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    assert qat.unsupported_layers(model) == []
    q = qat.quantize_model(model)
    kinds = [type(layer).__name__ for layer in q.layers]
    assert kinds.count("QuantLayerNormalization") == 5 and kinds.count("QuantAttention") == 2
    assert kinds.count("QuantEinsumDense") == 8  # query, key, value and output of both attention layers
    assert "MultiHeadAttention" not in kinds and "LayerNormalization" not in kinds
    qat.init_ranges(q, x)
    ranges = qat.activation_ranges(q)
    # the attention probabilities hold the one range int8 SOFTMAX writes: scale 1/256, zero point -128
    assert ranges["attn0_attention/attn0_attention_probs_quant"] == [0.0, 255 / 256]
    # 8-bit fake quant on every tensor, LayerNorm's variance included: close, not equal
    assert _snr_db(model(x), q(x)) > 12


def test_the_query_projection_carries_the_attention_scale_and_weights_are_copies():
    model = _vit()
    q = qat.quantize_model(model)
    original = model.get_layer("attn0")._query_dense
    rewritten = q.get_layer("attn0_query")
    np.testing.assert_allclose(np.asarray(rewritten.kernel), np.asarray(original.kernel) / np.sqrt(8), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rewritten.bias), np.asarray(original.bias) / np.sqrt(8), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q.get_layer("ln1").beta), np.asarray(model.get_layer("ln1").beta))
    np.testing.assert_array_equal(np.asarray(q.get_layer("attn0_value").kernel),
                                  np.asarray(model.get_layer("attn0")._value_dense.kernel))
    # GELU is its own int8 op after the FULLY_CONNECTED: the tensor before it is quantized too
    assert q.get_layer("mlp0").preactivation_quantizer is not None
    assert q.get_layer("logits").preactivation_quantizer is None


def test_attention_with_a_mask_and_layernorm_over_another_axis_are_named_before_training():
    problems = qat.unsupported_layers(_vit(mask=True))
    assert len(problems) == 2 and all("MultiHeadAttention" in p and "attention_mask" in p for p in problems)
    rms = keras.Sequential([keras.Input((4, 8)), keras.layers.LayerNormalization(rms_scaling=True, name="rms")])
    assert "rms_scaling=True" in qat.unsupported_layers(rms)[0]
    problems = qat.unsupported_layers(_vit(ln_axis=1))
    assert problems and "layer 'ln0' (LayerNormalization)" in problems[0] and "axis=-1" in problems[0]
    with pytest.raises(qat.UnsupportedLayerError, match="attention_mask"):
        qat.quantize_model(_vit(mask=True))


def test_the_qat_layers_round_trip_through_a_keras_file(tmp_path):
    q = qat.quantize_model(_vit())
    x = np.random.default_rng(1).random((8, 8, 8, 1), dtype=np.float32)
    qat.init_ranges(q, x)
    q.save(tmp_path / "q.keras")
    again = keras.models.load_model(tmp_path / "q.keras")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(q(x)), atol=1e-5)
    assert isinstance(again.get_layer("attn1_attention"), attention.QuantAttention)


def test_gelu_as_sigmoid_replaces_every_form_of_gelu_and_round_trips(tmp_path):
    # the three ways a model has a GELU: a layer's activation, an Activation layer, keras.ops.gelu (tanh)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(16, activation="gelu", name="mlp")(keras.layers.Flatten()(inputs))
    h = keras.layers.Activation("gelu", name="act")(keras.layers.Dense(16, name="fc")(h))
    h = keras.ops.gelu(keras.layers.Dense(16, name="fc2")(h), approximate=True)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    x = np.random.default_rng(5).random((64, 8, 8, 1), dtype=np.float32)
    native = qat.quantize_model(model)
    assert not any(isinstance(layer, qat.SigmoidGelu) for layer in native.layers)
    q = qat.quantize_model(model, gelu="sigmoid")
    gelus = [layer for layer in q.layers if isinstance(layer, qat.SigmoidGelu)]
    assert len(gelus) == 3 and q.get_layer("mlp").get_config()["activation"] == "linear"
    assert all(keras.activations.serialize(getattr(layer, "activation", keras.activations.linear)) != "gelu"
               for layer in q._flatten_layers())
    qat.init_ranges(q, x)
    # what int8 LOGISTIC writes: scale 1/256, zero point -128
    assert qat.activation_ranges(q)["mlp_gelu/mlp_gelu_gate_quant"] == [0.0, 255 / 256]
    # x * sigmoid(1.702 x) is within 0.021 of GELU; with 8-bit fake quant on every tensor, close to float
    assert _snr_db(model(x), q(x)) > 25
    q.save(tmp_path / "q.keras")
    np.testing.assert_allclose(np.asarray(keras.models.load_model(tmp_path / "q.keras")(x)), np.asarray(q(x)), atol=1e-5)
    with pytest.raises(ValueError, match="gelu must be one of"):
        qat.quantize_model(model, gelu="erf")


def test_vit_tiny_is_a_transformer_qat_rewrites():
    model = recipes.vit_tiny((16, 16, 1), 10)
    assert 10_000 < model.count_params() < 40_000
    assert qat.unsupported_layers(model) == []
    with pytest.raises(InputError, match="vit_tiny' takes images"):
        recipes.vit_tiny((49, 10), 10)


def test_lora_adapts_the_attention_projections_and_merges_back_exactly():
    model = _vit()
    transfer.apply_mode(model, "lora", lora_rank=2)
    projections = [model.get_layer(f"attn{i}")._query_dense for i in range(2)]
    assert all(p.lora_enabled for p in projections)
    trainable = {v.path for v in model.trainable_weights}
    # A and B of 4 projections in 2 attention layers, of the 2-D convolution and the 4 other Dense layers,
    # plus the head's kernel and bias; nothing else (no bias, no LayerNorm, no frozen kernel)
    assert len(trainable) == 2 * 4 * 2 + 2 + 4 * 2 + 2, sorted(trainable)
    assert all("lora_kernel" in p or p.startswith("logits/") for p in trainable)
    # Keras factors an EinsumDense kernel along its last axis: A is kernel.shape[:-1] + (rank,), B (rank, last).
    # query/key/value kernels are (16, 2, 8), the output's (2, 8, 16); two attention layers
    expected = 2 * (3 * (16 * 2 * 2 + 2 * 8) + (2 * 8 * 2 + 2 * 16))
    lora = sum(int(np.prod(v.shape)) for v in model.trainable_weights if "lora_kernel" in v.path
               and "attn" in v.path)
    assert lora == expected
    for v in model.trainable_weights:  # as after fine-tuning: B is no longer zero
        if "lora_kernel_b" in v.path:
            v.assign(np.random.default_rng(2).normal(0, 0.1, v.shape).astype("float32"))
    x = np.random.default_rng(3).random((16, 8, 8, 1), dtype=np.float32)
    merged, diff = transfer.merge_lora(model, x)
    assert diff < 1e-5  # what the train stage holds a merge to
    assert not any(getattr(layer, "lora_enabled", False) for layer in merged._flatten_layers())
    assert np.abs(np.asarray(merged.get_layer("attn0")._query_dense.kernel)
                  - np.asarray(model.get_layer("attn0")._query_dense._kernel)).max() > 1e-3
