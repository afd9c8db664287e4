"""Child process (KERAS_BACKEND=tensorflow): the alternatives a user has without edgebuild.

1. Post-training full-int8 quantization: the float model through the TFLiteConverter with the
   build's own calibration set as representative data (exactly what edgebuild's export does for
   the QAT model, so the only difference is QAT).
2. Keras's own `model.quantize("int8")`: accuracy in Keras, then its LiteRT export attempted.

3. With --int16: LiteRT's 16x8 mode (int16 activations, int8 weights) of the same float model, and the
   per-layer report's worst layer of the PTQ int8 and the 16x8 model.

Usage: python -m bench.ptq BUILD_DIR OUT.json [--int16]
"""

import json
import sys
from pathlib import Path


def main(build_dir, out_json):
    import keras

    from pipeline.data import preprocess
    from pipeline.device import tflite_info
    from pipeline.engine.config import PreprocessConfig
    from pipeline.data.calibration import calibration_indices
    from pipeline.data.splits import load_dataset
    from pipeline.device.runtimes import run_tflite
    from pipeline.model.convert import export_int8

    build_dir = Path(build_dir)
    data = load_dataset(build_dir / "dataset.npz")
    calib = json.loads((build_dir / "calibration.json").read_text())
    pp = PreprocessConfig(**json.loads((build_dir / "manifest.json").read_text())["config"]["preprocess"])
    calibration = preprocess.to_float(data["x"][calibration_indices(data, calib)], pp)
    test = data["test"]
    x_test, y_test = data["x"][test], data["y"][test]

    model = keras.models.load_model(build_dir / "float.keras")
    ptq_path = build_dir / "bench_ptq_int8.tflite"
    export_int8(model, calibration, ptq_path)
    info = tflite_info.describe(ptq_path)
    q = info["inputs"][0]
    out = run_tflite(ptq_path, preprocess.to_int8(x_test, pp, q["scale"], q["zero_point"]))
    manifest = json.loads((build_dir / "manifest.json").read_text())
    if ((manifest["config"].get("task") or {}).get("kind")) == "anomaly":  # the figure is the ROC AUC over clips
        from pipeline.release.tasks import anomaly

        groups = data["groups"][test] if "groups" in data else None
        record, _ = anomaly.metrics(preprocess.dequantize(out, info["outputs"][0]), preprocess.to_float(x_test, pp),
                                    y_test, groups)
        Path(out_json).write_text(json.dumps({"ptq_int8_auc": record["auc"], "ptq_int8_pauc": record["pauc"],
                                              "ptq_int8_bytes": ptq_path.stat().st_size}))
        return
    result = {"ptq_int8_accuracy": float((out.argmax(1) == y_test).mean()), "ptq_int8_bytes": ptq_path.stat().st_size,
              "ptq_float_ops": info["float_ops"],  # ops the converter left in float (a Keras LayerNorm's NEG)
              "ptq_int8_top1": out.argmax(1).tolist()}
    if "--int16" in sys.argv:  # LiteRT's 16x8 mode (export.activations = "int16"), the same float model and calibration
        result["ptq_int8_worst_layer"] = _worst_layer(model, ptq_path, x_test, y_test, pp, build_dir / "bench-ptq-layers")
        path16 = build_dir / "bench_ptq_int16x8.tflite"
        try:
            export_int8(model, calibration, path16, activations="int16")
            q16 = tflite_info.describe(path16)["inputs"][0]
            out16 = run_tflite(path16, preprocess.to_input(x_test, pp, q16))
        except Exception as exc:  # reported as what it is (the converter or LiteRT refusing 16x8)
            result["int16x8_error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        else:
            result.update(int16x8_accuracy=float((out16.argmax(1) == y_test).mean()),
                          int16x8_bytes=path16.stat().st_size, int16x8_top1=out16.argmax(1).tolist(),
                          int16x8_worst_layer=_worst_layer(model, path16, x_test, y_test, pp,
                                                           build_dir / "bench-int16-layers"))

    kq = keras.models.load_model(build_dir / "float.keras")
    try:
        kq.quantize("int8")
        logits = kq.predict(preprocess.to_float(x_test, pp), verbose=0)
        result["keras_quantize_accuracy"] = float((logits.argmax(1) == y_test).mean())
        result["keras_quantize_note"] = "model.quantize('int8') quantizes Dense/EinsumDense weights only; convolutions stay float"
    except Exception as exc:  # reported as what it is
        result["keras_quantize_accuracy"] = None
        result["keras_quantize_note"] = f"model.quantize('int8') failed: {type(exc).__name__}: {str(exc)[:200]}"
    try:
        kq.export(str(build_dir / "bench_keras_quantize.tflite"), format="litert", verbose=False)
        result["keras_quantize_litert_export"] = "ok"
    except Exception as exc:
        result["keras_quantize_litert_export"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    Path(out_json).write_text(json.dumps(result))


def _worst_layer(model, tflite_path, x_test, y_test, pp, work):
    """The per-layer report's worst row for a .tflite of this float model (layer_refs, as evaluate runs it)."""
    from pipeline.data import preprocess
    from pipeline.device import tflite_info
    from pipeline.model import layer_refs

    few = layer_refs.subset(y_test)  # the samples evaluate's report uses
    q = tflite_info.describe(tflite_path)["inputs"][0]
    try:
        report = layer_refs.host_report(model, tflite_path, preprocess.to_float(x_test[few], pp),
                                        preprocess.to_input(x_test[few], pp, q), work.with_suffix(".npz"))
    except Exception as exc:  # noqa: BLE001 (reported, not fatal to the bench)
        return {"layer": f"(no report: {type(exc).__name__}: {str(exc)[:120]})", "op": "-", "snr_db": None,
                "lost_db": None}
    finally:
        work.with_suffix(".npz").unlink(missing_ok=True)
    return report["worst"][0] if report["worst"] else None


if __name__ == "__main__":
    main(*[a for a in sys.argv[1:] if not a.startswith("--")])
