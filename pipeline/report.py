"""Human-readable views of a manifest: the terminal summary table (and, later, the HTML report)."""


def _pct(v):
    return "-" if v is None else f"{100 * v:6.2f}%"


def summary(manifest):
    m = manifest["metrics"]
    art = manifest["artifacts"]
    rows = [("model", "runtime", "accuracy", "agree w/ float", "size")]
    rows.append(("float", "keras (jax)", _pct(m["float"]["accuracy"]), "", f"{art['float_keras']['bytes']:,} B"))
    rows.append(("float", "tflite", _pct(m["float_tflite"]["accuracy"]), _pct(m["float_tflite"]["top1_agreement_with_float"]), f"{art['float_tflite']['bytes']:,} B"))
    rows.append(("float", "onnxruntime", _pct(m["onnx"]["accuracy"]), _pct(m["onnx"]["top1_agreement_with_float"]), f"{art['onnx']['bytes']:,} B"))
    rows.append(("int8", "ai-edge-litert (host)", _pct(m["int8_host"]["accuracy"]), _pct(m["int8_host"]["top1_agreement_with_float"]), f"{art['int8_tflite']['bytes']:,} B"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"build {manifest['name']}: {manifest['splits']['test']} test samples, classes {len(manifest['class_names'])}"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    targets = m.get("targets", {})
    if targets:
        trows = [("target", "runtime", "accuracy", "top-1 agree", "bit-exact", "max|d|", "img/s", "samples")]
        for name, t in sorted(targets.items()):
            trows.append((name, f"{t['runtime']} {t['runtime_version']}", _pct(t["accuracy"]), _pct(t["top1_agreement"]),
                          _pct(t["bitexact_fraction"]), str(t["max_abs_diff"]), f"{t['images_per_s']:.0f}",
                          f"{t['samples']}{' (sampled)' if t.get('sampled') else ''}"))
        tw = [max(len(r[i]) for r in trows) for i in range(8)]
        lines.append("")
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, tw)).rstrip() for r in trows]
    q = art["int8_tflite"]
    lines.append("")
    lines.append(f"int8 input  scale {q['input']['scale']:.8g} zero_point {q['input']['zero_point']}  shape {q['input']['shape']}")
    lines.append(f"int8 output scale {q['output']['scale']:.8g} zero_point {q['output']['zero_point']}  shape {q['output']['shape']}")
    if manifest.get("gate"):
        from .gate import table

        lines.append("")
        lines.append(table(manifest["gate"]))
    return "\n".join(lines)
