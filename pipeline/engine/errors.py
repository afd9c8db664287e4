"""Errors with the exit codes the CLI documents: 3 bad config or data, 4 stage failed (1, a failed
gate, is a verdict, not an error; 2 is click's usage error)."""

EXIT_INPUT = 3
EXIT_STAGE = 4


class EdgebuildError(Exception):
    """An error meant for the user: one or two lines, no traceback."""

    exit_code = EXIT_STAGE


class InputError(EdgebuildError):
    """Bad config, data, model file or baseline: the user can fix it."""

    exit_code = EXIT_INPUT


class StageError(EdgebuildError):
    """A stage failed for a reason that is not the user's input."""

    exit_code = EXIT_STAGE


class ModelRefused(InputError):
    """A runtime refused to load, allocate or run the model; `reason` is the runtime's own, one line."""

    def __init__(self, runtime, reason, fix="", crashed=False):
        self.runtime, self.reason, self.crashed = runtime, reason, crashed  # crashed: died running it
        super().__init__(f"{runtime}{': ' if crashed else ' refuses the model: '}{reason}" + (f" {fix}" if fix else ""))


class WriteError(OSError):
    """A write edgebuild attempted failed (a full disk, a read-only file system, a refused permission); its
    filename is the file being written, not a temporary beside it (pipeline.engine.fsutil raises it)."""


def disk_full(exc):
    """An InputError for a write that failed because the disk (or quota) is full, else None."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return InputError(f"a build needs free disk space; the disk is full{where}. Free space, or point "
                          "build.out_dir (and $EDGEBUILD_CACHE) at a disk with room; nothing half-written was published.")
    return None


def unwritable(exc):
    """An InputError for a write that was refused (a read-only file system, or a permission on a file
    edgebuild writes: fsutil.WriteError), else None. A refused read stays what it is."""
    import errno

    if isinstance(exc, OSError) and (exc.errno == errno.EROFS or isinstance(exc, WriteError)):
        where = exc.filename or "a file"
        return InputError(f"edgebuild writes its results beside the build; the system refused to write {where} "
                          f"({exc.strerror}). Make that directory writable, or copy the build to a writable place.")
    return None
