"""Built-in model recipes. Each takes (input_shape, num_classes, **options) and returns a float model.

Models output logits (no softmax): argmax is what a device needs, and int8 logits keep more
resolution than an int8 softmax with its fixed 1/256 scale.
"""

import keras


def small_cnn(input_shape, num_classes, width=16, blocks=3):
    """Conv + BatchNorm + ReLU blocks, each doubling the width and halving the resolution,
    then global average pooling and a dense head."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i in range(blocks):
        filters = width * 2**i
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < blocks - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


RECIPES = {"small_cnn": small_cnn}
