"""data.resize = 'keras' loads images the way keras.utils.image_dataset_from_directory does (TensorFlow's
decoder and resize), so a model's accuracy matches the Keras pipeline it was measured with; Pillow's
JPEG decoder and antialiased resize differ by up to 16 levels per pixel on the same photos."""

import numpy as np
import pytest

from conftest import SIGNS
from pipeline.data.sources import load_source
from pipeline.engine import config as config_mod

def _load(size, *sets):
    cfg = config_mod.load(None, [f"data.source={str(SIGNS)!r}", f"data.image_size={size}", "data.channels=3",
                                 *sets]).data
    return load_source(cfg.source, cfg)

def test_an_image_folder_loads_like_image_dataset_from_directory():
    import keras

    x, y, ids, names, *_ = _load(64, "data.resize='keras'")
    ds = keras.utils.image_dataset_from_directory(SIGNS, image_size=(64, 64), batch_size=None, shuffle=False)
    pairs = [(img.numpy(), int(label)) for img, label in ds]
    ref = np.stack([img for img, _ in pairs])
    assert [str(n) for n in ds.class_names] == names and x.shape == ref.shape
    assert [label for _, label in pairs] == y.tolist()
    assert np.abs(x.astype(np.float32) - ref).max() <= 0.51  # Keras keeps the resized float; we round it
    pillow = _load(64)[0]
    assert np.abs(pillow.astype(np.float32) - ref).max() > 8  # the default differs visibly

@pytest.mark.parametrize("size", [100, 32])
def test_the_keras_loader_keeps_the_data_contract(size):
    x, y, ids, names, *_ = _load(size, "data.resize='keras'")
    assert x.dtype == np.uint8 and x.shape[1:] == (size, size, 3) and len(ids) == len(y) == len(x)
