"""Errors a user can cause from the command line: shown as one line, exit code 2."""


class UsageError(Exception):
    """A bad option value or combination that is not a data-file problem."""


USER_ERROR_EXIT = 2


def require_new_output(path, overwrite: bool, what: str = "output") -> None:
    """Refuse to replace an existing output (a file, or a folder that is not empty) unless ``overwrite``: the one
    rule every command that writes follows (``--overwrite``)."""
    from pathlib import Path

    path = None if path is None else Path(path)
    if path is None or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        raise UsageError(f"{path}: {what} already exists (pass --overwrite to replace it)")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix; imported lazily to keep ``mlip --help`` light."""
    from mlip_datasets.errors import DataError

    return (DataError, UsageError, FileNotFoundError, IsADirectoryError, PermissionError)
