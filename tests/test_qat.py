"""QAT layers on JAX: BatchNorm folding is exact, layers round-trip, unsupported layers are named."""

import keras
import numpy as np
import pytest

from pipeline.model import attention, preflight, recipes as models, qat


def _trained_bn_model():
    keras.utils.set_random_seed(1)
    model = models.small_cnn((12, 12, 1), 4, width=4, blocks=2)
    for layer in model.layers:  # non-trivial BN statistics, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            rng = np.random.RandomState(n)
            layer.moving_mean.assign(rng.randn(n).astype("float32"))
            layer.moving_variance.assign(rng.rand(n).astype("float32") + 0.5)
            layer.gamma.assign(rng.rand(n).astype("float32") + 0.5)
            layer.beta.assign(rng.randn(n).astype("float32"))
    return model


def test_batchnorm_folding_matches_the_float_model():
    model = _trained_bn_model()
    x = np.random.RandomState(0).rand(32, 12, 12, 1).astype("float32")
    q = qat.quantize_model(model)
    layer_types = {type(l).__name__ for l in q.layers}
    assert "BatchNormalization" not in layer_types and "QuantConv2D" in layer_types
    q(x, training=True)  # ranges from real data
    ref, got = model(x, training=False), q(x, training=False)
    ref, got = np.asarray(ref), np.asarray(got)
    # 8-bit fake quant on every tensor: close, not equal.
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max() + 0.05
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_ranges_start_from_data_and_follow_an_ema():
    layer = qat.ActivationQuantizer(momentum=0.5)
    layer.build((None, 4))
    layer(np.array([[-1.0, 0.0, 2.0, 1.0]], "float32"), training=True)
    assert float(layer.range_min.numpy()) == -1.0 and float(layer.range_max.numpy()) == 2.0
    layer(np.array([[0.0, 0.0, 4.0, 0.0]], "float32"), training=True)
    assert float(layer.range_max.numpy()) == pytest.approx(3.0)
    assert float(layer.range_min.numpy()) == pytest.approx(-0.5)


def test_qat_layers_round_trip_every_constructor_argument():
    """get_config must carry every argument of the layer's own constructor, with its value: a missing one
    would come back as its default after a save and load (the bug preflight hunts), which comparing a
    clone's get_config() with the original's cannot see."""
    import inspect

    cases = [(qat.QuantConv2D, dict(filters=8, kernel_size=3, activation="relu", output_momentum=0.9,
                                    quantize_output=False)),
             (qat.QuantDepthwiseConv2D, dict(kernel_size=3, output_momentum=0.5, quantize_output=False)),
             (qat.QuantDense, dict(units=5, quantize_output=False, output_momentum=0.8)),
             (qat.ActivationQuantizer, dict(activation="relu", momentum=0.9, fixed_range=[0, 1])),
             (attention.QuantLayerNormalization, dict(epsilon=1e-6, output_momentum=0.7)),
             (attention.QuantEinsumDense, dict(equation="abc,cde->abde", output_shape=(None, 2, 4), output_momentum=0.6)),
             (attention.QuantAttention, dict(dot_equation="aecd,abcd->acbe", combine_equation="acbe,aecd->abcd",
                                             softmax_axes=[3], output_momentum=0.5))]
    for cls, given in cases:
        config = cls(**given).get_config()
        own = {name for klass in cls.__mro__ if klass.__module__ in preflight.QAT_MODULES and "__init__" in vars(klass)
               for name in inspect.signature(klass.__init__).parameters if name not in ("self", "args", "kwargs")}
        assert own and own <= set(config), f"{cls.__name__}.get_config() lacks {own - set(config)}"
        clone = cls.from_config(config).get_config()
        for key in own & set(given):
            assert clone[key] == given[key], (cls.__name__, key)


def test_straight_through_gradients_reach_the_kernel():
    import jax

    layer = qat.QuantDense(3)
    layer.build((None, 4))
    x = np.random.RandomState(0).rand(2, 4).astype("float32")
    layer(x, training=True)

    def loss(kernel):
        return keras.ops.sum(keras.ops.square(qat._quantize_weight(kernel, per_channel=False) @ np.ones((3, 1), "float32")))

    grad = jax.grad(loss)(layer.kernel.value)
    assert np.abs(np.asarray(grad)).sum() > 0


def test_unsupported_layer_is_named():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.GroupNormalization(groups=2, name="my_norm")(x)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    with pytest.raises(qat.UnsupportedLayerError, match="'my_norm' \\(GroupNormalization\\)"):
        qat.quantize_model(keras.Model(inp, out))


def test_mobilenet_v3_small_gets_a_qat_rule_for_every_layer():
    """Hard-swish, squeeze-excite and depthwise convolutions go through the QAT rewrite (the int8
    conversion of MobileNetV3Small, by post-training quantization, is test_applications.py's)."""
    model = models.mobilenet_v3_small((32, 32, 3), 4)
    q = qat.quantize_model(model, input_range=(-1.0, 1.0))
    names = {type(layer).__name__ for layer in q.layers}
    assert {"QuantConv2D", "QuantDepthwiseConv2D", "QuantDense", "ActivationQuantizer"} <= names, names
    assert "BatchNormalization" not in names and "Activation" not in names, names
    activations = {getattr(layer.activation, "__name__", None) for layer in q.layers if hasattr(layer, "activation")}
    assert "hard_silu" in activations, activations  # hard-swish kept, behind a fake-quant


def test_every_layer_without_a_qat_rule_is_listed_not_only_the_first():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.GroupNormalization(groups=2, name="norm_a")(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GroupNormalization(groups=2, name="norm_b")(x)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    problems = qat.unsupported_layers(keras.Model(inp, out))
    assert len(problems) == 2 and "'norm_a' (GroupNormalization)" in problems[0] and "'norm_b'" in problems[1]
    assert qat.unsupported_layers(models.small_cnn((12, 12, 1), 4, width=4, blocks=2)) == []
