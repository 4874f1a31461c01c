"""Run directories: which recipe and directory a ``mlip train`` call means (a new run or one to continue), and
training a recipe into one."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageError
from .distributed import shutdown_distributed, wait_for_all
from .recipe import Recipe, RecipeSettings, load_recipe
from .trainer import Trainer, TrainResult

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

__all__ = ["RESUMABLE_KEYS", "LOCK_NAME", "RunPlan", "lock_run_dir", "plan_run", "run_training"]

RESUMABLE_KEYS = (
    "run.time_budget",
    "run.max_steps",
    "run.max_epochs",
    "run.valid_every",
    "run.log_every",
    "run.early_stopping",
    "run.device",
    "run.threads",
    "data.num_workers",
    "data.test",
)
"""Recipe keys a ``--resume`` may change from the run's ``recipe.yaml``: how long to go on, how often to
validate and log, when to stop early, where to run it and which test set scores it at the end. Anything else
(the model, the training data and split, the loss, the optimizer, dtype, seed, ...) defines the run and must
stay as it was."""

LOCK_NAME = "run.lock"
"""The file inside a run directory that a training run holds an OS lock on (``flock``) for as long as it runs."""


@dataclass
class RunPlan:
    """A resolved training call.

    Attributes:
        recipe: the recipe to train (the run's own ``recipe.yaml`` when resuming).
        run_dir: where everything goes.
        resume: continue from ``run_dir/last.pt``.
        notes: things the caller may want to tell the user (e.g. an ignored argument).
    """

    recipe: Recipe
    run_dir: Path
    resume: bool
    notes: list[str] = field(default_factory=list)


def plan_run(
    recipe: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    settings: RecipeSettings | None = None,
) -> RunPlan:
    """The recipe and run directory for a new run (``recipe``, into ``out`` or ``runs/<recipe name>``) or for
    continuing one (``resume``: a run directory, trained with its own ``recipe.yaml``).

    ``overrides`` (``section.key=value``, parsed as YAML) and typed ``settings`` apply either way.

    Raises:
        UsageError: no recipe, a ``resume`` directory that is not a run, ``out`` beside ``resume``, an ``out``
            that already holds a run, a run directory another training run is using, or a resume that changes
            a recipe key other than :data:`RESUMABLE_KEYS`.
    """
    overrides = list(overrides or [])
    if resume is not None:
        resume = Path(resume)
        if not (resume / "last.pt").is_file() or not (resume / "recipe.yaml").is_file():
            raise UsageError(f"{resume}: not a run directory to resume (needs last.pt and recipe.yaml)")
        if out is not None and Path(out).resolve() != resume.resolve():
            raise UsageError("--resume continues in its own directory; drop --out")
        _check_unlocked(resume)
        notes = (
            [] if recipe is None else [f"note: --resume uses {resume / 'recipe.yaml'}; the recipe argument is ignored"]
        )
        resumed = load_recipe(resume / "recipe.yaml", overrides, settings=settings)
        _check_resumable(load_recipe(resume / "recipe.yaml"), resumed)
        return RunPlan(resumed, resume, True, notes)
    if recipe is None:
        raise UsageError("give a recipe (e.g. `mlip train tdn-tiny`) or --resume RUN_DIR")
    rec = load_recipe(recipe, overrides, settings=settings)
    run_dir = Path(out) if out is not None else Path("runs") / rec.name
    _check_unlocked(run_dir)
    if (run_dir / "last.pt").exists():
        raise UsageError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} or choose another --out")
    return RunPlan(rec, run_dir, False)


def run_training(recipe: Recipe, run_dir, resume: bool = False, log=None, progress_factory=None) -> TrainResult:
    """Train ``recipe`` into ``run_dir`` (see :class:`~mlip_cli.train.trainer.Trainer`); writes the resolved
    recipe (``recipe.yaml``), the learning curve and what came out (``result.yaml``) beside the checkpoints."""
    from .plots import plot_learning_curve

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = None
    try:
        trainer = Trainer(recipe, run_dir, resume=resume, log=log, progress_factory=progress_factory)
        # only rank 0 writes into the run directory, so only rank 0 holds it
        with lock_run_dir(run_dir) if trainer.info.is_main else contextlib.nullcontext():
            if trainer.info.is_main and not resume:
                (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            result = trainer.run()
            if trainer.info.is_main:
                plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
                (run_dir / "result.yaml").write_text(yaml.safe_dump(result.to_dict(), sort_keys=False))
        wait_for_all(trainer.info)  # every process leaves together
    except Exception:
        # a run that failed before its first checkpoint leaves nothing behind (the same --out works again)
        if created and not (run_dir / "last.pt").exists() and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        # a gloo group left to the interpreter's exit can abort the process ("terminate called without an active
        # exception") while its threads are torn down: destroy it here
        if trainer is not None:
            shutdown_distributed(trainer.info)
    return result


def _busy(run_dir: Path) -> UsageError:
    return UsageError(
        f"{run_dir}: another mlip train is running in this directory; wait for it or choose another --out"
    )


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path):
    """Hold ``run_dir/run.lock`` (an exclusive ``flock``) for the block: the OS drops it when the process ends,
    however it ends, so a killed run never leaves a stale lock.

    Raises:
        UsageError: another process holds it (nothing in ``run_dir`` is changed).
    """
    run_dir = Path(run_dir)
    if fcntl is None:
        yield
        return
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_unlocked(run_dir: Path) -> None:
    """Refuse early (before reading or writing anything) when a run holds ``run_dir``; creates nothing."""
    path = run_dir / LOCK_NAME
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir) from None
    finally:
        os.close(fd)


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and prefix == "" and key != "model":
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, dict) and key == "model":
            out.update({f"model.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


_UNSET = object()


def _check_resumable(stored: Recipe, resumed: Recipe) -> None:
    """Refuse a resume whose recipe differs from the run's own in a key outside :data:`RESUMABLE_KEYS`."""
    before, after = _flatten(stored.to_dict()), _flatten(resumed.to_dict())
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key, _UNSET), after.get(key, _UNSET)
        if key in RESUMABLE_KEYS or old == new:
            continue
        shown = ["unset" if v is _UNSET else v for v in (old, new)]
        raise UsageError(
            f"--resume: {key} differs from the run's recipe ({shown[0]} -> {shown[1]}); "
            f"only {', '.join(RESUMABLE_KEYS)} may change"
        )
