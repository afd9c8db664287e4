"""Built-in model recipes. Each takes (input_shape, num_classes, **options) and returns a float model.

Models output logits (no softmax): argmax is what a device needs, and int8 logits keep more
resolution than an int8 softmax with its fixed 1/256 scale.
"""

import keras

from pipeline.engine.errors import InputError


def _bn_relu(x, bn_name, relu_name, max_value=None):
    x = keras.layers.BatchNormalization(momentum=0.9, name=bn_name)(x)
    return keras.layers.ReLU(max_value, name=relu_name)(x)


def small_cnn(input_shape, num_classes, width=16, blocks=3):
    """Conv + BatchNorm + ReLU blocks, each doubling the width and halving the resolution,
    then global average pooling and a dense head."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i in range(blocks):
        filters = width * 2**i
        x = _bn_relu(keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x),
                     f"bn{i}", f"relu{i}")
        if i < blocks - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def ds_cnn(input_shape, num_classes, width=16, blocks=3):
    """MobileNet-style: a conv stem, then depthwise-separable blocks (depthwise 3x3 + BN + ReLU6,
    pointwise 1x1 + BN + ReLU6), stride 2 between blocks, global pooling and a dense head."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = _bn_relu(x, "stem_bn", "stem_relu", 6.0)
    for i in range(blocks):
        x = keras.layers.DepthwiseConv2D(3, strides=2 if i else 1, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = _bn_relu(x, f"dw{i}_bn", f"dw{i}_relu", 6.0)
        x = keras.layers.Conv2D(width * 2 ** (i + 1), 1, use_bias=False, name=f"pw{i}")(x)
        x = _bn_relu(x, f"pw{i}_bn", f"pw{i}_relu", 6.0)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def ds_cnn_kws(input_shape, num_classes, width=16, blocks=4):
    """The depthwise-separable keyword-spotting network of the literature (Zhang et al., "Hello Edge",
    the MLPerf Tiny KWS model) for 49x10 MFCCs: a 10x4 stride-2 conv stem with 4 * width filters, then
    `blocks` depthwise-separable blocks at that width (BN + ReLU after each conv), global pooling and a
    dense head. A (frames, coefficients) input gets its channel axis inside the model."""
    filters = 4 * width
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x = keras.layers.Reshape((*input_shape, 1), name="add_channel")(inputs) if len(input_shape) == 2 else inputs
    x = keras.layers.Conv2D(filters, (10, 4), strides=2, padding="same", use_bias=False, name="stem")(x)
    x = _bn_relu(x, "stem_bn", "stem_relu")
    for i in range(blocks):
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = _bn_relu(x, f"dw{i}_bn", f"dw{i}_relu")
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = _bn_relu(x, f"pw{i}_bn", f"pw{i}_relu")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="ds_cnn_kws")


def autoencoder(input_shape, num_classes, width=16, blocks=3):
    """The dense autoencoder of the machine-sound anomaly baseline (DCASE): `blocks` Dense + BN + ReLU
    layers of 8 * width units, an 8-unit bottleneck, the mirror image, and a linear Dense back to the
    input's size. It reconstructs its input (task.kind = 'anomaly'); `num_classes` is that shape."""
    size = 1
    for d in input_shape:
        size *= int(d)
    inputs = keras.Input(shape=tuple(input_shape), name="window")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate([8 * width] * blocks + [8] + [8 * width] * blocks):
        x = keras.layers.Dense(units, use_bias=False, name=f"dense{i}")(x)
        x = _bn_relu(x, f"bn{i}", f"relu{i}")
    x = keras.layers.Dense(size, name="reconstruction")(x)
    outputs = keras.layers.Reshape(tuple(input_shape), name="unflatten")(x) if len(input_shape) > 1 else x
    return keras.Model(inputs, outputs, name="autoencoder")


def vit_tiny(input_shape, num_classes, width=16, blocks=2):
    """A tiny vision transformer: a strided Conv2D patch embedding onto a grid of at most 8x8 tokens of
    2 * width features, a depthwise 3x3 convolution added on that grid as the position encoding (the
    conditional position encoding of Chu et al., 2021, which needs no table of the token count), then
    `blocks` pre-norm blocks (LayerNormalization, 2-head MultiHeadAttention, residual;
    LayerNormalization, Dense(gelu) MLP of ratio 2, residual), a final LayerNormalization, global
    average pooling over the tokens and a dense head. About 27k parameters at the defaults (3 blocks).

    The LayerNormalizations keep Keras's epsilon of 1e-3: a token of near-constant features (a patch of
    plain background) has a tiny variance, and LayerNorm multiplies its int8 rounding noise by up to
    1/sqrt(epsilon); at 1e-6 that was 1000x, and the int8 model lost a third of its accuracy before QAT."""
    if len(input_shape) != 3:
        raise InputError(f"train.recipe = 'vit_tiny' takes images (height, width, channels); received an input of "
                         f"shape {tuple(input_shape)}. Use ds_cnn_kws or your own recipe for feature tensors.")
    dim, heads = 2 * width, 2
    patch = max(1, -(-max(int(input_shape[0]), int(input_shape[1])) // 8))  # ceiling: at most 8x8 tokens
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    x = keras.layers.Add(name="pos_add")([x, keras.layers.DepthwiseConv2D(3, padding="same", name="pos_conv")(x)])
    x = keras.layers.Reshape((-1, dim), name="tokens")(x)
    for i in range(blocks):
        h = keras.layers.LayerNormalization(name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(h, h)
        x = keras.layers.Add(name=f"block{i}_res1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        h = keras.layers.Dense(dim, name=f"block{i}_mlp2")(h)
        x = keras.layers.Add(name=f"block{i}_res2")([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="token_pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vit_tiny")


def _application(app, input_shape, num_classes, **kwargs):
    """A keras.applications backbone (random init: pretrained weights come from train.weights, a
    local file) flattened into one functional graph with the input rescaling inside the model,
    then global pooling and a dense head."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)  # 0..1 pixels -> -1..1
    backbone = app(input_tensor=x, include_top=False, weights=None, **kwargs)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=app.__name__.lower())


def mobilenet_v3_small(input_shape, num_classes, width=16, blocks=3):
    """MobileNetV3Small (depthwise convolutions, hard-swish, squeeze-excite); width/blocks unused."""
    return _application(keras.applications.MobileNetV3Small, input_shape, num_classes,
                        include_preprocessing=False)


def efficientnet_v2_b0(input_shape, num_classes, width=16, blocks=3):
    """EfficientNetV2B0 (fused-MBConv, swish, squeeze-excite); width/blocks unused."""
    return _application(keras.applications.EfficientNetV2B0, input_shape, num_classes,
                        include_preprocessing=False)


RECIPES = {"small_cnn": small_cnn, "ds_cnn": ds_cnn, "mobilenet_v3_small": mobilenet_v3_small,
           "efficientnet_v2_b0": efficientnet_v2_b0, "ds_cnn_kws": ds_cnn_kws, "autoencoder": autoencoder,
           "vit_tiny": vit_tiny}
