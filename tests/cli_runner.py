"""Run the ``mlip`` CLI in-process (typer's CliRunner) from any test directory (tests/ is on sys.path)."""

from typer.testing import CliRunner, Result

from mlip_cli.cli import app

_runner = CliRunner()


def mlip(*args) -> Result:
    """``mlip ARGS...`` with every argument turned into a string; returns typer's Result (exit_code, output)."""
    return _runner.invoke(app, [str(a) for a in args])
