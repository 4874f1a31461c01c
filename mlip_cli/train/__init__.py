"""Training: recipes, the training loop, checkpoints with exact resume, metrics and plots.

from mlip_cli.train import load_recipe, run_training
result = run_training(load_recipe("tdn-tiny"), "runs/tdn-tiny")
"""

from .metrics import evaluate_set
from .recipe import Recipe, RecipeError, RecipeSettings, load_recipe
from .run import RunPlan, plan_run, run_training
from .trainer import Trainer, TrainingError, TrainResult

__all__ = [
    "Recipe",
    "RecipeError",
    "RecipeSettings",
    "RunPlan",
    "Trainer",
    "TrainResult",
    "TrainingError",
    "evaluate_set",
    "load_recipe",
    "plan_run",
    "run_training",
]
