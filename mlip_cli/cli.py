"""The ``mlip`` command line. Thin: parse options, call library functions, render with rich.

Heavy modules (torch, ase, lmdb) are imported inside command bodies so ``mlip --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from ._version import __version__
from .errors import USER_ERROR_EXIT, user_error_types


def _flags_as_flags() -> None:
    """Help shows an on/off option as the flag it is (``--overwrite``), not as taking a ``<bool>`` value, which is
    how typer's rich help labels every boolean option."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_as_flags()


class _FriendlyErrors(TyperGroup):
    """Turns user errors into one line on stderr and exit code 2 (a traceback only with ``--debug``)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except user_error_types() as err:
            if (ctx.obj or {}).get("debug"):
                raise
            typer.echo(f"mlip: error: {err}", err=True)
            sys.exit(USER_ERROR_EXIT)


app = typer.Typer(
    cls=_FriendlyErrors,
    help="Machine-learning interatomic potentials: data, training, evaluation, relaxation and MD.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    ctx.obj = {"debug": debug}


def _register() -> None:
    from .commands import bench, data

    app.add_typer(data.app, name="data")
    app.add_typer(bench.app, name="bench")
    from .commands import evaluate, train

    app.command("train")(train.train)
    app.command("eval")(evaluate.evaluate)
    from .commands import md, predict, relax

    app.command("predict")(predict.predict)
    app.command("relax")(relax.relax)
    app.command("md")(md.md)
    from .commands import export

    app.command("export")(export.export)
    from .commands import lammps

    app.command("lammps")(lammps.lammps)
    from .commands import select

    app.command("select")(select.select)


_register()


def main() -> None:
    app()
