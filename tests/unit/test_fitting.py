"""QAT's distillation loss (model.fitting), in-process: the labels' cross-entropy mixed with the KL of
the teacher's softened logits, and a fit with it that keeps the labels' accuracy as its metric."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.engine.progress import Progress  # noqa: E402
from pipeline.model import fitting  # noqa: E402


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_distillation_loss_is_the_labels_cross_entropy_mixed_with_the_teachers_kl():
    rng = np.random.RandomState(0)
    labels, teacher, student = rng.randint(0, 4, 6), rng.randn(6, 4) * 3, rng.randn(6, 4)
    y = fitting.distillation_targets(labels, teacher)
    assert y.shape == (6, 5) and (y[:, 0] == labels).all()
    got = np.asarray(fitting.distillation_loss(0.7, 2.0)(y, student.astype("float32")))
    ce = -np.log(_softmax(student)[np.arange(6), labels])
    pt, ps = _softmax(teacher / 2.0), _softmax(student / 2.0)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(-1)
    np.testing.assert_allclose(got, 0.3 * ce + 0.7 * 4.0 * kl, rtol=1e-4)
    # weight 0 is the labels' cross-entropy alone; a student equal to its teacher adds no KL
    np.testing.assert_allclose(np.asarray(fitting.distillation_loss(0.0, 2.0)(y, student.astype("float32"))), ce,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fitting.distillation_loss(1.0, 3.0)(y, teacher.astype("float32"))), 0,
                               atol=1e-5)


def test_a_distilled_fit_reports_label_accuracy_and_leaves_the_plain_loss_compiled(tmp_path):
    rng = np.random.RandomState(1)
    x = rng.randn(96, 5).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    teacher = np.stack([-x[:, 0], x[:, 0]], 1) * 4
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    fitted = fitting.fit(model, (x[:64], y[:64]), (x[64:], y[64:]), 30, 16, 0.1, Progress(quiet=True), "t", keep_best=True,
                         distill=(0.5, 2.0, teacher[:64], teacher[64:]))
    accuracy = float((model.predict(x[64:], verbose=0).argmax(1) == y[64:]).mean())
    assert fitted["kept_val_accuracy"] == round(accuracy, 5) and accuracy > 0.9
    model.save(tmp_path / "m.keras")  # the plain loss again: it loads without the closure
    assert isinstance(keras.models.load_model(tmp_path / "m.keras").loss, keras.losses.SparseCategoricalCrossentropy)
