"""User models that must be refused, one flaw each (imported by the tests as recipes)."""

import keras


@keras.saving.register_keras_serializable(package="tests")
class ForgetfulDropout(keras.layers.Layer):
    """get_config forgets `rate`: the reloaded layer would silently use the default."""

    def __init__(self, rate=0.5, gain=1.0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.gain = gain
        self.seed_generator = keras.random.SeedGenerator(0)

    def call(self, x, training=False):
        if training:
            x = keras.random.dropout(x, self.rate, seed=self.seed_generator)
        return x * self.gain

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}  # `rate` is missing


class Unregistered(keras.layers.Layer):
    def call(self, x):
        return keras.ops.relu(x)


def _head(x, num_classes):
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(num_classes)(x)


def forgets_argument(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = ForgetfulDropout(rate=0.3, gain=1.0, name="drop")(x)
    return keras.Model(inputs, _head(x, num_classes))


def unregistered(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = Unregistered(name="my_relu")(x)
    return keras.Model(inputs, _head(x, num_classes))


def with_lambda(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.Lambda(lambda t: keras.ops.relu(t), name="lam")(x)
    return keras.Model(inputs, _head(x, num_classes))


@keras.saving.register_keras_serializable(package="tests")
class LearnedScale(keras.layers.Layer):
    """A custom layer with its own weights: QAT cannot quantize it."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def custom_weights(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = LearnedScale(name="learned_scale")(x)
    return keras.Model(inputs, _head(x, num_classes))


@keras.saving.register_keras_serializable(package="tests")
class ErfInv(keras.layers.Layer):
    """Weightless and portable, but erfinv has no TFLite builtin: int8 conversion needs Flex ops."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.clip(x * 0.1, -0.9, 0.9))


def needs_flex(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = ErfInv(name="erfinv")(x)
    return keras.Model(inputs, _head(x, num_classes))


@keras.saving.register_keras_serializable(package="tests")
class BranchOnValue(keras.layers.Layer):
    """Python `if` on a tensor value: fine eagerly, fails when JAX traces the train step."""

    def call(self, x):
        if keras.ops.mean(x) > 0:
            return keras.ops.relu(x)
        return x


def python_control_flow(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = BranchOnValue(name="branchy")(x)
    return keras.Model(inputs, _head(x, num_classes))


def two_outputs(input_shape, num_classes):
    i = keras.Input(input_shape)
    h = keras.layers.GlobalAveragePooling2D()(i)
    return keras.Model(i, [keras.layers.Dense(num_classes)(h), keras.layers.Dense(1)(h)])
