"""Targets are data: `targets/<name>.toml` says the target's kind, runtime and its pinned version, the
kernels it runs, its budgets (RAM, flash, MACs, ...) and tolerances; a Linux board also its
architecture, CPU, distribution, pinned wheels, threads and batch size. This module reads and checks
target files (the schema). The rest of a target lives beside it, one concern per module:
`environment` (the Linux kind's emulated environment: set-up, self-test), `executors` (how a
validator process runs: qemu user-mode, the x86 twin, the container, ...), `fanout` (the sharded run
and the tensor dump), `oplint` (what a runtime refuses before running), `image` (OCI images and
Dockerfile.edge). Other kinds are one module each (KINDS): their set-up and validator command come
from there.
"""

import dataclasses
import hashlib
import importlib
import math
import platform
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.errors import InputError
from pipeline.engine.text import did_you_mean

TARGETS_DIR = Path(__file__).resolve().parents[2] / "targets"
CODE_FILES = ("ondevice.py", "selftest_int8.tflite", "selftest_int8.onnx")  # run on the device: in the code digest
ONDEVICE = Path(__file__).with_name("ondevice.py")
SELFTEST_MODEL = Path(__file__).with_name("selftest_int8.tflite")
ONNX_RUNTIMES = ("onnxruntime",)  # a target with one of these runs .onnx models; every other runtime .tflite


def model_format(target):
    """The model format the target's runtime runs: "onnx" or "tflite"."""
    return "onnx" if target.runtime in ONNX_RUNTIMES else "tflite"


def selftest_model(target):
    return SELFTEST_MODEL.with_suffix(f".{model_format(target)}")


@dataclass(frozen=True)
class Tolerances:
    min_top1_agreement: float = 0.99  # target vs the build host's runtime (runtime drift included)
    min_bitexact_fraction: float = 0.9  # target vs host, gated only for a target without an x86 twin
    max_abs_diff: int = 2
    min_isa_bitexact_fraction: float = 1.0  # target vs its x86 twin (same runtime, version and kernels)
    max_isa_abs_diff: int = 0  # with a reference-kernel ISA check: the production kernels' drift vs the twin
    min_reference_bitexact_fraction: float = 1.0  # the ISA check on reference kernels (validate.isa_samples)


# What a target can hold the model to: each figure is checked by the gate when the target file (or [gate])
# sets it. (minimum, maximum, what is measured) per key; the maximum only refuses absurd values.
BUDGETS = {
    "sram_bytes": (1, 2**40, "the RAM the model needs: the TFLM arena (activations), plus the model on a Linux "
                             "board, or Vela's SRAM on an NPU"),
    "flash_bytes": (1, 2**40, "the storage the model needs: the .tflite, or Vela's off-chip flash on an NPU"),
    "max_macs": (1, 10**15, "multiply-accumulates per inference"),
    "max_cpu_fallback_ops": (0, 10**6, "NPU targets: operators Vela leaves to the CPU"),
    "max_inference_ms": (1e-6, 1e7, "NPU targets: Vela's estimated time per inference at the configured clock"),
    "max_latency_ms": (1e-6, 1e7, "Linux boards: p99 of the per-image invoke time measured on a real board over SSH "
                                  "(after warm-up, at the target's threads)"),
}

# The kinds of target: the module that sets one up and runs its validator (None: this module, for Linux
# boards). A kind's module is the executor protocol: FIELDS (its target-file fields besides COMMON),
# check(target), setup(target, cache_dir, log) -> the directory its runs use, launch(target, root, args,
# twin) -> (command, environment) of one validator process (run_sharded runs any kind's), executor(target)
# -> how it ran (recorded), outputs(target) -> files its stage publishes besides the outputs, and
# finish(target, model, out_dir, work, log) -> (record additions, files written) after a run.
KINDS = {
    "linux": None,
    "tflm": "pipeline.device.tflm",
    "ethos-u": "pipeline.device.ethosu",
}
# The kernels a target's runtime may run, by kind and runtime (the twin and the tensor dumps use the same).
KERNELS = {
    ("linux", "ai-edge-litert"): ("xnnpack", "builtin", "reference"),
    ("linux", "tflite-runtime"): ("xnnpack", "builtin", "reference"),
    ("linux", "onnxruntime"): ("mlas",),
    ("tflm", "tflite-micro"): ("tflm-reference",),
    ("ethos-u", "tflite-micro"): ("ethos-u",),
}
KERNEL_FLAG = {"xnnpack": "default", "builtin": "builtin", "reference": "reference"}  # ondevice.py --kernels


def outputs(target):
    """A Linux target publishes nothing but its outputs (the kind protocol's hook)."""
    return ()


def kind_module(kind):
    """The module of a kind of target (this module for `linux`)."""
    name = KINDS[kind]
    return sys.modules[__name__] if name is None else importlib.import_module(name)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    emulated: bool
    cpu: str
    distribution: str
    debian_packages: tuple
    python: str
    runtime: str
    runtime_version: str
    wheels: tuple
    wheel_sha256: dict  # wheel pin -> sha256 of the one file pip downloads for these platforms
    wheel_platforms: tuple
    qemu_suite: str
    qemu_version: str
    threads: int
    batch_size: int
    tolerances: Tolerances
    sha256: str
    path: str
    twin_platforms: tuple = ()  # x86_64 wheel platforms of the same runtime and numpy: the twin
    twin_wheel_sha256: dict = dataclasses.field(default_factory=dict)
    kind: str = "linux"
    kernels: str = "xnnpack"
    budget: dict = dataclasses.field(default_factory=dict)  # BUDGETS key -> value (absent: no budget)
    npu: dict = dataclasses.field(default_factory=dict)  # ethos-u: accelerator_config, system_config, ...

    @property
    def has_twin(self):
        """Whether the target has an x86 twin: the same runtime and kernels beside it on the build host."""
        return bool(self.twin_platforms) or self.kind != "linux"


OPTIONAL = {"twin_platforms": (), "twin_wheel_sha256": {}}  # a target without them has no x86 twin
COMMON = {"name", "description", "kind", "runtime", "runtime_version", "kernels"}  # every kind's fields
# The Linux fields a microcontroller or NPU target does not have: what it runs on is the build host.
HOSTED = dict(arch=platform.machine(), emulated=False, cpu="host", distribution="host", debian_packages=(),
              python="host", wheels=(), wheel_platforms=(), qemu_suite="", qemu_version="", threads=1, batch_size=1,
              wheel_sha256={})


def available_targets(targets_dir=TARGETS_DIR):
    return sorted(p.stem for p in Path(targets_dir).glob("*.toml"))


def load_target(name, targets_dir=TARGETS_DIR, check_hashes=True):
    from pipeline.engine.config import check_name

    check_name(name, "a target name")
    path = Path(targets_dir) / f"{name}.toml"
    if not path.is_file():
        names = available_targets(targets_dir)
        hint = did_you_mean(name, names)
        raise InputError(
            f"a target is a file targets/<name>.toml; there is no {path}.{hint} "
            f"Available: {', '.join(names)}."
        )
    raw_bytes = path.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML: {exc}. Fix the target file.") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to read as TOML. A target file is plain keys and the "
                         "[tolerances] and [budget] tables; remove the deep nesting.") from None
    kind = raw.setdefault("kind", "linux")
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"kind in {path} must be one of {', '.join(KINDS)}; received {str(kind)[:40]!r}. Fix the "
                         "target file.")
    if kind == "linux":
        fields = {f.name for f in dataclasses.fields(Target)} - {"sha256", "path", "tolerances", "budget", "npu"}
        optional = set(OPTIONAL) | (set() if check_hashes else {"wheel_sha256"})
    else:
        fields = COMMON | set(kind_module(kind).FIELDS)
        optional = set()
    tables = {"tolerances", "budget"}
    unknown = set(raw) - fields - tables
    missing = fields - set(raw) - optional
    if unknown or missing:
        example = "targets/rpi5-litert.toml" if kind == "linux" else f"the shipped {kind} target in targets/"
        hint = "".join(did_you_mean(k, sorted(fields | tables)) for k in sorted(unknown)[:1])
        raise InputError(
            f"{path} must define exactly the fields of a {kind} target; unknown: {sorted(unknown) or 'none'}, "
            f"missing: {sorted(missing) or 'none'}.{hint} See {example}."
        )
    if raw.get("name") != path.stem:
        raise InputError(f"the name field of a target file must be its file name without .toml; {path} says name = "
                         f"{str(raw.get('name'))[:80]!r}. Set name = \"{path.stem}\".")
    tol = _tolerances(raw.pop("tolerances", {}), path)
    budget = check_budget(raw.pop("budget", {}), f"[budget] in {path}", kind)
    if kind != "linux":
        raw = {**HOSTED, **raw}
    for key, default in OPTIONAL.items():
        raw.setdefault(key, default)
    for key in ("debian_packages", "wheels", "wheel_platforms", "twin_platforms"):
        raw[key] = tuple(raw[key])
    raw.setdefault("wheel_sha256", {})
    _check_scalars(raw, path)
    _check_lists(raw, path, check_hashes)
    allowed = KERNELS.get((kind, raw["runtime"]))
    if allowed is None or raw["kernels"] not in allowed:
        raise InputError(f"kernels in {path} must name kernels its runtime {raw['runtime']} runs "
                         f"({', '.join(allowed or ['none known'])}); received {str(raw['kernels'])[:40]!r}. Fix the "
                         "target file.")
    target = Target(**raw, tolerances=tol, budget=budget, sha256=hashlib.sha256(raw_bytes).hexdigest(), path=str(path))
    if kind != "linux":
        kind_module(kind).check(target)
    return target


def _tolerances(values, path):
    fields = {f.name: f for f in dataclasses.fields(Tolerances)}
    if not isinstance(values, dict) or set(values) - set(fields):
        unknown = sorted(set(values) - set(fields)) if isinstance(values, dict) else values
        raise InputError(f"[tolerances] in {path} takes {', '.join(fields)}; received {unknown!r}. Fix the target file.")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"tolerances.{key} in {path} must be a finite number >= 0; received {value!r}. Fix the "
                             "target file.")
    return Tolerances(**values)


# The budgets each kind of target measures (the NPU's own figures only on an NPU).
KIND_BUDGETS = {"linux": ("sram_bytes", "flash_bytes", "max_macs", "max_latency_ms"),
                "tflm": ("sram_bytes", "flash_bytes", "max_macs"),
                "ethos-u": tuple(k for k in BUDGETS if k != "max_latency_ms")}


def check_budget(values, origin, kind="ethos-u"):
    """{key: value} of a [budget] table, each a budget the kind measures, a finite number within BUDGETS'
    range; InputError naming the key."""
    if not isinstance(values, dict):
        raise InputError(f"{origin} must be a table of budgets; received {values!r}. See targets/cortex-m-tflm.toml.")
    allowed = KIND_BUDGETS[kind]
    for key, value in values.items():
        if key not in allowed:
            raise InputError(f"{origin} takes {', '.join(allowed)} (what a {kind} target measures); received "
                             f"{key!r}.{did_you_mean(key, allowed)} Fix the target file.")
        low, high, what = BUDGETS[key]
        integer = key not in ("max_inference_ms", "max_latency_ms")
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or \
                not math.isfinite(value) or not low <= value <= high:
            raise InputError(f"budget {key} ({what}) must be {'an integer' if integer else 'a number'} from {low} to "
                             f"{high:g}; received {value!r} in {origin}. Set the board's real figure.")
    return dict(values)


# What a target file's plain fields may be: they reach command lines, podman labels and Dockerfile lines,
# so none may carry a newline, a quote or a shell word break. (type, pattern or None, what it is)
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
SCALARS = {
    "description": (str, re.compile(r"[^\x00-\x1f\x7f\"'`$\\]{1,200}"), "one line of up to 200 characters without "
                    "quotes, '$', '`' or '\\'"),
    "arch": (str, WORD, "a machine name like aarch64"),
    "cpu": (str, WORD, "a CPU name like cortex-a76"),
    "distribution": (str, re.compile(r"[a-z][a-z0-9-]{0,31}"), "a Debian suite like bookworm"),
    "python": (str, re.compile(r"\d+\.\d+|host"), "a Python version like 3.11"),
    "runtime": (str, WORD, "a runtime package name"),
    "runtime_version": (str, WORD, "a version like 2.3.0"),
    "qemu_suite": (str, re.compile(r"|[a-z][a-z0-9-]{0,63}"), "a Debian suite like bookworm-backports"),
    "qemu_version": (str, re.compile(r"|[0-9][0-9.]{0,15}"), "a version like 10.0"),
    "kernels": (str, WORD, "a kernel name"),
    "emulated": (bool, None, "true or false"),
    "threads": (int, range(1, 257), "an integer from 1 to 256"),
    "batch_size": (int, range(1, 4097), "an integer from 1 to 4096"),
}


def _check_scalars(raw, path):
    for key, (kind, rule, what) in SCALARS.items():
        value = raw.get(key)
        wrong_type = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong_type or (rule is not None and (value not in rule if isinstance(rule, range)
                                                else not rule.fullmatch(value))):
            raise InputError(f"{key} in {path} must be {what}; received {str(value)[:80]!r}. Fix the target file.")


# What a target file's list entries may be: they reach pip, mmdebstrap and Dockerfile lines.
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
PLATFORM = re.compile(r"[a-z0-9_]+")
SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_lists(raw, path, check_hashes=True):
    for key, pattern, what in (("wheels", PIN, "an exact pin 'name==version'"),
                               ("debian_packages", DEBIAN_PACKAGE, "a Debian package name"),
                               ("wheel_platforms", PLATFORM, "a wheel platform tag"),
                               ("twin_platforms", PLATFORM, "a wheel platform tag")):
        bad = [v for v in raw[key] if not isinstance(v, str) or not pattern.fullmatch(v)]
        if bad:
            raise InputError(f"every entry of {key} in {path} must be {what}; received {str(bad[0])[:80]!r}. Fix the "
                             "target file.")
    for key, needed in (("wheel_sha256", True), ("twin_wheel_sha256", bool(raw["twin_platforms"]))):
        hashes = raw[key]
        if check_hashes and needed and (not isinstance(hashes, dict) or set(hashes) != set(raw["wheels"]) or not all(
                isinstance(h, str) and SHA256.fullmatch(h) for h in hashes.values())):
            raise InputError(f"{key} in {path} must give the sha256 (64 hex digits) of every wheel in wheels and "
                             f"nothing else; it has {sorted(hashes) if isinstance(hashes, dict) else hashes!r}. Run "
                             "edgebuild target pin NAME and paste its table.")


# ---------------------------------------------------------------------------- set-up


