"""The emulated environment of a Linux target: an aarch64 root filesystem built from Debian packages
(mmdebstrap, extract variant) and the target's hash-pinned PyPI aarch64 wheels, Debian's statically
linked qemu user-mode emulator and, when the target pins them, its x86_64 twin's wheels; self-tested
when made. Other kinds set themselves up in their own module (`targets.KINDS`).

Environments are cached under `<cache>/targets/<name>-<key of the fields that build them>/`, written under a
temporary name and renamed into place, so a second setup is instant and a killed one leaves nothing.
"""

import glob
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pipeline.device import executors, targets
from pipeline.device.executors import qemu
from pipeline.engine.errors import InputError, StageError
from pipeline.engine.fsutil import file_lock, publishing_dir


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


def run_logged(cmd, what, log, cwd=None, env=None):
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


def setup(target, cache_dir, log=print, remote=None):
    """Build (or reuse) the target's emulated environment; returns its directory. With `remote` (a
    RemoteCache), a missing environment is restored from it, and one built here is stored in it."""
    if target.kind != "linux":
        return targets.kind_module(target.kind).setup(target, cache_dir, log)
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
        run_logged(
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
    run_logged(["apt-get", *opts, "update"], f"apt-get update for {target.qemu_suite}", logfile)
    run_logged(["apt-get", *opts, "download", "qemu-user"], "downloading qemu-user", logfile, cwd=apt)
    debs = sorted(apt.glob("qemu-user_*.deb"))
    run_logged(["dpkg-deb", "-x", str(debs[0]), str(tmp / "qemu")], "unpacking qemu-user", logfile)
    version = run_logged([str(qemu.qemu_path(tmp)), "--version"], "running qemu-aarch64", logfile).split("\n")[0]
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
        run_logged(
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
    from packaging.utils import canonicalize_name  # here: a target stage's own process never loads it

    files = _download_wheels(target, Path(workdir), logfile, hashed=False, twin=twin)
    by_name = {canonicalize_name(f.name.split("-")[0]): f for f in files}
    return {w: hashlib.sha256(by_name[canonicalize_name(w.split("==")[0])].read_bytes()).hexdigest()
            for w in target.wheels}


def _selftest(target, root, logfile, twin=False):
    """Run the validator on a tiny int8 model inside the fresh environment (or its x86 twin)."""
    import numpy as np

    work = Path(tempfile.mkdtemp(dir=root, prefix="selftest-"))
    try:
        from pipeline.device.onnx_info import describe

        model = targets.selftest_model(target)
        shape = describe(model)["inputs"][0]["shape"]
        np.save(work / "x.npy", np.zeros([2, *shape[1:]], np.int8))
        cmd, env = executors.linux(target, root, twin).command([model, work / "x.npy", work / "y.npy", "--batch", "1"])
        where = "in the x86_64 twin" if twin else "under emulation"
        out = run_logged(cmd, f"self-test of the {target.runtime} interpreter {where}", logfile, env=env)
        info = json.loads(out.strip().splitlines()[-1])
        if info["runtime"] != target.runtime or info["runtime_version"] != target.runtime_version:
            raise StageError(
                f"target {target.name} should run {target.runtime} {target.runtime_version}; the "
                f"environment has {info['runtime']} {info['runtime_version']}. Fix the target's wheels."
            )
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)

