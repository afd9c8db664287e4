"""The target's OCI image under podman (`edgebuild target image`; `validate.executor = "container"`):
the same root filesystem, site directory, validator and qemu as the qemu-user executor, in an image."""

from pipeline.device import image
from pipeline.device.executors.base import Executor


def executor(target, cache_dir, log=print):
    return Executor("container", lambda args: (image.command(target, cache_dir, args), image.host_env()),
                    lambda: image.describe(target, cache_dir, log))
