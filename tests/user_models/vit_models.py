"""A small plain-Keras vision transformer, written the way a team would (no edgebuild imports): a
Conv2D patch embedding, pre-norm blocks of LayerNormalization + MultiHeadAttention and a GELU MLP,
global average pooling over the tokens. The first block's MLP uses the exact GELU as an activation
argument, the second the tanh approximation as a function call (keras.ops.gelu): both forms reach
the converter and tf2onnx."""

import keras
from keras import layers


def build(input_shape, num_classes, dim=32, heads=2, blocks=2, patch=4):
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(dim, patch, strides=patch, name="patch_embed")(inputs)
    x = layers.Reshape((-1, dim))(x)
    for i in range(blocks):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        h = layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(h, h)
        x = layers.Add()([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        if i == 0:
            h = layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        else:
            h = keras.ops.gelu(layers.Dense(2 * dim, name=f"block{i}_mlp1")(h), approximate=True)
        h = layers.Dense(dim, name=f"block{i}_mlp2")(h)
        x = layers.Add()([x, h])
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="team_vit")
