"""Errors with the exit codes the CLI documents: 1 gate failed, 3 bad config or data, 4 stage failed."""

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
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


class GateFailed(EdgebuildError):
    """The accuracy gate found at least one failing check."""

    exit_code = EXIT_GATE
