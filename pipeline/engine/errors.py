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

