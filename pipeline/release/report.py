"""Human-readable views of a manifest: the terminal summary table and the self-contained HTML report."""

from pathlib import Path

from pipeline.device.layer_error import worst_line
from pipeline.engine import text


def _db(v):
    return "-" if v is None else f"{v:.1f}"


def _pct(v):
    return "-" if v is None else f"{100 * v:6.2f}%"


def _task(manifest):
    """The task module of a manifest's task kind (None: classification, the report's own views)."""
    from pipeline.release import tasks

    return tasks.get(tasks.kind(manifest))


def _metric_cell(record, task):
    """A model's figure in a table: its accuracy, or the task's own (an anomaly model's AUC)."""
    return _pct(record.get("accuracy")) if task is None else task.metric_cell(record)


def _agree_cell(t, task):
    """A target's agreement with the host: top-1, or the correlation of its scores (a task's)."""
    return _pct(t.get("top1_agreement")) if task is None else f"{t['score_correlation']:.4f} score corr."


def _twin_cell(t):
    isa = t.get("isa") or {}
    if isa.get("refused"):
        return "refused"
    if not isa.get("twin"):
        return "no twin"
    return f"{_pct(isa['bitexact_fraction']).strip()} (max {isa['max_abs_diff']:.4g})"


def _target_table(targets, task=None):
    trows = [("target", "runtime", "accuracy" if task is None else "ROC", "vs host: top-1 agree" if task is None else
              "vs host: scores", "bit-exact", "max|d|", "vs x86 twin: bit-exact", "img/s" if task is None else "samples/s",
              "samples")]
    for name, t in sorted(targets.items()):
        if t.get("refused"):
            trows.append((name, f"{t['runtime']} {t['runtime_version']}", "refused: " + text.clip(t["refused"], 70),
                          "", "", "", "", "", ""))
            continue
        trows.append((name, f"{t['runtime']} {t['runtime_version']}", _metric_cell(t, task), _agree_cell(t, task),
                      _pct(t["bitexact_fraction"]), f"{t['max_abs_diff']:.4g}", _twin_cell(t),
                      f"{t['images_per_s']:.0f}", f"{t['samples']}{' (sampled)' if t.get('sampled') else ''}"))
    return (text.table(trows) + _per_target(targets, lambda t: first_difference_line(t.get("first_difference")))
            + _per_target(targets, board_line))


def board_line(t):
    """'on board(s) ...: latency p50/p90/p99 ...' for a target run on real boards over SSH, or ''."""
    executor = t.get("executor") or {}
    if executor.get("kind") != "ssh":
        return ""
    boards = ", ".join(f"{b['board']} ({b['identity'].get('arch')}, {b['identity'].get('cpu') or 'CPU unknown'}"
                       f"{', emulated' if b['identity'].get('emulated') else ''})" for b in executor.get("boards", []))
    line = f"on board(s) {boards}"
    lat = t.get("latency")
    if lat:
        line += (f": latency p50 {lat['p50_ms']:.3g} / p90 {lat['p90_ms']:.3g} / p99 {lat['p99_ms']:.3g} ms per image "
                 f"({lat['count']} invokes, {lat['threads']} thread(s))")
        if lat["measured_on"] != "device":
            line += "; an emulated board: the throughput of the emulation, not a device's latency"
    for rerun in t.get("reruns") or []:
        line += f"; part {rerun['part']} lost on {rerun['lost_on']} ({text.clip(rerun['reason'], 60)}), re-run on {rerun['ran_on']}"
    return line


def _per_target(targets, describe, sep=" "):
    """'NAME<sep>text' for each target that `describe` has something to say about, by name."""
    return [f"{name}{sep}{line}" for name, t in sorted(targets.items()) if (line := describe(t))]


def first_difference_line(d):
    """'vs host: first differs at op #3 CONV_2D (tensor x, max |diff| 1) ...', or '' without a difference."""
    if not d:
        return ""
    where = (f"first differs at op #{d['op_index']} {d['op']} (tensor {d['tensor']}, max |diff| {d['max_abs_diff']:.4g}, "
             f"{100 * d['fraction_differing']:.1f}% of its elements)" if d.get("op") else d.get("note", ""))
    line = f"vs {d['against']}: {where}; sample {d['sample']} ({d['samples_differing']} samples differ)"
    if d.get("float_outputs"):
        line += "; float outputs: rounding-level differences are expected and not gated"
    return line


def resource_lines(manifest):
    """What the model asks of a device, per artifact, and each NPU target's compiled figures."""
    lines = []
    for key, r in sorted((manifest.get("resources") or {}).items()):
        arena = ("" if r.get("arena_bytes") is None and "refused" not in r else
                 f", TFLM arena {r['arena_bytes']:,} B" if r.get("arena_bytes") else
                 f", TFLM cannot run it ({text.clip(r['refused'], 80)})")
        top = (r.get("largest_by_macs") or [{}])[0]
        largest = f"; most MACs: {text.clip(top['name'], 40)} ({top['op']}, {100 * top['share']:.0f}%)" if top else ""
        lines.append(f"{r['file']}: {r['parameters']:,} parameters, {r['weight_bytes']:,} B of weights, "
                     f"{r['model_bytes']:,} B file, {r['macs']:,} MACs{arena}{largest}")
    return lines + _per_target(manifest["metrics"].get("targets") or {}, lambda t: npu_line(t.get("npu")), ": ")


def npu_line(npu):
    """"Vela 5.2.0, ethos-u55-128: SRAM ... B, ..." or '' for a target without an NPU."""
    if not npu:
        return ""
    if npu.get("refused"):
        return f"Vela refused the model: {text.clip(npu['refused'], 120)}"
    cpu = f" ({', '.join(npu['cpu_fallback'])})" if npu["cpu_fallback"] else ""
    return (f"Vela {npu['vela_version']}, {npu['accelerator_config']}: SRAM {npu['sram_bytes']:,} B, off-chip flash "
            f"{npu['off_chip_flash_bytes']:,} B, {npu['macs']:,} MACs, {npu['cycles']:,} cycles = {npu['inference_ms']:.4g} "
            f"ms at {npu['clock_hz'] / 1e6:g} MHz (estimated, not run), {npu['npu_ops']} ops on the NPU, "
            f"{npu['cpu_ops']} on the CPU{cpu}")


def _gate_lines(manifest):
    if not manifest.get("gate"):
        return []
    from pipeline.release.gate import table

    return ["", table(manifest["gate"])]


def _tensor_line(label, t):
    quant = f"scale {t['scale']:.8g} zero_point {t['zero_point']}" if t.get("scale") else "not quantized"
    return f"{label} {t['dtype']:<7} {quant}  shape {t['shape']}"


def validation_summary(manifest):
    m, art = manifest["metrics"], manifest["artifacts"]["model"]
    test_set = manifest.get("test_set") or {}
    lines = [f"validation {manifest['name']}: {art['source']} ({art['bytes']:,} B, not built here) on "
             f"{test_set.get('size')} test samples from {test_set.get('source')}, classes {len(manifest['class_names'])}"]
    host, task = m["host"], _task(manifest)
    lines += text.table([("runtime", "accuracy" if task is None else "ROC", "samples"),
                         (f"{host['runtime']} {host['runtime_version']} (host)", _metric_cell(host, task),
                          str(host["samples"]))])
    lines += _top_k_lines(m)
    if m.get("targets"):
        lines.append("")
        lines += _target_table(m["targets"], task)
    lines += ["", _tensor_line("input ", art["input"]), _tensor_line("output", art["output"])]
    lines += ["", *resource_lines(manifest)] if manifest.get("resources") else []
    lines += ["", *layer_lines(manifest)] if layer_lines(manifest) else []
    return "\n".join(lines + _gate_lines(manifest))


def _top_k_lines(m):
    """['top-5 accuracy: float 99.1%, int8 ..., <target> ...'] when task.top_k > 1 measured it, else []."""
    top_k = [(name, m[key]["top_k"]) for name, key in (("float", "float"), ("int8", "int8_host"),
                                                       ("int8 onnx", "onnx_int8"), ("host", "host"))
             if "top_k" in m.get(key, {})]
    top_k += [(name, t["top_k"]) for name, t in sorted((m.get("targets") or {}).items()) if "top_k" in t]
    if not top_k:
        return []
    return [f"top-{top_k[0][1]['k']} accuracy: " + ", ".join(f"{n} {_pct(r['accuracy']).strip()}" for n, r in top_k)]


def accuracy_rows(manifest):
    """The host's accuracy rows of a build (or a validation), in order: [{model, runtime, accuracy,
    agreement (top-1 with float; None for the float model itself), bytes}]. The terminal summary and the
    HTML report both show these."""
    m, art, task = manifest["metrics"], manifest["artifacts"], _task(manifest)
    if manifest.get("kind") == "validation":
        host, model = m["host"], art["model"]
        return [{"model": f"{model.get('format', 'tflite')}, {model['input']['dtype']} input",
                 "runtime": f"{host['runtime']} {host['runtime_version']} (host)", "accuracy": host.get("accuracy"),
                 "cell": _metric_cell(host, task), "agreement": None, "bytes": model["bytes"]}]
    rows = [("float", "keras (jax)", "float", "float_keras"), ("float", "tflite", "float_tflite", "float_tflite"),
            ("float", "onnxruntime", "onnx", "onnx"), ("int8", "ai-edge-litert (host)", "int8_host", "int8_tflite"),
            ("int8 onnx", "onnxruntime (host)", "onnx_int8", "int8_onnx")]
    # a build without ONNX (export.formats, or a conversion that failed) has no onnx rows
    return [{"model": model, "runtime": runtime, "accuracy": m[metric].get("accuracy"),
             "cell": _metric_cell(m[metric], task),
             "agreement": m[metric].get("top1_agreement_with_float") if metric != "float" else None,
             "bytes": art[artifact]["bytes"]} for model, runtime, metric, artifact in rows if metric in m]


def declared_lines(sections):
    """The report lines of declared stages ([(name, lines)]), one block each."""
    return [line for name, lines in sections for line in ("", f"{name}:", *(f"  {x}" for x in lines))]


def summary(manifest, sections=()):
    """The terminal summary; `sections`: [(name, lines)] of declared stages."""
    if manifest.get("kind") == "validation":
        return validation_summary(manifest)  # declared stages run in full builds only
    m = manifest["metrics"]
    art = manifest["artifacts"]
    task = _task(manifest)
    rows = [("model", "runtime", "accuracy" if task is None else "ROC", "agree w/ float", "size")]
    rows += [(r["model"], r["runtime"], r["cell"], _pct(r["agreement"]) if r["agreement"] is not None else "",
              f"{r['bytes']:,} B") for r in accuracy_rows(manifest)]
    test_set = manifest.get("test_set") or {}
    lines = [f"build {manifest['name']}: {manifest['splits']['test']} test samples"
             + (f" from {test_set['source']}" if test_set.get("fixed") else "")
             + f", classes {len(manifest['class_names'])}"]
    kept = (manifest.get("qat") or {}).get("kept_epoch")
    if kept is not None and (manifest["qat"].get("kept_val_accuracy") is not None):
        lines.append(f"qat kept epoch {kept}: val accuracy {_pct(manifest['qat']['kept_val_accuracy']).strip()}"
                     f" (float model {_pct(manifest['qat'].get('float_val_accuracy')).strip()})")
    lines += text.table(rows)
    lines += _top_k_lines(m)
    if "onnx_int8" in m and task is not None:
        o = m["onnx_int8"]
        lines.append(f"int8 ONNX vs int8 TFLite (host): score correlation {o['score_correlation_vs_int8_tflite']:.4f}, "
                     f"{_pct(o['bitexact_fraction_vs_int8_tflite']).strip()} of outputs bit-exact, max dequantized "
                     f"|diff| {o['max_dequantized_diff_vs_int8_tflite']:.4g}")
    elif "onnx_int8" in m:
        o = m["onnx_int8"]
        lines.append(f"int8 ONNX vs int8 TFLite (host): top-1 agreement {_pct(o['top1_agreement_with_int8_tflite']).strip()}, "
                     f"{_pct(o['bitexact_fraction_vs_int8_tflite']).strip()} of outputs bit-exact, max dequantized "
                     f"|diff| {o['max_dequantized_diff_vs_int8_tflite']:.4g}")
    if m.get("targets"):
        lines.append("")
        lines += _target_table(m["targets"], task)
    q = art["int8_tflite"]
    lines.append("")
    width = q.get("activations", "int8")
    lines.append(f"{width} input  scale {q['input']['scale']:.8g} zero_point {q['input']['zero_point']}  shape {q['input']['shape']}")
    lines.append(f"{width} output scale {q['output']['scale']:.8g} zero_point {q['output']['zero_point']}  shape {q['output']['shape']}")
    lines += ["", *resource_lines(manifest)] if manifest.get("resources") else []
    lines += ["", *layer_lines(manifest)] if layer_lines(manifest) else []
    return "\n".join(lines + declared_lines(sections) + _gate_lines(manifest))


def _pyplot():
    """matplotlib.pyplot drawing to files, with every text literal: a class name such as '$x$' or 'a_b^c' is
    shown as written, never parsed as mathtext (which fails on some names)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _png(fig):
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _confusion(labels, top1, n):
    import numpy as np

    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, top1), 1)
    return cm


def _confusion_figure(cms, class_names):
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(cms), figsize=(4.6 * len(cms), 4.2), squeeze=False)
    for ax, (title, cm) in zip(axes[0], cms.items()):
        ax.imshow(cm, cmap="Blues")
        ax.set_title(f"{title} (accuracy {cm.trace() / max(1, cm.sum()):.2%})")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = range(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 12 else 0)
        ax.set_yticks(ticks, class_names)
        for i in ticks:
            for j in ticks:
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
    return fig


def _delta_figure(metrics, class_names):
    plt = _pyplot()

    series = {"int8 host": metrics["int8_host"]["per_class"]}
    for name, t in sorted(metrics.get("targets", {}).items()):
        if "per_class" in t:  # not a target that refused or crashed on the model
            series[name] = t["per_class"]
    ref = metrics["float"]["per_class"]
    # wide enough for every bar, narrow enough that the page does not shrink the labels away
    fig, ax = plt.subplots(figsize=(min(11, max(6, 0.3 * len(class_names) * len(series))), 3.4))
    width = 0.8 / len(series)
    for k, (label, per_class) in enumerate(series.items()):
        deltas = [100 * ((per_class.get(c) or 0) - (ref.get(c) or 0)) for c in class_names]
        ax.bar([i + k * width for i in range(len(class_names))], deltas, width, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(class_names))], class_names)
    ax.set_ylabel("accuracy − float (pp)")
    ax.set_title("per-class accuracy change vs the float model")
    ax.legend(fontsize=8)
    return fig


def layer_reports(manifest):
    """[(where, the per-layer report)]: the build host's, then each target's that has one."""
    found = [("host", (manifest.get("layers") or {}).get("host"))]
    found += [(name, t.get("layers")) for name, t in sorted(manifest["metrics"].get("targets", {}).items())]
    return [(where, r) for where, r in found if r and r.get("tensors")]


def layer_lines(manifest):
    """One summary line per runtime with a per-layer report: the layer that loses the most there."""
    reports = layer_reports(manifest)
    if not reports:
        return []
    samples = reports[0][1]["samples"]
    return [f"per-layer error vs the float model ({samples} test samples), SNR at each quantized tensor:"] + [
        f"  {where}: {worst_line(r) or 'no layer compared'}; lowest SNR "
        f"{min((row['snr_db'] for row in r['tensors'] if row['snr_db'] is not None), default=float('nan')):.1f} dB"
        for where, r in reports]


def _layers_figure(manifest):
    """The SNR of every compared tensor, named by its float layer, on the host and each target."""
    reports = layer_reports(manifest)
    if not reports:
        return None
    plt = _pyplot()
    names = [row["layer"] for row in reports[0][1]["tensors"]]
    fig, ax = plt.subplots(figsize=(min(12, max(6, 0.35 * len(names))), 3.8))
    for where, r in reports:
        snr = {row["layer"]: row["snr_db"] for row in r["tensors"]}
        ax.plot(range(len(names)), [snr.get(n) if snr.get(n) is not None else float("nan") for n in names],
                marker="o", markersize=3, label=where)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SNR vs float (dB)")
    ax.set_title("per-layer error of the int8 model (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _history_figure(manifest):
    """Per-epoch accuracy and val accuracy of train and QAT (loss, for a model fitted without accuracy:
    an autoencoder), the kept epochs marked; None without history."""
    plt = _pyplot()

    stages = [(name, manifest.get(name) or {}) for name in ("train", "qat")]
    metric = "accuracy" if any((r.get("history") or {}).get("accuracy") for _, r in stages) else "loss"
    stages = [(n, r) for n, r in stages if (r.get("history") or {}).get(metric)]
    if not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 3.2), squeeze=False)
    for ax, (name, rec) in zip(axes[0], stages):
        hist = rec["history"]
        epochs = list(range(1, len(hist[metric]) + 1))
        ax.plot(epochs, hist[metric], marker="o", label=f"train {metric}")
        if hist.get(f"val_{metric}"):
            ax.plot(epochs, hist[f"val_{metric}"], marker="o", label=f"val {metric}")
        if (rec.get("initial") or {}).get(f"val_{metric}") is not None:
            trained = name == "qat" or rec.get("pretrained") or str(rec.get("recipe", "")).endswith((".keras", ".h5"))
            ax.axhline(rec["initial"][f"val_{metric}"], color="gray", linestyle=":",
                       label="val before fine-tuning" if trained else "val before training")
        if rec.get("float_val_accuracy") is not None:
            ax.axhline(rec["float_val_accuracy"], color="black", linestyle="--", linewidth=0.8, label="float model val")
        if rec.get("kept_epoch"):
            ax.axvline(rec["kept_epoch"], color="green", alpha=0.4, label=f"kept: epoch {rec['kept_epoch']}")
        ax.set_title(f"{name}: per-epoch {metric}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _feature_picture(x):
    """Features as a spectrogram-style grayscale picture: 2-D (frames, coefficients) with time across,
    1-D as one row, higher ranks flattened to their last axis; each sample scaled to its own range."""
    import numpy as np

    x = np.asarray(x, np.float64)
    x = x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, x.shape[-1])
    x = x.T[::-1] if x.shape[0] > 1 else x  # time across, the first coefficient at the bottom
    lo, hi = float(x.min()), float(x.max())
    return np.round(255.0 * (x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.uint8)[..., None]


def _thumbnail(image, size=64):
    """A uint8 (H, W, C) image (or features, drawn by `_feature_picture`) as a base64 PNG, scaled
    (nearest) to `size` pixels wide."""
    import base64
    import io

    from PIL import Image

    if image.dtype != "uint8" or image.ndim != 3:
        image, size = _feature_picture(image), 2 * size
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    img = img.resize((size, max(1, round(size * image.shape[0] / image.shape[1]))), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def flip_groups(manifest, build_dir, limit=24):
    """The test images whose top-1 changes: float -> int8 on the host (a build), and host -> each
    target. [(title, total, [(id, image, before, after, true)])], at most `limit` images a group."""

    import numpy as np

    build_dir = Path(build_dir)
    names = manifest["class_names"]
    pred = np.load(build_dir / "predictions.npz")
    with np.load(build_dir / "dataset.npz") as data:
        row = {str(i): k for k, i in enumerate(data["ids"])}
        images = data["x"]
    ids = [str(i) for i in pred["ids"]]
    labels = dict(zip(ids, pred["labels"].tolist()))
    host_top1 = pred["host_output"].argmax(1) if "host_output" in pred.files else pred["int8_top1"]
    host = dict(zip(ids, host_top1.tolist()))
    groups = []

    def group(title, pairs):
        pairs = [(i, b, a) for i, b, a in pairs if b != a]
        shown = [(i, images[row[i]], names[b], names[a], names[labels[i]]) for i, b, a in pairs[:limit]]
        groups.append((title, len(pairs), shown))

    if manifest.get("kind") != "validation":
        group("float -> int8 (host)", zip(ids, pred["float_top1"].tolist(), pred["int8_top1"].tolist()))
    for name in sorted(manifest["metrics"].get("targets", {})):
        path = build_dir / f"target-{name}.npz"
        if not path.exists():
            continue
        with np.load(path) as t:
            if t["outputs"].ndim != 2:  # the target refused the model
                continue
            group(f"host -> {name}", ((str(i), host[str(i)], int(v)) for i, v in zip(t["ids"], t["outputs"].argmax(1))))
    return groups


def html(manifest, build_dir, sections=()):
    """A self-contained HTML report (plots inlined as base64 PNG, no external resources), rendered from
    templates/report.html.j2; `sections`: [(name, lines)] of declared stages, one heading each."""
    import jinja2
    import numpy as np

    m, names = manifest["metrics"], manifest["class_names"]
    pred = np.load(Path(build_dir) / "predictions.npz")
    n = len(names)
    validation = manifest.get("kind") == "validation"
    task = _task(manifest)
    if task is not None:
        cms = None
    elif validation:
        cms = {"host": _confusion(pred["labels"], pred["host_top1"], n)}
    else:
        cms = {"float": _confusion(pred["labels"], pred["float_top1"], n),
               "int8 (host)": _confusion(pred["labels"], pred["int8_top1"], n)}
    history_fig = None if validation else _history_figure(manifest)
    layers_fig = _layers_figure(manifest)
    test_set = manifest.get("test_set") or {}
    pre = manifest.get("preprocess") or {}
    art = manifest["artifacts"]
    acc_rows = [(r["model"], r["runtime"], r["cell"]) for r in accuracy_rows(manifest)]
    targets = m.get("targets", {})
    for name, t in sorted(targets.items()):
        fmt = acc_rows[0][0] if validation else "int8 onnx" if str(t.get("model", "")).endswith(".onnx") else "int8"
        acc_rows.append((fmt, f"{name}: {t['runtime']} {t['runtime_version']}",
                         "refused: " + t["refused"] if t.get("refused") else _metric_cell(t, task)))
    target_rows = [(name, "-" if t.get("refused") else _agree_cell(t, task), _pct(t.get("bitexact_fraction")),
                    t.get("max_abs_diff", "-"),
                    _twin_cell(t), "; ".join(filter(None, (first_difference_line(t.get("first_difference")),
                                                           board_line(t)))) or "-",
                    f"{t['images_per_s']:.0f}" if t.get("images_per_s") else "-", t.get("samples", "-"))
                   for name, t in sorted(targets.items())]
    gate = manifest.get("gate")
    q = art["model"] if validation else art["int8_tflite"]

    def tensor(t):
        return (f"{t['dtype']}, scale {t['scale']:.8g}, zero point {t['zero_point']}" if t.get("scale") else
                f"{t['dtype']}, not quantized") + f", shape {t['shape']}"

    from pipeline.release.gate import check_rows

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.get_template("report.html.j2").render(
        name=manifest["name"], kind="validation" if validation else "build", seed=manifest["seed"],
        config_sha256=manifest["config_sha256"], test_samples=manifest["splits"]["test"], classes=n,
        toolchain=" / ".join(f"{k} {v}" for k, v in manifest["toolchain"].items() if v and k != "python"),
        test_set={"source": str(test_set.get("source", "-")), "how": "fixed" if test_set.get("fixed") else "a seeded split",
                  "size": test_set.get("size", "-"), "fingerprint": str(test_set.get("fingerprint", "-"))[:16],
                  "overlap": (test_set.get("overlap") or {}).get("count", "-")},
        input_line=(f"features: {pre.get('float_formula')}, scale {pre.get('scale')}, offset {pre.get('offset')}"
                    if pre.get("form") == "tensor" else
                    "pixel range {}, mean {}, std {}".format(*(pre.get(k, "-") for k in ("pixel_range", "mean", "std")))),
        unit="samples" if pre.get("form") == "tensor" else "images",
        metric_title="Accuracy" if task is None else "ROC AUC",
        metric_column="test accuracy" if task is None else "test ROC AUC (pAUC at FPR <= 0.1)", agree_title="top-1 agreement with host" if task is None
        else "anomaly-score correlation with host",
        softmax_removed=(manifest.get("train") or {}).get("softmax_removed"),
        gate=gate and {"verdict": gate["verdict"], "head": ("", "check", "baseline", "got", "limit", "detail"),
                       "rows": check_rows(gate)},
        accuracy_rows=acc_rows, target_rows=target_rows, fit=_fit(manifest), declared=list(sections),
        history_png=_png(history_fig) if history_fig else None,
        confusion_png=_png(_confusion_figure(cms, names)) if cms else None,
        roc_png=_png(task.roc_figure(_task_curves(manifest, build_dir, pred, task), _pyplot())) if task else None,
        delta_png=None if validation or task else _png(_delta_figure(m, names)),
        layers_png=_png(layers_fig) if layers_fig else None,
        layer_rows=[(where, row["layer"], row["op"], _db(row["snr_db"]), row["cosine"], row["max_abs_error"],
                     _db(row["lost_db"])) for where, r in layer_reports(manifest) for row in r["worst"]],
        flips=[] if task else [(title, total, [(i, _thumbnail(image), before, after, true)
                                               for i, image, before, after, true in shown])
                               for title, total, shown in flip_groups(manifest, build_dir)],
        size_rows=[(k, a["path"], f"{a['bytes']:,}", a["sha256"][:16]) for k, a in sorted(art.items())],
        input_tensor=tensor(q["input"]), output_tensor=tensor(q["output"]),
        source=str(q.get("source")) if validation else None,
        int8_share=None if validation else f"{100 * m['size']['int8_over_float']:.1f}")


def _task_curves(manifest, build_dir, pred, task):
    """{label: (clip scores, clip labels)} of the float model (a build), the host's int8 (or the validated
    file) and each target that ran, from predictions.npz and the targets' outputs."""
    import numpy as np

    groups = pred["groups"] if "groups" in pred.files else None
    curves = {}
    for label, key in (("float", "float_scores"), ("int8 (host)", "int8_host_scores"), ("host", "host_scores")):
        if key in pred.files:
            curves[label] = task.clip_scores(pred[key], pred["labels"], groups)
    ids = [str(i) for i in pred["ids"]]
    for name in sorted(manifest["metrics"].get("targets", {})):
        path = Path(build_dir) / f"target-{name}.npz"
        if path.exists():
            with np.load(path) as t:
                if "scores" in t.files:
                    keep = np.isin(ids, [str(i) for i in t["ids"]])
                    curves[name] = task.clip_scores(t["scores"], pred["labels"][keep],
                                                    None if groups is None else groups[keep])
    return curves


def _fit(manifest):
    """Does it fit: each target's budgets against what was measured, what each target really ran, and
    the largest layers of each model: {rows, runs: [(target, what)], layers: [(line, head, rows)]}."""
    from types import SimpleNamespace

    from pipeline.device.resources import layer_table
    from pipeline.release.gate import FIT_NAMES, budgets, fit

    targets = manifest["metrics"].get("targets") or {}
    overrides = SimpleNamespace(**((manifest.get("config") or {}).get("gate") or {}))
    rows, runs = [], []
    for name, t in sorted(targets.items()):
        figures = fit(manifest, name, t)
        limits = budgets(t, overrides)
        for key, (got, how) in figures.items():
            limit = limits.get(key)
            verdict = "-" if limit is None or got is None else ("fits" if got <= limit else "does NOT fit")
            rows.append((name, FIT_NAMES[key], "-" if got is None else f"{got:,}",
                         "no budget" if limit is None else f"{limit:,}", verdict, how))
        what = (t.get("executor") or {}).get("runs")
        if what:
            runs.append((name, what))
        line = npu_line(t.get("npu"))
        if line:
            runs.append((name, line))
    layers = []
    for key, r in sorted((manifest.get("resources") or {}).items()):
        head, *body = layer_table(r)
        layers.append((next(iter(resource_lines({"resources": {key: r}, "metrics": {}})), ""), head, body))
    return {"rows": rows, "runs": runs, "layers": layers}


def write_html(manifest, build_dir, sections=()):
    from pipeline.engine.fsutil import atomic_write_text

    path = Path(build_dir) / "report.html"
    atomic_write_text(path, html(manifest, build_dir, sections))
    return path
