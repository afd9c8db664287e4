"""A user model with a custom layer, for `train.recipe = "examples.custom_model:build"`.

Run from the repository root:
    edgebuild build --set 'train.recipe="examples.custom_model:build"' --name custom
    edgebuild check-model --recipe examples.custom_model:build
"""

import keras


@keras.saving.register_keras_serializable(package="examples")
class ScaledReLU(keras.layers.Layer):
    """relu(x) * scale, capped at `cap`: weightless, so edgebuild quantizes its output."""

    def __init__(self, scale=1.0, cap=6.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.cap = cap

    def call(self, x):
        return keras.ops.minimum(keras.ops.relu(x) * self.scale, self.cap)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "cap": self.cap}


def build(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, filters in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = ScaledReLU(scale=0.5, cap=4.0)(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
