"""Run directories: which recipe and directory a ``mlip train`` call means (a new run or one to continue), and
training a recipe into one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageError
from .recipe import Recipe, RecipeSettings, load_recipe
from .trainer import Trainer, TrainResult

__all__ = ["RunPlan", "plan_run", "run_training"]


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
        UsageError: no recipe, a ``resume`` directory that is not a run, ``out`` beside ``resume``, or an ``out``
            that already holds a run.
    """
    overrides = list(overrides or [])
    if resume is not None:
        resume = Path(resume)
        if not (resume / "last.pt").is_file() or not (resume / "recipe.yaml").is_file():
            raise UsageError(f"{resume}: not a run directory to resume (needs last.pt and recipe.yaml)")
        if out is not None and Path(out).resolve() != resume.resolve():
            raise UsageError("--resume continues in its own directory; drop --out")
        notes = (
            [] if recipe is None else [f"note: --resume uses {resume / 'recipe.yaml'}; the recipe argument is ignored"]
        )
        return RunPlan(load_recipe(resume / "recipe.yaml", overrides, settings=settings), resume, True, notes)
    if recipe is None:
        raise UsageError("give a recipe (e.g. `mlip train tdn-tiny`) or --resume RUN_DIR")
    rec = load_recipe(recipe, overrides, settings=settings)
    run_dir = Path(out) if out is not None else Path("runs") / rec.name
    if (run_dir / "last.pt").exists():
        raise UsageError(f"{run_dir}: already holds a run; continue it with --resume {run_dir} or choose another --out")
    return RunPlan(rec, run_dir, False)


def run_training(recipe: Recipe, run_dir, resume: bool = False, log=None, progress_factory=None) -> TrainResult:
    """Train ``recipe`` into ``run_dir`` (see :class:`~mlip_cli.train.trainer.Trainer`); writes the resolved
    recipe (``recipe.yaml``), the learning curve and what came out (``result.yaml``) beside the checkpoints."""
    from .plots import plot_learning_curve

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe, run_dir, resume=resume, log=log, progress_factory=progress_factory)
    if trainer.info.is_main and not resume:
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    result = trainer.run()
    if trainer.info.is_main:
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
        (run_dir / "result.yaml").write_text(yaml.safe_dump(result.to_dict(), sort_keys=False))
    return result
