"""`python -m bench --only formats --at BUILD_DIR` (also part of the whole run): both deployment formats
of one finished build side by side."""

from pathlib import Path

from bench.common import Section


def formats(manifest):
    """Both deployment formats of one build side by side: sizes (float vs int8), host accuracy, the int8
    ONNX's agreement with the int8 .tflite, and each emulated target that ran one of them."""
    a, m = manifest["artifacts"], manifest["metrics"]
    onnx = m["onnx_int8"]
    return {
        "build": manifest["name"],
        "test_samples": manifest["splits"]["test"],
        "tflite": {"float_bytes": a["float_tflite"]["bytes"], "int8_bytes": a["int8_tflite"]["bytes"],
                   "float_accuracy": m["float_tflite"]["accuracy"], "int8_accuracy": m["int8_host"]["accuracy"]},
        "onnx": {"float_bytes": a["onnx"]["bytes"], "int8_bytes": a["int8_onnx"]["bytes"],
                 "float_accuracy": m["onnx"]["accuracy"], "int8_accuracy": onnx["accuracy"]},
        "int8_onnx_vs_int8_tflite": {
            "accuracy_diff_pp": round(100 * (onnx["accuracy"] - m["int8_host"]["accuracy"]), 3),
            **{k: onnx[k] for k in ("top1_agreement_with_int8_tflite", "bitexact_fraction_vs_int8_tflite",
                                    "max_dequantized_diff_vs_int8_tflite")}},
        "targets": {n: {"model": t.get("model"), "runtime": f"{t['runtime']} {t['runtime_version']}",
                        **{k: t.get(k) for k in ("accuracy", "top1_agreement", "bitexact_fraction")},
                        "isa_bitexact_fraction": (t.get("isa") or {}).get("bitexact_fraction")}
                    for n, t in sorted(m["targets"].items())},
    }


def _measure(args, work, targets_cache):
    from pipeline.release import manifest as manifest_mod

    return formats(manifest_mod.read(Path(args.at) / "manifest.json"))


def formats_markdown(f):
    lines = ["| format | float bytes | int8 bytes | int8/float | float accuracy | int8 accuracy |", "|---|---|---|---|---|---|"]
    for name in ("tflite", "onnx"):
        r = f[name]
        lines.append(f"| {name} | {r['float_bytes']:,} | {r['int8_bytes']:,} | {r['int8_bytes'] / r['float_bytes']:.2f} | "
                     f"{100 * r['float_accuracy']:.2f}% | {100 * r['int8_accuracy']:.2f}% |")
    v = f["int8_onnx_vs_int8_tflite"]
    lines += ["", f"int8 ONNX vs int8 TFLite on {f['test_samples']} test images: accuracy {v['accuracy_diff_pp']:+.2f} pp, "
              f"top-1 agreement {100 * v['top1_agreement_with_int8_tflite']:.2f}%, "
              f"{100 * v['bitexact_fraction_vs_int8_tflite']:.2f}% of outputs bit-exact."]
    return "\n".join(lines)


SECTION = Section("TFLite and ONNX side by side",
                  "the TFLite/ONNX side-by-side figures of the finished build --at", "formats", _measure,
                  formats_markdown, at="BUILD_DIR")
