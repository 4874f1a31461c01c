"""Training: recipes, the training loop, checkpoints with exact resume, metrics and plots.

    from mlip_cli.train import load_recipe, run_training
    result = run_training(load_recipe("tdn-tiny"), "runs/tdn-tiny")
"""

from .recipe import Recipe, RecipeError, load_recipe
from .trainer import Trainer, TrainingError, TrainResult, evaluate_set

__all__ = ["Recipe", "RecipeError", "Trainer", "TrainResult", "TrainingError", "evaluate_set", "load_recipe",
           "run_training"]


def run_training(recipe: Recipe, run_dir, resume: bool = False, log=None, progress_factory=None) -> TrainResult:
    """Train ``recipe`` into ``run_dir`` (see :class:`Trainer`); writes the resolved recipe and the plots."""
    from pathlib import Path

    import yaml

    from .plots import plot_learning_curve

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe, run_dir, resume=resume, log=log, progress_factory=progress_factory)
    if trainer.info.is_main and not resume:
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    result = trainer.run()
    if trainer.info.is_main:
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    return result
