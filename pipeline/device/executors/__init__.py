"""How a target's validator process runs: one module per executor, all behind one protocol
(`base.Executor`): `qemu` (user-mode emulation of a Linux board), `local` (the build host, and an
emulated target's x86_64 twin), `container` (the target's OCI image under podman). A kind with its own
runtime (TFLM, Ethos-U) gives its command from its own module (`targets.KINDS`);
`fanout.executor_for` picks a target's executor."""

from pipeline.device.executors import local, qemu


def linux(target, root, twin=False):
    """The executor of a Linux target: its twin, the host itself, or qemu user-mode."""
    if twin:
        return local.twin(target, root)
    return qemu.executor(target, root) if target.emulated else local.host(target, root)
