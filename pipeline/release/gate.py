"""The accuracy-regression gate: every check is evaluated, then the verdict is given once.

Checks compare the manifest with the thresholds of `[gate]` and, optionally, with a baseline
manifest (the last release). The result is a list of {name, got, limit, baseline, passed} and a
verdict "pass"/"fail"; renderers turn it into a terminal table, JUnit XML and Markdown.
"""

import re

from pipeline.device.layer_error import worst_line
from pipeline.engine import text
from pipeline.engine.errors import InputError
from pipeline.engine.stage import check
from pipeline.release import tasks
from pipeline.release.manifest import released_metrics


def _class_drop(before, after, counts, cfg):
    """The worst per-class accuracy drop from `before` to `after` as (drop, class, samples lost,
    samples allowed, passed). A class fails when it drops by more than max_class_drop *and* loses
    more test samples than class_drop_samples + sqrt(its errors before): int8 churn in a class grows
    with the samples it already gets wrong (near a boundary), and one sample of a 20-sample class is
    already 5 pp."""
    import math

    worst = (0.0, None, None, None, True)
    for name, b in before.items():
        a = after.get(name)
        if a is None or b is None:
            continue
        drop = round(b - a, 6)
        n = (counts or {}).get(name)
        lost = allowed = None
        if n:
            lost = round(drop * n)
            allowed = round(cfg.class_drop_samples + math.sqrt(n * (1.0 - b)), 1)
        passed = drop <= cfg.max_class_drop or (lost is not None and lost <= allowed)
        if (not passed, drop) > (not worst[4], worst[0]):
            worst = (drop, name, lost, allowed, passed)
    return worst


def _class_check(name, before, after, counts, cfg, baseline=False):
    drop, cls, lost, allowed, passed = _class_drop(before, after, counts, cfg)
    detail = ""
    if cls:
        detail = f"class {cls}" + (f": {lost} of {counts[cls]} samples lost, noise up to {allowed}"
                                   if lost is not None else "")
    return check(name, drop, f"<= {cfg.max_class_drop} or within noise", passed,
                  baseline=before.get(cls) if baseline and cls else None, detail=detail)


def _regressed_check(what, before, after, labels, cfg, reference_accuracy):
    """The fraction of test samples the reference got right and this model gets wrong. Samples that
    went wrong -> right are an improvement, not a regression; they are counted in the detail only.
    Without labels (an older manifest), every changed prediction counts."""
    changed = sum(1 for x, y in zip(before, after) if x != y)
    if labels is not None and len(labels) == len(before):
        lost = sum(1 for x, y, t in zip(before, after, labels) if x == t and y != t)
    else:
        lost = changed
    rate = round(lost / max(1, len(after)), 6)
    limit = flip_limit(cfg, reference_accuracy)
    return check(f"regressed samples {what}", rate, f"<= {limit}", rate <= limit,
                  detail=f"{lost} right->wrong, {changed - lost} changed otherwise")


def flip_limit(cfg, reference_accuracy):
    """The flip budget: max_flip_rate, or flip_error_ratio times the reference model's error rate if
    that is larger (a less accurate model has more samples near a decision boundary)."""
    return round(max(cfg.max_flip_rate, cfg.flip_error_ratio * (1.0 - reference_accuracy)), 6)


def check_baseline_compatible(manifest, baseline):
    ours_task, their_task = tasks.kind(manifest), tasks.kind(baseline)
    if ours_task != their_task:
        raise InputError(f"a baseline must be of the same task; the baseline was made with task.kind = {their_task!r}, "
                         f"this build with {ours_task!r}. Pass the baseline of this model.")
    if baseline["class_names"] != manifest["class_names"]:
        raise InputError(
            f"a baseline must have the same classes as the build; baseline has {baseline['class_names']}, "
            f"build has {manifest['class_names']}. Pass the baseline of this model."
        )
    ours_set, theirs_set = manifest.get("test_set") or {}, baseline.get("test_set") or {}
    if ours_set.get("fingerprint") and theirs_set.get("fingerprint") and \
            ours_set["fingerprint"] != theirs_set["fingerprint"]:
        raise InputError(
            f"a baseline must be measured on the same test set; the baseline's test set ({theirs_set.get('source')}, "
            f"{theirs_set.get('size')} images, fingerprint {theirs_set['fingerprint'][:12]}) differs from this "
            f"build's ({ours_set.get('source')}, {ours_set.get('size')} images, fingerprint "
            f"{ours_set['fingerprint'][:12]}). The fingerprint covers the images as loaded (data.image_size, "
            "data.channels, data.resize) and their labels: gate against a baseline measured on the same test set "
            "loaded the same way." + _loading_differences(manifest, baseline)
        )
    ours, theirs = manifest.get("test_split", {}), baseline.get("test_split", {})
    if ours.get("sha256") != theirs.get("sha256"):
        raise InputError(
            f"flip checks against a baseline compare predictions by sample id, so the test splits must "
            f"match; the baseline's test split ({len(theirs.get('ids', []))} ids, sha256 "
            f"{str(theirs.get('sha256'))[:12]}) differs from this build's ({len(ours.get('ids', []))} ids, "
            f"sha256 {str(ours.get('sha256'))[:12]}). Use the same data, seed and split fractions."
        )


def _loading_differences(manifest, baseline):
    """' Loaded differently: data.resize = 'pillow' in the baseline, 'keras' here.' (or '')."""
    ours = (manifest.get("config") or {}).get("data") or {}
    theirs = (baseline.get("config") or {}).get("data") or {}
    diffs = [f"data.{k} = {theirs[k]!r} in the baseline, {ours[k]!r} here" for k in ("resize", "image_size", "channels")
             if k in ours and k in theirs and ours[k] != theirs[k]]
    return f" Loaded differently: {'; '.join(diffs)}." if diffs else ""


def _finite_check(where, metrics):
    """A model with float outputs must output numbers: any NaN or inf fails, with the count (none with
    integer outputs, which cannot hold one)."""
    if not str(metrics.get("output_dtype", "int8")).startswith("float"):
        return []
    bad = int(metrics.get("nonfinite_outputs", 0))
    return [check(f"finite outputs ({where})", bad, "0 NaN or inf", bad == 0,
                   detail=f"{bad} output values are NaN or inf" if bad else "")]


# target kinds whose x86 twin is another runtime: TFLM's kernels against LiteRT's reference kernels
CROSS_RUNTIME_TWIN = ("tflm", "ethos-u")


def _target_checks(m, cfg, prefix, classification=True):
    """Each target's checks: it runs, its outputs are finite, its accuracy and top-1 agreement with the
    host (classification; another task's figures are its own checks), and its bit-exactness (against
    its x86 twin where it has one, else the host)."""
    checks = []
    for name, t in sorted(m.get("targets", {}).items()):
        if t.get("refused"):
            checks.append(check(f"runs on target ({name})", "refused", "loads and runs", False,
                                 detail=text.clip(t["refused"], 200)))
            continue
        checks += _finite_check(name, t)
        if classification:
            checks.append(check(f"{prefix}accuracy ({name})", t["accuracy"], f">= {cfg.min_int8_accuracy}",
                                 t["accuracy"] >= cfg.min_int8_accuracy,
                                 detail="; ".join(filter(None, (f"{t['samples']} samples" + (" (sampled)" if t.get(
                                     "sampled") else ""), worst_line(t.get("layers")))))))
            need = max(cfg.min_target_agreement, t["tolerances"]["min_top1_agreement"])
            flips, tied = len(t.get("flipped_ids") or []), t.get("tied_flips", 0)
            checks.append(check(f"host/target top-1 agreement ({name})", t["top1_agreement"], f">= {need}",
                                 t["top1_agreement"] >= need,
                                 detail=f"{flips} differ, {tied} of them at an exact int8 tie of the host's top scores "
                                        "(argmax takes the lowest index there)" if tied else ""))
        if t.get("output_dtype", "int8").startswith("float"):  # float outputs: reported, not held to int8 steps
            continue
        tol, isa = t["tolerances"], t.get("isa") or {}
        if isa.get("refused"):
            checks.append(check(f"runs on the x86 twin ({name})", "refused", "loads and runs", False,
                                 detail=text.clip(isa["refused"], 200)))
        elif isa.get("reference"):  # the ISA on reference kernels, bit-exact; the production kernels as drift
            ref = isa["reference"]
            need = tol.get("min_reference_bitexact_fraction", 1.0)
            checks.append(check(f"ISA: bit-exact vs x86 twin, reference kernels ({name})", ref["bitexact_fraction"],
                                 f">= {need}", ref["bitexact_fraction"] >= need and (need < 1.0 or ref["max_abs_diff"] == 0),
                                 detail=f"{ref['samples']} samples, max |diff| {ref['max_abs_diff']:.4g}"))
            top1, most = max(cfg.min_target_agreement, tol["min_top1_agreement"]), tol.get("max_isa_abs_diff", 0)
            drift = (f"drift of the kernels' own code paths per ISA: {isa['bitexact_fraction']:.4f} bit-exact, max "
                     f"|diff| {isa['max_abs_diff']:.4g}")
            if "top1_agreement" in isa:
                checks.append(check(f"{t.get('kernels', 'production')} kernels vs x86 twin ({name})", isa["top1_agreement"],
                                     f">= {top1}, max |diff| <= {most}",
                                     isa["top1_agreement"] >= top1 and isa["max_abs_diff"] <= most, detail=drift))
            else:  # no top-1 for this task: the outputs' drift alone
                checks.append(check(f"{t.get('kernels', 'production')} kernels vs x86 twin ({name})", isa["max_abs_diff"],
                                     f"max |diff| <= {most}", isa["max_abs_diff"] <= most, detail=drift))
        elif isa.get("twin") and t.get("kind") in CROSS_RUNTIME_TWIN and t.get("output_dtype") == "int16":
            # 16x8 on a microcontroller runtime, whose twin is another runtime: TFLM's int16 FULLY_CONNECTED rounds
            # one int16 step (1/256 of an int8 step) apart from LiteRT's reference kernels on some outputs (measured:
            # 15% of the tests' model's). The step bound is gated; the bit-exact fraction is reported.
            most = tol.get("max_isa_abs_diff", 0)
            checks.append(check(f"max |diff| vs LiteRT reference kernels ({name})", isa["max_abs_diff"], f"<= {most}",
                                 isa["max_abs_diff"] <= most,
                                 detail=f"{isa['bitexact_fraction']:.4f} of outputs bit-exact (reported: another "
                                        "runtime's int16 rounding)"))
        elif isa.get("twin") and not classification and t.get("kind") in CROSS_RUNTIME_TWIN:
            # a task's many-valued outputs (a reconstruction) on a microcontroller runtime, whose twin is another
            # runtime (LiteRT's reference kernels): TFLM's FULLY_CONNECTED rounds apart from it, and the steps add
            # up through a stack of dense layers (measured: 1 to 4 steps on autoencoders). Reported; the task's
            # own checks (AUC difference, score correlation with the host) judge the device's answers.
            checks.append(check(f"drift vs LiteRT reference kernels ({name})", isa["max_abs_diff"], "reported", True,
                                 detail=f"{isa['bitexact_fraction']:.4f} of output values bit-exact; another runtime's "
                                        "rounding, not gated for a task's many-valued outputs"))
        elif isa.get("twin") and not classification:  # the same runtime on x86: the step bound holds
            most = tol.get("max_isa_abs_diff", 0)
            checks.append(check(f"max |diff| vs x86 twin ({name})", isa["max_abs_diff"], f"<= {most}",
                                 isa["max_abs_diff"] <= most,
                                 detail=f"{isa['bitexact_fraction']:.4f} of output values bit-exact (reported); vs host "
                                        f"{t['bitexact_fraction']:.4f}, max |diff| {t['max_abs_diff']}"))
        elif isa.get("twin"):  # ISA agreement is gated strictly; drift vs the host is reported (and top-1 above)
            need, most = tol.get("min_isa_bitexact_fraction", 1.0), tol.get("max_isa_abs_diff", 0)
            checks.append(check(f"bit-exact vs x86 twin ({name})", isa["bitexact_fraction"], f">= {need}",
                                 isa["bitexact_fraction"] >= need and isa["max_abs_diff"] <= most,
                                 detail=f"max |diff| {isa['max_abs_diff']} (<= {most}); vs host "
                                        f"{t['bitexact_fraction']:.4f} bit-exact, max |diff| {t['max_abs_diff']}"))
        else:
            checks.append(check(f"bit-exact outputs ({name})", t["bitexact_fraction"],
                                 f">= {tol['min_bitexact_fraction']}",
                                 t["bitexact_fraction"] >= tol["min_bitexact_fraction"],
                                 detail=f"max |diff| {t['max_abs_diff']} (<= {tol['max_abs_diff']}); no x86 twin"))
            checks.append(check(f"max int8 |diff| ({name})", t["max_abs_diff"], f"<= {tol['max_abs_diff']}",
                                 t["max_abs_diff"] <= tol["max_abs_diff"]))
    return checks


# [gate] keys that override every target's [budget]: the value that means "each target's own".
BUDGET_OVERRIDES = {"sram_bytes": 0, "flash_bytes": 0, "max_macs": 0, "max_cpu_fallback_ops": -1, "max_inference_ms": 0,
                    "max_latency_ms": 0}


def budgets(target, cfg):
    """The target's budgets, with [gate]'s overrides applied."""
    merged = dict(target.get("budget") or {})
    for key, unset in BUDGET_OVERRIDES.items():
        value = getattr(cfg, key, unset)
        if value != unset:
            merged[key] = value
    return merged


def fit(manifest, name, t):
    """What the model asks of target `name`: {figure: (value or None, how it was measured)} for RAM,
    flash, MACs and, on an NPU, CPU-fallback operators and inference time."""
    models = {r.get("file"): r for r in (manifest.get("resources") or {}).values()}
    model = models.get(t.get("model")) or {}
    macs = (model.get("macs"), "MACs per inference, from the model file")
    kind, npu = t.get("kind", "linux"), t.get("npu") or {}
    if kind == "ethos-u":
        flash = None if npu.get("refused") else npu.get("off_chip_flash_bytes", 0) + npu.get("on_chip_flash_bytes", 0)
        return {"sram_bytes": (npu.get("sram_bytes"), "Vela's SRAM for the feature maps"),
                "flash_bytes": (flash, "Vela's flash (off-chip and on-chip) for the compiled model"),
                "max_macs": macs,
                "max_cpu_fallback_ops": (npu.get("cpu_ops"), ", ".join(npu.get("cpu_fallback") or []) or
                                         "operators Vela leaves to the CPU"),
                "max_inference_ms": (npu.get("inference_ms"), f"Vela's estimate at {npu.get('clock_hz', 0) / 1e6:g} MHz")}
    size = model.get("model_bytes")
    if kind == "tflm":
        ram = (t.get("arena_bytes") or model.get("arena_bytes"), "the tensor arena TFLM's recording allocator measured")
    else:  # an int8 ONNX has no TFLM arena: the int8 .tflite it was converted from has the same activations
        arena, of = model.get("arena_bytes"), "TFLM-measured activations"
        if arena is None and str(t.get("model", "")).endswith(".onnx"):
            arena = next((r.get("arena_bytes") for r in models.values() if r.get("arena_bytes")), None)
            of = "the int8 .tflite's TFLM-measured activations"
        ram = (size + arena if size and arena else None,
               f"model + {of}: a lower bound (the runtime and Python need more)")
    latency = t.get("latency") or {}
    if latency.get("measured_on") == "device":
        late = (latency["p99_ms"], f"p99 of {latency['count']} invokes on the board, {latency['threads']} thread(s)")
    else:  # an emulation's timings are no device's latency: only a board over SSH measures it
        late = (None, "latency is measured on a real board only (validate.boards); this target ran "
                      + ("on an emulated board" if latency else "emulated"))
    return {"sram_bytes": ram, "flash_bytes": (size, "the model file (the runtime's code is not counted)"),
            "max_macs": macs, "max_latency_ms": late}


FIT_NAMES = {"sram_bytes": "RAM", "flash_bytes": "flash", "max_macs": "MACs", "max_cpu_fallback_ops": "CPU-fallback ops",
             "max_inference_ms": "NPU inference ms", "max_latency_ms": "latency p99 ms"}


def _budget_checks(manifest, cfg):
    """One check per target and budget it has: the measured figure against the budget, both named."""
    checks = []
    for name, t in sorted((manifest["metrics"].get("targets") or {}).items()):
        npu_refused = (t.get("npu") or {}).get("refused")
        if npu_refused:
            checks.append(check(f"compiles for the NPU ({name})", "refused", "Vela compiles it", False,
                                 detail=text.clip(t["npu"]["refused"], 200)))
        figures = fit(manifest, name, t)
        for key, limit in sorted(budgets(t, cfg).items()):
            if key not in figures:
                continue
            got, how = figures[key]
            if got is None:
                if t.get("refused") or npu_refused:  # failed above: nothing was measured
                    continue
                # recorded, not silently skipped: e.g. no TFLM arena for a model TFLM cannot run
                checks.append(check(f"{FIT_NAMES[key]} ({name})", "not measured", f"<= {limit:,}", True,
                                     detail=f"{how}: not measurable for this model, so not checked"))
                continue
            checks.append(check(f"{FIT_NAMES[key]} ({name})", got, f"<= {limit:,}", got <= limit, detail=how))
    return checks


def _integer_model_checks(manifest, art, cfg):
    checks = [check("int8 model size (bytes)", art["bytes"], f"<= {cfg.max_int8_bytes}", art["bytes"] <= cfg.max_int8_bytes)]
    float_ops = art.get("float_ops", [])
    allowed = ((manifest.get("config") or {}).get("export") or {}).get("allowed_float_ops") or []
    unlisted = [op for op in float_ops if op not in allowed]
    checks.append(check("full-integer ops", ", ".join(float_ops) or "none", "none but export.allowed_float_ops",
                         not unlisted, detail=f"allowed: {', '.join(float_ops)}" if float_ops and not unlisted else ""))
    return checks


def _baseline_checks(manifest, baseline, cfg, what, prefix):
    check_baseline_compatible(manifest, baseline)
    ours, theirs = released_metrics(manifest), released_metrics(baseline)
    counts = (manifest.get("test_set") or {}).get("per_class")
    checks = []
    bdrop = round(theirs["accuracy"] - ours["accuracy"], 6)
    checks.append(check(f"{prefix}drop vs baseline", bdrop, f"<= {cfg.max_baseline_drop}",
                         bdrop <= cfg.max_baseline_drop, baseline=theirs["accuracy"]))
    checks.append(_class_check("worst class drop vs baseline", theirs["per_class"], ours["per_class"], counts, cfg,
                               baseline=True))
    labels = (manifest.get("test_split") or {}).get("labels")
    checks.append(_regressed_check(f"baseline->{what}", theirs["top1"], ours["top1"], labels, cfg, theirs["accuracy"]))
    for name, t in sorted(manifest["metrics"].get("targets", {}).items()):
        bt = baseline["metrics"].get("targets", {}).get(name)
        if bt and not bt.get("refused") and not t.get("refused"):
            d = round(bt["accuracy"] - t["accuracy"], 6)
            checks.append(check(f"{prefix}drop vs baseline ({name})", d, f"<= {cfg.max_baseline_drop}",
                                 d <= cfg.max_baseline_drop, baseline=bt["accuracy"]))
    return checks


def _verdict(checks, baseline):
    verdict = "pass" if all(c["passed"] for c in checks) else "fail"
    return {"verdict": verdict, "checks": checks, "baseline": baseline.get("name") if baseline else None,
            "baseline_file": (baseline or {}).get("_file")}


def evaluate_validation(manifest, cfg, baseline=None):
    """The gate of a model file built elsewhere: its host accuracy, every target, the int8 checks when
    its input is integer, and the baseline (a build's or a validation's manifest on the same test set)."""
    host, art = manifest["metrics"]["host"], manifest["artifacts"]["model"]
    checks = _finite_check("host", host)
    checks.append(check("accuracy (host)", host["accuracy"], f">= {cfg.min_int8_accuracy}",
                         host["accuracy"] >= cfg.min_int8_accuracy,
                         detail=worst_line((manifest.get("layers") or {}).get("host"))))
    checks += _target_checks(manifest["metrics"], cfg, "")
    checks += _budget_checks(manifest, cfg)
    if art["input"]["dtype"] in ("int8", "uint8", "int16"):
        checks += _integer_model_checks(manifest, art, cfg)
    if baseline is not None:
        checks += _baseline_checks(manifest, baseline, cfg, "model", "accuracy ")
    return _verdict(checks, baseline)


def evaluate_task(manifest, cfg, baseline, task):
    """The gate of a task other than classification: its own checks (`task.gate_checks`), then the shared
    ones: each target runs, finite and bit-exact outputs, budgets, and the int8 model checks."""
    if baseline is not None:
        check_baseline_compatible(manifest, baseline)
    m, validation = manifest["metrics"], manifest.get("kind") == "validation"
    checks = _finite_check("host", m["host"]) if validation else []
    checks += task.gate_checks(manifest, cfg, baseline)
    checks += _target_checks(m, cfg, "", classification=False)
    checks += _budget_checks(manifest, cfg)
    art = manifest["artifacts"]["model" if validation else "int8_tflite"]
    if not validation or art["input"]["dtype"] in ("int8", "uint8", "int16"):
        checks += _integer_model_checks(manifest, art, cfg)
    if not validation:
        checks.append(_io_check(art))
    return checks


def _io_check(art):
    """The built model's input and output are integer, of its activations' width (int8, or int16 in 16x8)."""
    want = art.get("activations", "int8")
    io = f"{art['input']['dtype']}/{art['output']['dtype']}"
    return check(f"{want} input/output dtype", io, f"{want}/{want}", io == f"{want}/{want}")


def evaluate(manifest, cfg, baseline=None, declared=()):
    """Run every check (and the `declared` ones: the checks of stages declared outside the built-in
    ones); return {"verdict", "checks", "baseline"}."""
    task = tasks.get(tasks.kind(manifest))
    if task:
        checks = evaluate_task(manifest, cfg, baseline, task)
        return _verdict(checks + list(declared), baseline)
    if manifest.get("kind") == "validation":
        verdict = evaluate_validation(manifest, cfg, baseline)
        return _verdict(verdict["checks"] + list(declared), baseline)
    m = manifest["metrics"]
    checks = []
    art = manifest["artifacts"]["int8_tflite"]
    q = art.get("activations", "int8")  # the quantized model's name in the checks: int8, or int16 (16x8)
    float_acc, int8 = m["float"]["accuracy"], m["int8_host"]
    checks.append(check(f"{q} accuracy (host)", int8["accuracy"], f">= {cfg.min_int8_accuracy}",
                         int8["accuracy"] >= cfg.min_int8_accuracy))
    drop = round(float_acc - int8["accuracy"], 6)
    checks.append(check(f"{q} drop vs float", drop, f"<= {cfg.max_int8_drop}", drop <= cfg.max_int8_drop,
                         detail=worst_line((manifest.get("layers") or {}).get("host"))))
    counts = (manifest.get("test_set") or {}).get("per_class")
    checks.append(_class_check("worst class drop vs float", m["float"]["per_class"], int8["per_class"], counts, cfg))
    labels = (manifest.get("test_split") or {}).get("labels")
    checks.append(_regressed_check(f"float->{q}", m["float"]["top1"], int8["top1"], labels, cfg, float_acc))
    checks += _target_checks(m, cfg, f"{q} ")
    checks += _budget_checks(manifest, cfg)
    checks += _integer_model_checks(manifest, art, cfg)
    checks.append(_io_check(art))
    if "onnx_int8" in m:  # builds before the int8 ONNX artifact have none
        checks += _onnx_int8_checks(m, cfg, labels, counts)
    if baseline is not None:
        checks += _baseline_checks(manifest, baseline, cfg, "build", "int8 ")
        bo, mo = baseline["metrics"].get("onnx_int8"), m.get("onnx_int8")
        if bo and mo:
            d = round(bo["accuracy"] - mo["accuracy"], 6)
            checks.append(check("int8 ONNX drop vs baseline", d, f"<= {cfg.max_baseline_drop}",
                                 d <= cfg.max_baseline_drop, baseline=bo["accuracy"]))
    return _verdict(checks + list(declared), baseline)


def _onnx_int8_checks(m, cfg, labels, counts):
    """The int8 ONNX is held to the int8 .tflite's limits, and to agree with it sample by sample."""
    float_acc, onnx = m["float"]["accuracy"], m["onnx_int8"]
    drop = round(float_acc - onnx["accuracy"], 6)
    agree = onnx["top1_agreement_with_int8_tflite"]
    return [
        check("int8 ONNX accuracy (host)", onnx["accuracy"], f">= {cfg.min_int8_accuracy}",
               onnx["accuracy"] >= cfg.min_int8_accuracy),
        check("int8 ONNX drop vs float", drop, f"<= {cfg.max_int8_drop}", drop <= cfg.max_int8_drop),
        _class_check("worst class drop vs float (int8 ONNX)", m["float"]["per_class"], onnx["per_class"], counts, cfg),
        _regressed_check("float->int8 ONNX", m["float"]["top1"], onnx["top1"], labels, cfg, float_acc),
        check("int8 ONNX/TFLite top-1 agreement", agree, f">= {cfg.min_onnx_agreement}",
               agree >= cfg.min_onnx_agreement,
               detail=f"{onnx['bitexact_fraction_vs_int8_tflite']:.4f} of outputs bit-exact, max dequantized "
                      f"|diff| {onnx['max_dequantized_diff_vs_int8_tflite']:.4g}"),
    ]


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def check_rows(gate):
    """One row per check: (✓ or ✗, name, baseline, got, limit, detail), as text. The terminal table,
    the Markdown step summary and the HTML report all show these."""
    return [("✓" if c["passed"] else "✗", c["name"], _fmt(c["baseline"]), _fmt(c["got"]), c["limit"], c["detail"])
            for c in gate["checks"]]


def table(gate):
    rows = [("", "check", "baseline", "got", "limit", ""), *check_rows(gate)]
    lines = text.table(rows)
    failed = [c for c in gate["checks"] if not c["passed"]]
    lines.append(f"gate: {gate['verdict'].upper()}" + (f" ({len(failed)} of {len(gate['checks'])} checks failed)" if failed else f" ({len(gate['checks'])} check{'s' if len(gate['checks']) != 1 else ''})"))
    return "\n".join(lines)


def _cell(value):
    """A Markdown table cell: one line, its '|' escaped (a check or class name may hold either)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown(gate, title="edgebuild gate"):
    lines = [f"### {title}: {'✅ pass' if gate['verdict'] == 'pass' else '❌ fail'}", "",
             "| | check | baseline | got | limit | detail |", "|---|---|---|---|---|---|"]
    for cells in check_rows(gate):
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


# characters XML 1.0 cannot hold at all (ElementTree escapes the rest)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def junit(gate, suite="edgebuild.gate"):
    """JUnit XML, one testcase per check (a failing one with its figures), written by ElementTree."""
    from xml.etree import ElementTree

    def clean(text):
        return _NOT_XML.sub("?", str(text))

    checks = gate["checks"]
    root = ElementTree.Element("testsuite", name=suite, tests=str(len(checks)),
                               failures=str(sum(not c["passed"] for c in checks)))
    for c in checks:
        case = ElementTree.SubElement(root, "testcase", classname=suite, name=clean(c["name"]))
        if not c["passed"]:
            msg = clean(f"got {_fmt(c['got'])}, limit {c['limit']}, baseline {_fmt(c['baseline'])} {c['detail']}".strip())
            ElementTree.SubElement(case, "failure", message=msg).text = msg
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
