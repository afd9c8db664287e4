"""Targets are data: `targets/<name>.toml` says the target's kind, runtime and its pinned version, the
kernels it runs, its budgets (RAM, flash, MACs, ...) and tolerances; a Linux board also its
architecture, CPU, distribution, pinned wheels, threads and batch size. This module reads target files
and, for the `linux` kind, builds an emulated aarch64 root filesystem from Debian packages (mmdebstrap,
extract variant) and PyPI aarch64 wheels, fetches Debian's statically linked qemu user-mode emulator,
and runs the on-target validator in it. Other kinds are one module each (KINDS): their set-up and
validator command come from there, and `run_sharded` runs any of them the same way.

Environments are cached under `<cache>/targets/<name>-<key of the fields that build them>/`, written under a
temporary name and renamed into place, so a second setup is instant and a killed one leaves nothing.
"""

import dataclasses
import glob
import hashlib
import importlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.errors import InputError, ModelRefused, StageError
from pipeline.engine.fsutil import file_lock, publishing_dir
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
KIND_BUDGETS = {"linux": ("sram_bytes", "flash_bytes", "max_macs"), "tflm": ("sram_bytes", "flash_bytes", "max_macs"),
                "ethos-u": tuple(BUDGETS)}


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
        integer = key != "max_inference_ms"
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


def debian_mirror(sources_dir="/etc/apt"):
    """The Debian mirror URI from this machine's own apt sources (deb822 or one-line format)."""
    files = sorted(glob.glob(f"{sources_dir}/sources.list.d/*.sources")) + sorted(
        glob.glob(f"{sources_dir}/sources.list.d/*.list")
    ) + [f"{sources_dir}/sources.list"]
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
                if uris and suites and "security" not in uris.group(1) and "/debian" in uris.group(1):
                    return uris.group(1).rstrip("/")
        else:
            for line in text.splitlines():
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if m and "security" not in m.group(1) and "/debian" in m.group(1):
                    return m.group(1).rstrip("/")
    raise StageError(
        "target setup needs a Debian mirror; none was found in /etc/apt/sources.list(.d). "
        "Add a Debian source to apt, as on any Debian machine."
    )


# How pip and apt say they could not reach a registry (apt's "Failed to fetch" alone is also a 404).
UNREACHABLE = re.compile(
    r"Could not resolve|Could not connect|Temporary failure|Failed to establish|NewConnectionError|"
    r"Connection (refused|reset)|unreachable|timed out"
)


def _run(cmd, what, log, cwd=None, env=None):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        output = proc.stderr or proc.stdout
        tail = " | ".join(output.strip().splitlines()[-2:])[:400]
        # pip retries a dead index and then says "No matching distribution": the connection
        # errors earlier in the output decide which of the two it really was.
        if UNREACHABLE.search(output):
            line = next(ln for ln in output.splitlines() if UNREACHABLE.search(ln))
            reason = re.search(r"(Failed to establish[^'\"]*|Could not resolve[^'\"]*)", line)
            raise StageError(
                f"{what} failed: the package registry is unreachable "
                f"({(reason.group(1) if reason else line).strip()[:200]}). Check the network, "
                f"the proxy or pip's/apt's index settings. Full log: {log}"
            )
        if "No matching distribution" in output or "Could not find a version" in output:
            raise InputError(
                f"{what} failed: no such wheel for this platform and Python ({tail}). Change the "
                f"target's wheels or wheel_platforms. Full log: {log}"
            )
        raise StageError(f"{what} failed: {tail}. Full log: {log}")
    return proc.stdout


# What set-up makes besides what the target file pins; raising it rebuilds every environment (3: keyed
# by the fields that build it, not by the whole target file).
SETUP_REVISION = 3
ENVIRONMENT_FIELDS = ("kind", "emulated", "cpu", "arch", "distribution", "debian_packages", "python", "runtime", "runtime_version",
                      "wheels", "wheel_sha256", "wheel_platforms", "qemu_suite", "qemu_version", "twin_platforms",
                      "twin_wheel_sha256")


def env_key(target):
    """The environment's digest: the target fields it is built from (a budget or a tolerance changes
    nothing in it) and how set-up builds it."""
    fields = {k: getattr(target, k) for k in ENVIRONMENT_FIELDS}
    return hashlib.sha256(f"{json.dumps(fields, sort_keys=True)}:{SETUP_REVISION}".encode()).hexdigest()[:12]


def env_dir(target, cache_dir):
    return Path(cache_dir) / "targets" / f"{target.name}-{env_key(target)}"


def _qemu_path(root):
    return root / "qemu" / "usr" / "bin" / "qemu-aarch64"


def setup(target, cache_dir, log=print, remote=None):
    """Build (or reuse) the target's emulated environment; returns its directory. With `remote` (a
    RemoteCache), a missing environment is restored from it, and one built here is stored in it."""
    if target.kind != "linux":
        return kind_module(target.kind).setup(target, cache_dir, log)
    root = env_dir(target, cache_dir)
    if (root / "ready.json").is_file():
        if remote is not None and target.emulated:
            remote.push_tree(root.name, root, log)  # a runner set up here fills an empty remote (skipped if there)
        return root
    if not target.emulated:
        root.mkdir(parents=True, exist_ok=True)
        (root / "ready.json").write_text(json.dumps({"emulated": False}))
        return root
    # one set-up per environment at a time: another build (or test worker) setting it up is waited for
    with file_lock(root.parent / f".{root.name}.lock",
                   lambda holder: log(f"target {target.name}: waiting for another process setting up {root}")):
        if (root / "ready.json").is_file():
            return root
        return _setup_here(target, root, log, remote)


def _setup_here(target, root, log, remote):
    """Restore the environment from the remote (self-tested here) or build it; under set-up's lock."""
    if remote is not None and remote.fetch_tree(root.name, root, log):
        try:  # what the remote held is verified by sha256; that it runs here, by the self-test
            _selftest(target, root, root.parent / f"{root.name}.setup.log")
            return root
        except StageError as exc:
            log(f"target {target.name}: the environment from the remote cache fails its self-test here ({exc}); "
                "building it")
            shutil.rmtree(root, ignore_errors=True)
    _build(target, root, log)
    if remote is not None:
        remote.push_tree(root.name, root, log)
    return root


def _build(target, root, log):
    if shutil.which("mmdebstrap") is None:
        raise StageError(
            "target setup needs mmdebstrap to build the aarch64 root filesystem; it is not installed. "
            "Install it with: apt-get install -y mmdebstrap (the README's install command does)."
        )
    logfile = root.parent / f"{root.name}.setup.log"
    started = time.perf_counter()
    with publishing_dir(root) as tmp:
        # wheels first: a wrong pin or a dead index fails in seconds, before the root filesystem
        log(f"target {target.name}: wheels {', '.join(target.wheels)}")
        _install_wheels(target, tmp, logfile)
        mirror = debian_mirror()
        log(f"target {target.name}: root filesystem ({target.distribution}, arm64) from {mirror}")
        _run(
            ["mmdebstrap", "--quiet", "--variant=extract", "--arch=arm64",
             f"--include={','.join(target.debian_packages)}", target.distribution,
             str(tmp / "rootfs"), mirror],
            "building the root filesystem with mmdebstrap", logfile,
        )
        log(f"target {target.name}: qemu user-mode emulator from {target.qemu_suite}")
        _fetch_qemu(target, mirror, tmp, logfile)
        if target.twin_platforms:
            log(f"target {target.name}: x86_64 twin ({', '.join(target.wheels)})")
            _install_wheels(target, tmp, logfile, twin=True)
        compiled = _compile_ahead(target, tmp, logfile)
        info = _selftest(target, tmp, logfile)
        if target.twin_platforms:
            info["twin"] = _selftest(target, tmp, logfile, twin=True)
        info["bytecode_compiled"] = compiled
        info["setup_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / "ready.json").write_text(json.dumps(info, indent=1))
    return root


def _compile_ahead(target, tmp, logfile):
    """Compile the target's standard library and site directories to bytecode with the host's Python
    when it is the target's Python version (the same bytecode): the validator runs with
    PYTHONDONTWRITEBYTECODE, so otherwise every emulated process compiles numpy and the runtime again
    (about 2.5 s of each start under qemu). Timestamp-checked .pyc files: a changed source is still
    compiled afresh. Returns the directories compiled ([] when the versions differ)."""
    if target.python != f"{sys.version_info.major}.{sys.version_info.minor}":
        return []
    dirs = [d for d in (tmp / "rootfs" / "usr" / "lib" / f"python{target.python}", tmp / "rootfs" / "usr" / "lib" / "python3",
                        tmp / "site", tmp / "twin-site") if d.is_dir()]
    # a few files are not valid Python 3.11 (lib2to3's test data, for example): compileall reports them and
    # goes on, so its exit status is not checked; the self-test that follows imports what the validator needs
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *map(str, dirs)],
                          capture_output=True, text=True)
    with open(logfile, "a") as f:
        f.write(f"$ compileall {' '.join(map(str, dirs))}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n")
    return [str(d.relative_to(tmp)) for d in dirs]


def _fetch_qemu(target, mirror, tmp, logfile):
    apt = tmp / "apt"
    (apt / "lists" / "partial").mkdir(parents=True)
    (apt / "cache" / "archives" / "partial").mkdir(parents=True)
    (apt / "sources.list").write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {target.qemu_suite} main\n"
    )
    opts = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
        "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root",
    ]
    _run(["apt-get", *opts, "update"], f"apt-get update for {target.qemu_suite}", logfile)
    _run(["apt-get", *opts, "download", "qemu-user"], "downloading qemu-user", logfile, cwd=apt)
    debs = sorted(apt.glob("qemu-user_*.deb"))
    _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "qemu")], "unpacking qemu-user", logfile)
    version = _run([str(_qemu_path(tmp)), "--version"], "running qemu-aarch64", logfile).split("\n")[0]
    if target.qemu_version not in version:
        raise StageError(
            f"target {target.name} needs qemu {target.qemu_version}; {target.qemu_suite} served "
            f"'{version}'. Update qemu_version/qemu_suite in {target.path}."
        )
    shutil.rmtree(apt)


def _download_wheels(target, dest, logfile, hashed=True, twin=False):
    """pip download of the target's aarch64 wheels (or its x86_64 twin's), no dependencies, checked
    against wheel_sha256 (twin_wheel_sha256)."""
    platforms = [a for p in (target.twin_platforms if twin else target.wheel_platforms) for a in ("--platform", p)]
    pinned = target.twin_wheel_sha256 if twin else target.wheel_sha256
    py = target.python.replace(".", "")
    dest.mkdir(parents=True, exist_ok=True)
    if hashed:
        requirements = dest / "requirements.txt"
        requirements.write_text("".join(f"{w} --hash=sha256:{pinned[w]}\n" for w in target.wheels))
        wanted = ["--require-hashes", "-r", str(requirements)]
    else:
        wanted = list(target.wheels)
    try:
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
             "--python-version", target.python, "--implementation", "cp", "--abi", f"cp{py}",
             *platforms, "-d", str(dest), *wanted],
            f"downloading {'x86_64' if twin else 'aarch64'} wheels {' '.join(target.wheels)}", logfile,
        )
    except StageError:
        log_text = Path(logfile).read_text()
        if "DO NOT MATCH THE HASHES" not in log_text:
            raise
        culprit = next((ln.strip() for ln in log_text.splitlines() if " from http" in ln), "a wheel")
        raise InputError(
            f"every target wheel must match its {'twin_' if twin else ''}wheel_sha256 in {target.path}; "
            f"{culprit.split(' from ')[0]} does not "
            f"(the index now serves another file). If that file is trusted, update the hash (edgebuild target "
            f"pin {target.name}); otherwise the index is not the one the target was pinned against. Log: {logfile}"
        ) from None
    return sorted(dest.glob("*.whl"))


def _install_wheels(target, tmp, logfile, twin=False):
    site = tmp / ("twin-site" if twin else "site")
    for whl in _download_wheels(target, tmp / "wheels", logfile, twin=twin):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    shutil.rmtree(tmp / "wheels")


def pin_wheels(target, workdir, logfile, twin=False):
    """{pin: sha256} of the files pip downloads for the target's wheels now: its wheel_sha256 table
    (twin_wheel_sha256 with `twin`)."""
    files = _download_wheels(target, Path(workdir), logfile, hashed=False, twin=twin)
    by_name = {re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower(): f for f in files}
    return {w: hashlib.sha256(by_name[re.sub(r"[-_.]+", "-", w.split("==")[0]).lower()].read_bytes()).hexdigest()
            for w in target.wheels}


def _selftest(target, root, logfile, twin=False):
    """Run the validator on a tiny int8 model inside the fresh environment (or its x86 twin)."""
    import numpy as np

    work = Path(tempfile.mkdtemp(dir=root, prefix="selftest-"))
    try:
        from pipeline.device.onnx_info import describe

        model = selftest_model(target)
        shape = describe(model)["inputs"][0]["shape"]
        np.save(work / "x.npy", np.zeros([2, *shape[1:]], np.int8))
        cmd = command(target, root, [model, work / "x.npy", work / "y.npy", "--batch", "1"], twin)
        where = "in the x86_64 twin" if twin else "under emulation"
        out = _run(cmd, f"self-test of the {target.runtime} interpreter {where}", logfile, env=_env(target, root, twin))
        info = json.loads(out.strip().splitlines()[-1])
        if info["runtime"] != target.runtime or info["runtime_version"] != target.runtime_version:
            raise StageError(
                f"target {target.name} should run {target.runtime} {target.runtime_version}; the "
                f"environment has {info['runtime']} {info['runtime_version']}. Fix the target's wheels."
            )
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _env(target, root, twin=False):
    # numpy's OpenBLAS starts (and spins) one thread per CPU at import; under emulation those
    # spinning threads took the cores from the other shards, so 2 shards ran slower than 1.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if twin:  # the host's Python without its site-packages (-S), on the twin's own site directory
        env.update(PYTHONPATH=str(Path(root) / "twin-site"))
    elif target.emulated:
        env.update(QEMU_CPU=target.cpu, PYTHONPATH=str(Path(root) / "site"))
    else:
        env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    return env


def launch(target, root, args, twin=False):
    """(command line, environment) of one validator process with `args` on the target (or its x86 twin),
    from the target's kind."""
    if target.kind != "linux":
        return kind_module(target.kind).launch(target, root, [str(a) for a in args], twin)
    return command(target, root, args, twin), _env(target, root, twin)


def kernel_args(target):
    """The validator's flag for a Linux target's kernels (none for its runtime's default): every executor
    of the target (qemu, the container, the twin, the tensor dumps) runs the same kernels."""
    flag = KERNEL_FLAG.get(target.kernels, "default") if target.kind == "linux" else "default"
    return [] if flag == "default" else ["--kernels", flag]


def command(target, root, args, twin=False):
    """The command line that runs the validator with `args` on a Linux target (or on its x86 twin)."""
    args = [str(a) for a in args]
    if twin:
        return [sys.executable, "-S", str(ONDEVICE), *args]
    if not target.emulated:
        return [sys.executable, str(ONDEVICE), *args]
    root = Path(root)
    rootfs = root / "rootfs"
    return [str(_qemu_path(root)), "-L", str(rootfs), str(rootfs / "usr" / "bin" / "python3"), str(ONDEVICE), *args]


def run_sharded(target, root, model, x, work, shards, threads=None, batch=None, twin=False, container=None,
                bytecode=True, reference=0):
    """Run the validator over `x` in `shards` parallel long-lived processes (on the target, or on its
    x86 twin with `twin`; in the target's OCI image with `container` = the cache directory that holds
    it); returns (outputs, info). `bytecode=False` ignores the environment's compiled modules (every
    module compiled at start, as before set-up compiled them: for the benchmark). With `reference` = N,
    the same processes also run the first N inputs on the runtime's reference kernels and write those
    outputs to work/reference.npy (a TFLite runtime only; info["reference_samples"] says how many)."""
    import numpy as np

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    parts = [p for p in np.array_split(np.arange(len(x)), max(1, min(shards, len(x)))) if len(p)]
    procs = []
    started = time.perf_counter()
    for i, idx in enumerate(parts):
        np.save(work / f"x{i}.npy", x[idx])
        args = [model, work / f"x{i}.npy", work / f"y{i}.npy",
                "--batch", str(batch or target.batch_size), "--threads", str(threads or target.threads)]
        ref = max(0, min(len(idx), reference - int(idx[0])))
        args += kernel_args(target) + (["--reference", str(ref)] if ref else [])
        if container is not None:
            from pipeline.device import image

            cmd, env = image.command(target, container, args), image.host_env()
        else:
            cmd, env = launch(target, root, args, twin)
            # a runtime's own temporary files (onnxruntime's telemetry writes $TMPDIR/.ses at import) stay
            # in the stage's work directory, never in the machine's /tmp
            (work / f"tmp{i}").mkdir(exist_ok=True)
            env["TMPDIR"] = str(work / f"tmp{i}")
            if not bytecode:  # .pyc files are looked up under an empty prefix: none is found
                env["PYTHONPYCACHEPREFIX"] = str(work / "no-bytecode")
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    infos, arena = [], None
    try:
        for proc in procs:
            out, err = proc.communicate()
            used = ARENA.search(err or "")
            arena = int(used.group(1)) if used else arena
            if proc.returncode != 0:
                _failed(target, proc.returncode, out, err, twin)
            infos.append(json.loads(out.strip().splitlines()[-1]))
    finally:  # on any failure, no validator is left running
        for other in procs:
            if other.poll() is None:
                other.kill()
            other.wait()
    wall = time.perf_counter() - started
    outputs = np.concatenate([np.load(work / f"y{i}.npy") for i in range(len(parts))])
    refs = [work / f"y{i}.ref.npy" for i, info in enumerate(infos) if info.get("reference_samples")]
    if refs:
        np.save(work / "reference.npy", np.concatenate([np.load(r) for r in refs]))
    slowest = max(i["inference_seconds"] for i in infos)
    return outputs, {
        "runtime": infos[0]["runtime"],
        "runtime_version": infos[0]["runtime_version"],
        "machine": infos[0]["machine"],
        "python": infos[0]["python"],
        "shards": len(parts),
        "batch": infos[0]["batch"],
        "threads": infos[0]["threads"],
        "wall_seconds": round(wall, 3),
        "inference_seconds": round(slowest, 4),
        "images_per_s": round(len(x) / slowest, 1) if slowest > 0 else None,
        "kernels": infos[0].get("kernels", "default"),
        "reference_samples": sum(i.get("reference_samples", 0) for i in infos),
        **({"arena_bytes": arena} if arena is not None else {}),
    }


# What TFLM's recording allocator prints after the first invoke (ondevice.py asks it to).
ARENA = re.compile(r"Arena allocation total (\d+) bytes")


def _failed(target, returncode, out, err, twin):
    """Raise what a validator's non-zero exit means: the runtime refused the model (ModelRefused, naming
    the op the runtime lacks when it said so on stderr), or the validator itself failed (StageError)."""
    refused = refusal_reason(out, err)
    if refused is not None:
        m = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", refused)
        fix = (f"Use a runtime that has op {m.group(1)} version {m.group(2)} in the target file, or avoid "
               "that op." if m else "")
        where = f"the x86_64 twin of target {target.name}" if twin else f"target {target.name}"
        raise ModelRefused(f"{where} ({target.runtime} {target.runtime_version})", refused, fix)
    where = f"the x86_64 twin of target {target.name}" if twin else f"target {target.name}"
    crash = crashed(returncode, err)
    if crash:  # the runtime died running the model: that target's failure, and the other targets go on
        raise ModelRefused(f"{where} ({target.runtime} {target.runtime_version})", crash,
                           "Report it to the runtime with the model, or try other kernels (validate.kernels).",
                           crashed=True)
    msg = (err or out).strip().splitlines()[-1:] or ["no output"]
    if returncode < 0:  # stopped from outside (SIGKILL, SIGTERM): not the model's doing, and never cached
        msg = [f"killed by signal {-returncode}" + (f" after: {msg[0]}" if msg[0] != "no output" else "")]
    raise StageError(f"the on-target validator failed on {target.name} (exit {returncode}): {msg[0][:300]}")


# qemu user-mode's words when the emulated program dies of a signal (it then dies of the same signal)
QEMU_SIGNAL = re.compile(r"qemu: uncaught target signal (\d+) \(([^)]*)\)")


# The signals a program dies of when its own code faults (a crash), not when it is stopped from outside
# (SIGKILL by the out-of-memory killer, SIGTERM or SIGINT by a cancelled job: the validator's failure).
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")


def crashed(returncode, stderr):
    """'the runtime crashed (SIGSEGV, ...) ...' when a validator died of a fault (natively, or under qemu),
    else None."""
    import signal as signals

    m = QEMU_SIGNAL.search(stderr or "")
    number = int(m.group(1)) if m else (-returncode if returncode < 0 else None)
    try:
        name = signals.Signals(number).name if number is not None else None
    except ValueError:
        name = None
    if name not in CRASH_SIGNALS:
        return None
    return f"the runtime crashed ({name}{', ' + m.group(2) if m else ''}) running the model (no op named: no per-op trace)"


def dump_tensors(target, root, model, x, work, side):
    """Every tensor of the single sample `x` (shape (1, ...)) on the target, its x86 twin or the build
    host ('target', 'twin', 'host'), builtin kernels; returns {tensor index: array}, or None when that
    side cannot run the dump (the reason is in work/dump.log)."""
    import numpy as np

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / f"{side}-x.npy", x)
    args = [model, work / f"{side}-x.npy", work / f"{side}.npz", "--dump", "0",
            *([] if side == "host" else kernel_args(target))]
    if side == "host":
        cmd = [sys.executable, str(ONDEVICE), *map(str, args)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1"}
    else:
        cmd, env = launch(target, root, args, twin=side == "twin")
    env["TMPDIR"] = str(work)
    try:
        _run(cmd, f"keeping every tensor on {side}", work / "dump.log", env=env)
    except (StageError, InputError):
        return None
    with np.load(work / f"{side}.npz") as f:
        return {int(k[1:]): f[k] for k in f.files}


def refusal_reason(stdout, stderr):
    """The runtime's reason for refusing a model, from the validator's {"refused": ...} line, led by the
    line naming the op it lacks when the runtime said so only on stderr (TFLM does); None if not refused."""
    refused = _refusal(stdout)
    if refused is None:
        return None
    named = re.search(r"(Didn't find op for builtin opcode '\w+'[^\n]*|Failed to get registration from op "
                      r"code [^\n]*)", stderr or "")
    return f"{named.group(1).strip()}; {refused}" if named and named.group(1) not in refused else refused


def _refusal(stdout):
    """The runtime's reason from the validator's {"refused": ...} line, or None."""
    for line in reversed((stdout or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "refused" in value:
            return str(value["refused"])
    return None


def lint(target, model_info):
    """Refuse a model in a format the target's runtime does not run, and, by op name, one whose ops
    it cannot run."""
    fmt = model_info.get("format", "tflite")
    if fmt != model_format(target):
        raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                           f"it runs .{model_format(target)} models; this one is .{fmt}.",
                           f"Validate the .{model_format(target)} artifact on it, or choose a target with a "
                           f"{fmt} runtime.")
    if fmt == "onnx":
        if model_info["custom_ops"]:
            raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                               f"it runs standard ONNX ops only; the model needs {', '.join(model_info['custom_ops'])}.",
                               "Re-export without custom-domain ops.")
        return
    bad = model_info["flex_ops"] + [op for op in model_info["custom_ops"] if op not in model_info["flex_ops"]]
    if bad:
        raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                           f"it runs builtin ops only; the model needs {', '.join(sorted(set(bad)))}.",
                           "Re-export without Flex/select-TF or custom ops.")


def dockerfile(targets):
    """Dockerfile.edge: one arm64 build stage per emulated target, with its exact Python, runtime
    wheels and the same validator, so `docker run --platform linux/arm64` gives the same numbers."""
    lines = [
        "# Generated by `edgebuild target dockerfile` from targets/*.toml; do not edit by hand.",
        "# Build one target:  docker build --platform linux/arm64 -f Dockerfile.edge --target rpi5-litert -t edge .",
        "# Validate:          docker run --rm --platform linux/arm64 -v $PWD/build:/work edge \\",
        "#                      /work/<name>/model_int8.tflite /work/x.npy /work/y.npy --batch 1",
        "# Without a registry:  edgebuild target image NAME (the same contents, from the emulated target's root",
        "#                      filesystem; a test compares the two)",
        "",
    ]
    for t in targets:
        if not t.emulated:
            continue
        lines += [
            f"FROM --platform=linux/arm64 debian:{t.distribution}-slim AS {t.name}",
            f"# {t.description}; CPU {t.cpu}, threads {t.threads}, batch {t.batch_size}",
            "RUN apt-get update && apt-get install -y --no-install-recommends "
            + " ".join(shlex.quote(p) for p in t.debian_packages) + " python3-pip && rm -rf /var/lib/apt/lists/*",
            # the same wheels as the emulated target, hash-checked, without dependencies
            "RUN printf '%s\\n' " + " ".join(shlex.quote(f"{w} --hash=sha256:{t.wheel_sha256[w]}") for w in t.wheels)
            + " > /tmp/requirements.txt && python3 -m pip install --no-cache-dir --break-system-packages --no-deps "
            "--require-hashes -r /tmp/requirements.txt",
            f"COPY {ONDEVICE.relative_to(TARGETS_DIR.parent).as_posix()} /opt/edgebuild/ondevice.py",
            'ENTRYPOINT ["python3", "/opt/edgebuild/ondevice.py"]',
            "",
        ]
    return "\n".join(lines)
