"""The emulated targets as OCI images, for real: `edgebuild target image` builds one with Debian's
podman (from the target's own root filesystem, no registry), and `validate.executor = "container"`
runs the build's int8 model in it under podman + runc, byte-identical to the qemu user-mode target.
The image and Dockerfile.edge describe the same contents."""

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import REPO, edgebuild
from pipeline.device import image, targets

TARGET = "rpi5-litert"


@pytest.fixture(scope="module")
def built(cache_dir, tmp_path_factory):
    """`edgebuild target image rpi5-litert --output FILE` into this session's cache."""
    out = tmp_path_factory.mktemp("image") / "rpi5-litert.tar"
    proc = edgebuild("--quiet", "target", "image", TARGET, "--output", str(out), env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_image_archive_is_a_loadable_arm64_image(built, cache_dir, tmp_path):
    archive, stdout = built
    target = targets.load_target(TARGET)
    assert image.tag(target) in stdout and archive.stat().st_size > 50 * 2**20
    # a docker-archive: what `docker load` reads (manifest.json naming its config and layer)
    listing = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True, check=True).stdout.split()
    assert "manifest.json" in listing
    # loaded into a fresh, separate podman storage (as on another machine): arm64, our entrypoint and labels
    other = tmp_path / "other"
    podman = ["podman", "--root", str(other / "storage"), "--runroot", image.runroot(other), "--storage-driver", "vfs"]
    subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, capture_output=True)
    inspect = json.loads(subprocess.run([*podman, "image", "inspect", image.tag(target)], check=True,
                                        capture_output=True, text=True).stdout)[0]
    assert inspect["Architecture"] == "arm64"
    assert inspect["Config"]["Entrypoint"] == ["python3", "/opt/edgebuild/ondevice.py"]
    assert inspect["Config"]["Labels"]["edgebuild.target_sha256"] == target.sha256
    shutil.rmtree(other, ignore_errors=True)


def test_image_and_dockerfile_describe_the_same_contents(built, cache_dir):
    """The image (made from the emulated target's root filesystem) and Dockerfile.edge's stage for the
    same target (for users with a registry) carry the same Debian release and packages, the same pinned
    runtime and numpy versions, and the same validator."""
    target = targets.load_target(TARGET)
    stage = (REPO / "Dockerfile.edge").read_text().split(f"AS {TARGET}\n", 1)[1].split("\nFROM ", 1)[0]
    pins = dict(re.findall(r"'([A-Za-z0-9_.-]+)==([^ ']+) --hash", stage))
    apt = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", stage).group(1).split()
    assert set(apt) - {"python3-pip"} == set(target.debian_packages)  # pip only installs the wheels there
    probe = ("import gzip, hashlib, json, os, platform; from importlib import metadata as m; print(json.dumps({"
             f"'versions': {{d: m.version(d) for d in {sorted(pins)!r}}}, "
             "'python': platform.python_version(), "
             "'libc': gzip.open('/usr/share/doc/libc6/changelog.Debian.gz', 'rt').readline(), "
             f"'packages': {{p: os.path.isdir('/usr/share/doc/' + p) for p in {sorted(apt)!r}}}, "
             "'validator': hashlib.sha256(open('/opt/edgebuild/ondevice.py', 'rb').read()).hexdigest()}))")
    cmd = [*image.podman(cache_dir), "run", "--rm", *image.RUN_FLAGS, "--entrypoint", image.QEMU_IN_IMAGE,
           image.tag(target), "/usr/bin/python3", "-c", probe]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=image.host_env())
    assert proc.returncode == 0, proc.stderr
    inside = json.loads(proc.stdout.strip().splitlines()[-1])
    assert inside["versions"] == pins
    # the same Debian release: the image's packages come from it, the Dockerfile starts from its image
    assert re.match(rf"glibc \(\S+\) {target.distribution}\b", inside["libc"]), inside["libc"]
    assert f"debian:{target.distribution}-slim AS {TARGET}" in (REPO / "Dockerfile.edge").read_text()
    assert inside["python"].startswith(target.python + ".")
    assert all(inside["packages"][p] for p in target.debian_packages), inside["packages"]
    assert inside["validator"] == hashlib.sha256(targets.ONDEVICE.read_bytes()).hexdigest()
    assert "COPY pipeline/device/ondevice.py /opt/edgebuild/ondevice.py" in stage


def test_validate_in_the_container_matches_the_qemu_target_byte_for_byte(built, tiny_build, cache_dir, tmp_path):
    """The build's int8 model through `validate.executor = "container"`: the manifest records the
    container (engine, image, id), and the outputs equal the qemu user-mode run's exactly."""
    d = tmp_path / "b" / "tiny"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    proc = edgebuild("--quiet", "validate", str(d), "--target", TARGET, "--set", "validate.targets=[]",
                     "--set", 'validate.executor="container"', env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((d / "manifest.json").read_text())["metrics"]["targets"][TARGET]
    assert record["executor"]["kind"] == "container" and record["executor"]["image"] == image.tag(targets.load_target(TARGET))
    assert record["executor"]["engine"].startswith("podman") and record["machine"] == "aarch64"
    before = tiny_build["manifest"]["metrics"]["targets"][TARGET]
    assert before["executor"]["kind"] == "qemu-user"
    in_container = np.load(d / f"target-{TARGET}.npz")["outputs"]
    user_mode = np.load(tiny_build["dir"] / f"target-{TARGET}.npz")["outputs"]
    assert in_container.dtype == user_mode.dtype and np.array_equal(in_container, user_mode)
    assert record["accuracy"] == before["accuracy"] and record["runtime_version"] == before["runtime_version"]
    # the per-layer report's tensors, kept by the same validator process in the image: the qemu run's report
    assert record["layers"]["tensors"] and record["layers"]["tensors"] == before["layers"]["tensors"]
