"""Errors a user can cause from the command line: shown as one line, exit code 2."""


class UsageError(Exception):
    """A bad option value or combination that is not a data-file problem."""


USER_ERROR_EXIT = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix; imported lazily to keep ``mlip --help`` light."""
    from mlip_datasets.errors import DataError

    return (DataError, UsageError, FileNotFoundError, IsADirectoryError, PermissionError)
