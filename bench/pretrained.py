"""A pretrained model as a team would bring it (for the "bring a trained model" bench case).

Made outside edgebuild, the way another project would: the sign-language photos split per class
into the team's own train/ and test/ folders (20% held out, fixed by a seed), a residual CNN
trained to convergence with Keras on the TensorFlow backend on float pixels 0..255 (no rescaling
in the model), a softmax head, saved as a legacy full-model .h5. Its own test accuracy is computed
here, with its own loading code.

    KERAS_BACKEND=tensorflow python -m bench.pretrained SIGNS_DIR OUT_DIR
"""

import json
import os
import shutil
import sys
from pathlib import Path

SIZE = 32


def _load(folder, classes):
    import numpy as np
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(classes):
        for p in sorted((folder / name).iterdir()):
            with Image.open(p) as img:
                xs.append(np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.uint8))
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def residual_cnn(num_classes):
    import keras

    def block(x, filters, stride):
        shortcut = x
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = keras.layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            shortcut = keras.layers.BatchNormalization()(shortcut)
        return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(24, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = block(x, 24, 1)
    x = block(x, 48, 2)
    x = block(x, 96, 2)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="team_resnet")


def main(signs, out, epochs=25):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    signs, out = Path(signs), Path(out)
    classes = sorted(p.name for p in signs.iterdir() if p.is_dir())
    rng = np.random.RandomState(1234)
    for split in ("train", "test"):
        shutil.rmtree(out / split, ignore_errors=True)
    for name in classes:
        files = sorted((signs / name).iterdir())
        order = rng.permutation(len(files))
        n_test = int(round(0.2 * len(files)))
        for i, k in enumerate(order):
            split = "test" if i < n_test else "train"
            (out / split / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(files[k], out / split / name / files[k].name)
    x_train, y_train = _load(out / "train", classes)
    x_test, y_test = _load(out / "test", classes)

    keras.utils.set_random_seed(7)
    model = residual_cnn(len(classes))
    steps = int(np.ceil(len(y_train) / 64))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, epochs * steps)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    flip = np.concatenate([x_train, x_train[:, :, ::-1]]).astype("float32")  # + mirrored hands
    model.fit(flip, np.concatenate([y_train, y_train]), epochs=epochs, batch_size=64, verbose=2)
    probs = model.predict(x_test.astype("float32"), verbose=0)
    model.save(out / "team_resnet.h5")
    report = {"classes": classes, "train_images": int(len(y_train)), "test_images": int(len(y_test)),
              "own_test_accuracy": float((probs.argmax(1) == y_test).mean()), "epochs": epochs,
              "params": int(model.count_params()), "input": "float pixels 0..255, RGB 32x32 (PIL bilinear)",
              "head": "softmax", "format": "legacy full-model .h5 (Keras on TensorFlow)"}
    (out / "team_resnet.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(*sys.argv[1:3])
