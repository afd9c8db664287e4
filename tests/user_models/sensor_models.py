"""A 1-D sensor-window classifier as a team writes it: Conv1D + BatchNorm + ReLU, 1-D pooling, a dense
head (a `module:function` recipe: (input_shape, num_classes) -> keras.Model)."""

import keras
from keras import layers


def conv1d(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv1D(12, 5, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(16, 3, padding="causal")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x))
