"""The HTML report: self-contained, renders in headless Chromium, plots made from this build."""

import base64
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.release import report


def _images(html_text):
    return {m.group(1): Image.open(io.BytesIO(base64.b64decode(m.group(2))))
            for m in re.finditer(r'<img id="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', html_text)}


def test_report_is_self_contained_and_shows_this_builds_numbers(tiny_build):
    text = (tiny_build["dir"] / "report.html").read_text()
    m = tiny_build["manifest"]
    assert not re.search(r'(src|href)="(https?:|//|file:)', text), "the report must not load anything"
    assert f"{100 * m['metrics']['int8_host']['accuracy']:6.2f}%".strip() in text
    assert f"gate: {m['gate']['verdict'].upper()}" in text
    images = _images(text)
    assert set(images) == {"confusion", "per-class", "history", "layers"}
    # the per-layer chart and the worst layers of the host and each .tflite target, by their float layers' names
    worst = m["layers"]["host"]["worst"][0]
    assert f"<td>host</td><td>{worst['layer']}</td><td>{worst['op']}</td>" in text
    for img in images.values():
        assert img.size[0] > 300 and img.size[1] > 200
        assert len(img.convert("RGB").getcolors(1 << 20)) > 50, "a plot, not a blank image"


def test_history_plot_is_drawn_from_the_recorded_epochs(tiny_build, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    m = tiny_build["manifest"]
    assert len(m["train"]["history"]["val_accuracy"]) == 15 and len(m["qat"]["history"]["val_accuracy"]) == 2
    before = _images(report.html(m, d))["history"]
    changed = {**m, "qat": {**m["qat"], "history": {**m["qat"]["history"], "val_accuracy": [0.1, 0.2]}}}
    after = _images(report.html(changed, d))["history"]
    assert np.asarray(before).shape != np.asarray(after).shape or (np.asarray(before) != np.asarray(after)).any()


def test_confusion_plot_changes_with_the_predictions(tiny_build, tmp_path):
    """The picture is drawn from predictions.npz: plant a different int8 prediction set, and the
    confusion image changes while the float one is untouched."""
    d = tmp_path / "b"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    before = _images(report.html(tiny_build["manifest"], d))["confusion"]
    pred = dict(np.load(d / "predictions.npz"))
    pred["int8_top1"] = np.zeros_like(pred["int8_top1"])  # everything predicted as class 0
    np.savez(d / "predictions.npz", **pred)
    after = _images(report.html(tiny_build["manifest"], d))["confusion"]
    a, b = np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))
    assert a.shape == b.shape
    half = a.shape[1] // 2
    assert np.array_equal(a[:, : half - 20], b[:, : half - 20]), "float matrix must not change"
    assert not np.array_equal(a[:, half + 20 :], b[:, half + 20 :]), "int8 matrix must change"


def test_flipped_images_are_shown_with_both_predictions(tiny_build, tmp_path):
    """Plant int8 predictions that differ from float on three test images: the report shows exactly
    those three thumbnails, each with its float and int8 class and the true class."""
    d = tmp_path / "b"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    pred = dict(np.load(d / "predictions.npz"))
    n = len(tiny_build["manifest"]["class_names"])
    pred["int8_top1"] = pred["float_top1"].copy()
    pred["int8_top1"][:3] = (pred["float_top1"][:3] + 1) % n
    np.savez(d / "predictions.npz", **pred)
    groups = {title: (total, shown) for title, total, shown in report.flip_groups(tiny_build["manifest"], d)}
    total, shown = groups["float -> int8 (host)"]
    assert total == 3 and [s[0] for s in shown] == [str(i) for i in pred["ids"][:3]]
    names = tiny_build["manifest"]["class_names"]
    assert shown[0][2:] == (names[pred["float_top1"][0]], names[pred["int8_top1"][0]], names[pred["labels"][0]])
    assert all(f"host -> {t}" in groups for t in tiny_build["manifest"]["metrics"]["targets"])
    text = report.html(tiny_build["manifest"], d)
    assert "float -&gt; int8 (host): 3 images" in text
    assert text.count("<figure>") == sum(len(shown) for _, shown in groups.values())


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (the README's install step installs it; CI never skips)")
def test_report_renders_in_headless_chromium(tiny_build, tmp_path):
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,6000", (tiny_build["dir"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    # the confusion matrices are blue (Blues colormap): a rendered page with the plots has many
    # strongly blue pixels; a page whose images failed to load has none
    blue = (img[..., 2].astype(int) - img[..., 0].astype(int) > 60).sum()
    assert blue > 2000, f"only {blue} blue pixels: the plots did not render"


def test_readme_flashing_example_runs_on_a_build(tiny_build, tmp_path):
    """The README's ten-line flashing script works on a real manifest and refuses a tampered model."""
    import sys

    from conftest import REPO

    script = REPO / "examples" / "flash_check.py"
    assert script.read_text().strip() in (REPO / "README.md").read_text(), "README must show the script"
    manifest = tiny_build["dir"] / "manifest.json"
    proc = subprocess.run([sys.executable, str(script), str(manifest)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scale = tiny_build["manifest"]["artifacts"]["int8_tflite"]["input"]["scale"]
    assert f"input scale {scale}" in proc.stdout
    # its pixel -> int8 step is the one the build validated with (default input 0..1: q = pixel - 128)
    assert "pixel 0 -> [-128], pixel 255 -> [127]" in proc.stdout, proc.stdout
    d = tmp_path / "b"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    (d / "model_int8.tflite").write_bytes(b"tampered")
    proc = subprocess.run([sys.executable, str(script), str(d / "manifest.json")], capture_output=True, text=True)
    assert proc.returncode == 1 and "changed since the build" in proc.stderr  # (an uncaught AssertionError)
