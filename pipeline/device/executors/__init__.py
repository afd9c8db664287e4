"""How a target's validator process runs: one module per executor, all behind one protocol
(`base.Executor`): `qemu` (user-mode emulation of a Linux board), `local` (the build host, and an
emulated target's x86_64 twin), `container` (the target's OCI image under podman). A kind with its own
runtime (TFLM, Ethos-U) gives its command from its own module (`targets.KINDS`);
`fanout.executor_for` picks a target's executor."""
