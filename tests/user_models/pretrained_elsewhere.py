"""A team's own model and test set, made the way another project would, outside edgebuild:
Keras on the TensorFlow backend, float pixels 0..255 (no rescaling), a softmax head, saved as a
legacy full-model `.h5`; its own train/test .npz files; its own test accuracy, computed here.

    python tests/user_models/pretrained_elsewhere.py OUT_DIR [--groups]

--groups writes the Keras 2-era `groups` argument into a DepthwiseConv2D of a copy of the .h5
(old.h5), which Keras 3 refuses to load.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402


def digits16():
    d = load_digits()
    x = np.stack([np.asarray(Image.fromarray(np.round(im * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BILINEAR))
                  for im in d.images])
    return x, d.target.astype(np.int64)


def main(out, groups=False):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(42)
    x, y = digits16()
    order = np.random.RandomState(42).permutation(len(y))
    train, test = order[:1300], order[1300:]
    names = np.asarray([f"digit{i}" for i in range(10)])
    np.savez(out / "train.npz", x=x[train], y=y[train], class_names=names)
    np.savez(out / "test.npz", x=x[test], y=y[test], class_names=names)
    # a "test set" that leaks 7 training images
    leak = np.concatenate([test, train[:7]])
    np.savez(out / "leaky_test.npz", x=x[leak], y=y[leak], class_names=names)

    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(12, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(24, 1, use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inputs, outputs)
    epochs, steps = 40, int(np.ceil(len(train) / 64))
    lr = keras.optimizers.schedules.CosineDecay(3e-3, epochs * steps)
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x_float = x.astype("float32")[..., None]  # 0..255, this team's convention
    model.fit(x_float[train], y[train], epochs=epochs, batch_size=64, verbose=0)
    probs = model.predict(x_float[test], verbose=0)
    model.save(out / "model.h5")  # the legacy HDF5 full-model format
    report = {"test_accuracy": float((probs.argmax(1) == y[test]).mean()), "test_size": int(len(test)),
              "probs_sum_to_one": bool(np.allclose(probs.sum(1), 1.0, atol=1e-4))}
    if groups:
        data = (out / "model.h5").read_bytes()
        (out / "old.h5").write_bytes(data)
        with h5py.File(out / "old.h5", "r+") as f:
            config = json.loads(f.attrs["model_config"])
            for layer in config["config"]["layers"]:
                if layer["class_name"] == "DepthwiseConv2D":
                    layer["config"]["groups"] = 1
            f.attrs["model_config"] = json.dumps(config)
            f.attrs["keras_version"] = "2.12.0"
    (out / "report.json").write_text(json.dumps(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], groups="--groups" in sys.argv)
