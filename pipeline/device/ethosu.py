"""The `ethos-u` target kind: an Arm Ethos-U NPU, through Arm's Vela compiler.

Vela (the `ethos-u-vela` package, pinned in the target's [npu] table) compiles the int8 `.tflite`
for the configured accelerator, system config, memory mode and clock. The compiled model is a build
artifact that a flashing script takes from the manifest; Vela's own figures are recorded: SRAM,
off-chip flash, MACs, estimated cycles and time per inference, and the NPU/CPU split with every
operator left to the CPU named.

The compiled model cannot run here: there is no NPU and no simulator of it. Its accuracy is proven
on the runtime its Cortex-M host uses for the same int8 model, TensorFlow Lite Micro (the `tflm`
kind's run, with the same twin), which is what this target's accuracy and agreement figures are.
"""

import configparser
import csv
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.device import tflm
from pipeline.engine.errors import InputError, ModelRefused, StageError

FIELDS = ("npu",)  # besides targets.COMMON: the [npu] table
NPU_KEYS = ("vela_version", "accelerator_config", "system_config", "memory_mode", "clock_hz")
ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u65-512",
                "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024", "ethos-u85-2048")
WHAT_RUNS = ("the model compiled by Vela is not run (no NPU or NPU simulator here): its figures are Vela's estimates. "
             "Accuracy is proven on " + tflm.WHAT_RUNS)


def check(target):
    tflm.check(target)
    npu = target.npu
    if not isinstance(npu, dict) or set(npu) != set(NPU_KEYS):
        have = sorted(npu) if isinstance(npu, dict) else npu
        raise InputError(f"[npu] in {target.path} must set exactly {', '.join(NPU_KEYS)}; it has {have}. See "
                         "targets/ethos-u55-128.toml.")
    if npu["accelerator_config"] not in ACCELERATORS:
        from pipeline.engine.text import did_you_mean

        raise InputError(f"npu.accelerator_config in {target.path} must be one Vela knows ({', '.join(ACCELERATORS)}); "
                         f"received {str(npu['accelerator_config'])[:40]!r}."
                         f"{did_you_mean(str(npu['accelerator_config']), ACCELERATORS)} Fix the target file.")
    clock = npu["clock_hz"]
    if isinstance(clock, bool) or not isinstance(clock, int) or not 1_000_000 <= clock <= 10_000_000_000:
        raise InputError(f"npu.clock_hz in {target.path} must be the NPU clock in Hz, an integer from 1e6 to 1e10; "
                         f"received {clock!r}. Set the board's clock.")
    for key in ("vela_version", "system_config", "memory_mode"):
        if not isinstance(npu[key], str) or not re.fullmatch(r"[A-Za-z0-9_.]{1,64}", npu[key]):
            raise InputError(f"npu.{key} in {target.path} must be a name (letters, digits, '_', '.'); received "
                             f"{str(npu[key])[:40]!r}. Fix the target file.")


def _vela_ini():
    spec = importlib.util.find_spec("ethosu")
    if spec is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "config_files" / "Arm" / "vela.ini"


def setup(target, cache_dir, log=print):
    """TFLM (for the accuracy run) and Vela must be the pinned versions, and Vela must know the system
    config and memory mode the target names."""
    root = tflm.setup(target, cache_dir, log)
    want = target.npu["vela_version"]
    tflm.check_pinned(target, "ethos-u-vela", want, "npu.vela_version")
    config = configparser.ConfigParser()
    config.read(_vela_ini())
    for key, prefix in (("system_config", "System_Config"), ("memory_mode", "Memory_Mode")):
        known = sorted(s.split(".", 1)[1] for s in config.sections() if s.startswith(prefix + "."))
        if target.npu[key] not in known:
            raise InputError(f"npu.{key} in {target.path} must be one of Vela {want}'s: {', '.join(known)}; received "
                             f"{target.npu[key]!r}. Fix the target file.")
    return root


launch = tflm.launch


def executor(target):
    return {"kind": "ethos-u", "runs": WHAT_RUNS, "accelerator_config": target.npu["accelerator_config"]}


def twin_kernels(target):
    return tflm.twin_kernels(target)


def outputs(target):
    return (compiled_name(target),)


def compiled_name(target):
    return f"vela-{target.name}.tflite"


def _config_file(target, work):
    """A Vela config holding the target's system config at its own clock, and its memory mode."""
    arm = configparser.ConfigParser()
    arm.optionxform = str
    arm.read(_vela_ini())
    ours = configparser.ConfigParser()
    ours.optionxform = str
    system = f"System_Config.{target.npu['system_config']}"
    ours[system] = dict(arm[system]) | {"core_clock": str(target.npu["clock_hz"])}
    mode = f"Memory_Mode.{target.npu['memory_mode']}"
    ours[mode] = dict(arm[mode])
    path = Path(work) / "vela.ini"
    with open(path, "w") as f:
        ours.write(f)
    return path


def compile_model(target, model_path, work):
    """Run Vela on the int8 model inside `work` (its only scratch space); returns (its figures, the
    compiled .tflite). Vela refusing the model is ModelRefused with Vela's own last line."""
    work, model_path = Path(work).resolve(), Path(model_path).resolve()  # Vela runs in `work`
    out = work / "vela-out"
    cmd = [sys.executable, "-m", "ethosu.vela", str(model_path), "--accelerator-config", target.npu["accelerator_config"],
           "--config", str(_config_file(target, work)), "--system-config", target.npu["system_config"],
           "--memory-mode", target.npu["memory_mode"], "--output-dir", str(out), "--show-cpu-operations"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": str(work), "HOME": str(work)}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    (work / "vela.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else
                      f"exit {proc.returncode}")
        raise ModelRefused(f"Vela {target.npu['vela_version']} for {target.npu['accelerator_config']}",
                           reason[:400].rstrip(".") + ".", "Change the model or the NPU configuration.")
    stem = Path(model_path).stem
    compiled = out / f"{stem}_vela.tflite"
    summaries = sorted(out.glob(f"{stem}_summary_*.csv"))
    if not compiled.is_file() or not summaries:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[:300]
        raise StageError(f"Vela exited 0 but wrote no compiled model or summary; it said: {tail or 'nothing'}")
    with open(summaries[0]) as f:
        row = next(csv.DictReader(f))
    return _figures(target, row, proc.stdout), compiled


def _figures(target, row, stdout):
    ops = [{"placement": m.group(1), "op": m.group(2), "name": m.group(3).strip()}
           for m in re.finditer(r"^\s*(NPU|CPU): (\w+) = (.*?)(?: \((?:inputs|outputs) .*\))?$", stdout, re.M)]
    cpu = [o for o in ops if o["placement"] == "CPU"]
    counted = re.search(r"CPU operators = (\d+)", stdout)
    on_npu = re.search(r"NPU operators = (\d+)", stdout)
    cycles = int(float(row["cycles_total"]))
    return {
        "vela_version": target.npu["vela_version"],
        "accelerator_config": target.npu["accelerator_config"],
        "system_config": target.npu["system_config"],
        "memory_mode": target.npu["memory_mode"],
        "clock_hz": target.npu["clock_hz"],
        "sram_bytes": round(float(row["sram_memory_used"]) * 1024),
        "off_chip_flash_bytes": round(float(row["off_chip_flash_memory_used"]) * 1024),
        "on_chip_flash_bytes": round(float(row["on_chip_flash_memory_used"]) * 1024),
        "dram_bytes": round(float(row["dram_memory_used"]) * 1024),
        "macs": int(float(row["nn_macs"])),
        "cycles": cycles,
        "npu_cycles": int(float(row["cycles_npu"])),
        "inference_ms": round(cycles / target.npu["clock_hz"] * 1000, 6),
        "npu_ops": int(on_npu.group(1)) if on_npu else len(ops) - len(cpu),
        "cpu_ops": int(counted.group(1)) if counted else len(cpu),
        "cpu_fallback": [f"{o['op']} ({o['name']})" for o in cpu],
        "runs_here": False,
    }


def finish(target, model_path, out_dir, work, log):
    """Compile with Vela and publish the compiled model: (the record's "npu" entry, files written)."""
    log(f"target {target.name}: Vela {target.npu['vela_version']} for {target.npu['accelerator_config']}")
    try:
        figures, compiled = compile_model(target, model_path, work)
    except ModelRefused as exc:
        return {"npu": {"refused": exc.reason}}, []
    shutil.copyfile(compiled, Path(out_dir) / compiled_name(target))
    return {"npu": figures}, [compiled_name(target)]
