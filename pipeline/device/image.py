"""OCI images of the emulated targets: `edgebuild target image NAME` and `validate.executor =
"container"`.

An image is made from the same environment the qemu user-mode target runs (`environment.setup`): the arm64
root filesystem, the runtime's site directory at /opt/edgebuild/site, the on-target validator at
/opt/edgebuild/ondevice.py and the static x86_64 `qemu-aarch64` at /usr/bin/qemu-aarch64-static (for
x86 hosts without binfmt; unused on a board). It is imported with Debian's podman, from a tarball and
no registry, and saved as a docker-archive that `docker load` and `podman load` accept. Its entrypoint
runs the validator with the image's python3, natively on an arm64 host; here the entrypoint is the
bundled qemu.

podman keeps its images under `<cache>/containers` (vfs storage, runc, no network), not in the
machine's own container storage.
"""

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipeline.device import environment, targets
from pipeline.device.executors import qemu
from pipeline.engine.errors import InputError, StageError

PREFIX = "opt/edgebuild"
QEMU_IN_IMAGE = "/usr/bin/qemu-aarch64-static"
# runc, because podman's default crun is not in Debian's podman dependencies here; no network (the
# validator needs none); rlimits runc accepts in an unprivileged sandbox.
RUN_FLAGS = ("--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
INSTALL_HINT = "apt-get install -y podman runc (or: bash scripts/install.sh --container)"


def podman(cache_dir):
    """podman on edgebuild's own storage under the cache directory."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        raise InputError(f"validate.executor = \"container\" and edgebuild target image need podman and runc; they are "
                         f"not installed. Install them: {INSTALL_HINT}. The default executor (qemu) needs neither.")
    storage = Path(cache_dir).resolve() / "containers" / "storage"
    return ["podman", "--root", str(storage), "--runroot", runroot(storage), "--storage-driver", "vfs"]


def runroot(storage):
    """podman's run-time state (locks, mounts) for `storage`: a short path, since podman refuses a
    runroot longer than 50 characters."""
    return f"/tmp/edgebuild-podman-{hashlib.sha256(str(storage).encode()).hexdigest()[:12]}"


def host_env():
    """The environment podman itself runs in (the container's own is set with -e)."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "XDG_RUNTIME_DIR")}


def _podman(cache_dir, args, what, check=True):
    proc = subprocess.run([*podman(cache_dir), *args], capture_output=True, text=True, env=host_env())
    if check and proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[:400]
        raise StageError(f"{what} failed (podman exit {proc.returncode}): {tail}")
    return proc


def tag(target):
    """The image's name: the target and a digest of what goes into it (the environment's key, which
    covers the target file and how set-up builds it, and the validator)."""
    digest = hashlib.sha256(environment.env_key(target).encode() + targets.ONDEVICE.read_bytes()).hexdigest()[:12]
    return f"edgebuild/{target.name}:{digest}"


def _add(tar, src, arcname, seen):
    if arcname in seen:
        return
    seen.add(arcname)
    info = tar.gettarinfo(str(src), arcname=arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if info.isreg():
        with open(src, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _add_tree(tar, base, prefix, seen):
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel = os.path.relpath(dirpath, base)
        arc = prefix if rel == "." else os.path.join(prefix, rel)
        if arc:
            _add(tar, dirpath, arc, seen)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]  # added as links, not walked
        for name in sorted(filenames + links):
            _add(tar, os.path.join(dirpath, name), os.path.join(arc, name) if arc else name, seen)


def write_rootfs_tar(root, path):
    """The image's file system as one tarball: the target's root filesystem, its site directory, the
    validator and the static qemu, in a fixed order, owned by root."""
    root = Path(root)
    seen = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, root / "rootfs", "", seen)
        for directory in ("opt", PREFIX):
            _add(tar, root / "site", directory, seen)  # a directory entry (the site directory's mode)
        _add_tree(tar, root / "site", f"{PREFIX}/site", seen)
        _add(tar, targets.ONDEVICE, f"{PREFIX}/ondevice.py", seen)
        _add(tar, qemu.qemu_path(root), QEMU_IN_IMAGE.lstrip("/"), seen)


def archive_path(target, cache_dir):
    return Path(cache_dir) / "images" / f"{tag(target).split('/', 1)[1].replace(':', '-')}.tar"


def build(target, cache_dir, log=print):
    """Make (or reuse) the target's image; returns {"tag", "id", "archive", "bytes"}. The archive is written
    under a temporary name and renamed, so a killed build leaves none half-written."""
    root = environment.setup(target, cache_dir, log=log)
    name, archive = tag(target), archive_path(target, cache_dir)
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".{archive.stem}."))
        try:
            log(f"target {target.name}: image file system")
            write_rootfs_tar(root, tmp / "rootfs.tar")
            log(f"target {target.name}: podman import {name}")
            changes = [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"ENV PYTHONPATH=/{PREFIX}/site", "ENV OPENBLAS_NUM_THREADS=1", "ENV PYTHONDONTWRITEBYTECODE=1",
                f'ENTRYPOINT ["python3", "/{PREFIX}/ondevice.py"]',
                f"LABEL edgebuild.target={target.name}", f"LABEL edgebuild.target_sha256={target.sha256}",
                f"LABEL edgebuild.runtime={target.runtime}=={target.runtime_version}",
            ]
            _podman(cache_dir, ["import", "--arch", "arm64", *[a for c in changes for a in ("--change", c)],
                                str(tmp / "rootfs.tar"), name], f"importing the image of {target.name}")
            _podman(cache_dir, ["save", "--format", "docker-archive", "-o", str(tmp / "image.tar"), name],
                    f"saving the image of {target.name}")
            os.replace(tmp / "image.tar", archive)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"tag": name, "id": ensure_loaded(target, cache_dir, log), "archive": str(archive),
            "bytes": archive.stat().st_size}


def ensure_loaded(target, cache_dir, log=print):
    """The image id of the target's image in edgebuild's podman storage, loading its archive if needed."""
    name = tag(target)
    found = _podman(cache_dir, ["image", "inspect", "--format", "{{.Id}}", name], "", check=False)
    if found.returncode == 0:
        return found.stdout.strip()
    archive = archive_path(target, cache_dir)
    if not archive.is_file():
        return build(target, cache_dir, log)["id"]
    _podman(cache_dir, ["load", "-q", "-i", str(archive)], f"loading the image of {target.name}")
    return _podman(cache_dir, ["image", "inspect", "--format", "{{.Id}}", name], f"inspecting {name}").stdout.strip()


def command(target, cache_dir, args):
    """The command line that runs the validator with `args` (host paths) in the target's container: every
    directory the paths are in is mounted at the same path, read-write."""
    args = [str(a) for a in args]
    mounts = sorted({str(Path(a).parent) for a in args if a.startswith("/")})
    volumes = [v for m in mounts for v in ("-v", f"{m}:{m}")]
    env = [e for k, v in (("QEMU_CPU", target.cpu), ("OPENBLAS_NUM_THREADS", "1"), ("OMP_NUM_THREADS", "1"))
           for e in ("-e", f"{k}={v}")]
    native = platform.machine() in ("aarch64", "arm64")
    entry = [] if native else ["--entrypoint", QEMU_IN_IMAGE]
    inner = [] if native else ["/usr/bin/python3", f"/{PREFIX}/ondevice.py"]
    return [*podman(cache_dir), "run", "--rm", *RUN_FLAGS, *env, *volumes, *entry, tag(target), *inner, *args]


def describe(target, cache_dir, log=print):
    """What the manifest records about a container run: engine, image name and id (the image is built
    or loaded first if it is not in edgebuild's podman storage)."""
    version = _podman(cache_dir, ["version", "--format", "{{.Client.Version}}"], "podman version", check=False)
    return {"kind": "container", "engine": f"podman {version.stdout.strip()}", "runtime": "runc",
            "image": tag(target), "image_id": ensure_loaded(target, cache_dir, log),
            "emulation": "native" if platform.machine() in ("aarch64", "arm64") else "qemu-aarch64 in the image"}


def dockerfile(target_list):
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
    for t in target_list:
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
            f"COPY {targets.ONDEVICE.relative_to(targets.TARGETS_DIR.parent).as_posix()} /opt/edgebuild/ondevice.py",
            'ENTRYPOINT ["python3", "/opt/edgebuild/ondevice.py"]',
            "",
        ]
    return "\n".join(lines)
