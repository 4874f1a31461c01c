"""The training loop: steps, validation, checkpoints, resume, early stopping, NaN handling, time budget.

Exact resume: a checkpoint holds the weights, EMA weights, optimizer and schedule state, the torch RNG state and
the data position (epoch, batch within the epoch). Batches depend only on (seed, epoch), so a resumed run
replays exactly the steps an uninterrupted run would have taken (CPU, same thread count).
Checkpoints are written at every validation (``last.pt``; ``best.pt`` on improvement) and at the end.

Interrupts: SIGINT/SIGTERM during the step loop let the current optimizer step finish, then ``last.pt`` is written
at that step (with the loss window since the last validation, so a resumed run's metrics match an uninterrupted
one) and :class:`TrainingInterrupted` is raised. A second signal in a single process aborts at once (default
handlers). Under torchrun every process checks the flags together after each step (any process signalled: all stop
at the same step), rank 0 writes, all wait for it, and a repeated signal (torchrun forwards its own) is ignored.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, resolve_dtype, save_checkpoint
from ..errors import UsageError
from ..models.ensemble import is_ensemble
from ..models.symmetry import RENAMED_TYPES
from .data import TrainBatches, TrainingData, fit_statistics, load_training_data, plan_loading
from .distributed import all_reduce_sum, broadcast_model, setup_distributed, sync_gradients, wait_for_all
from .ema import EMA
from .loss import bootstrap_weights, label_counts, weighted_loss
from .metrics import evaluate_set
from .recipe import OptimSection, Recipe
from .schedule import LRSchedule, progress_fraction
from .state import LossWindow, TrainState
from .symmetry_gap import symmetrization_gaps
from .symmetry_weights import AutoSymmetryWeights

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "TrainResult", "Validation", "build_optimizer"]

_INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A validation loss this many times its best warns once that the run may be diverging: a finite loss spike can wreck
# a run long before any NaN (the acac transip run at lr 5e-3: 51x its best at step 1,000, NaN 1,100 steps later).
DIVERGENCE_FACTOR = 10.0


class TrainingError(UsageError):
    """Training cannot go on (e.g. the loss stays NaN); the message says what to change."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a whole step; ``checkpoint`` (``last.pt``) holds that step.

    Attributes:
        signum: the signal received (SIGTERM on a process that only saw another process's signal).
        step: the optimizer step the run stopped at.
        checkpoint: the ``last.pt`` to resume from.
        is_main: whether this process wrote it (rank 0 under torchrun; the one to report it).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path, is_main: bool = True):
        self.signum, self.step, self.checkpoint, self.is_main = signum, step, checkpoint, is_main
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; saved {checkpoint}")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: int
    stop_reason: str
    best_metric: float
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    e0s: dict[int, float] = field(default_factory=dict)
    e0s_source: str = ""
    energy_kind: str | None = None
    is_main: bool = True
    """Whether this process is rank 0, the one that reports (every process of a torchrun returns a result)."""

    def to_dict(self) -> dict:
        """What ``result.yaml`` holds."""
        from ase.data import chemical_symbols

        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "stop_reason": self.stop_reason,
            "valid": self.valid,
            "test": self.test,
            "timing": self.timing,
            "e0s": {chemical_symbols[z]: float(e) for z, e in self.e0s.items()},
            "e0s_source": self.e0s_source,
            "energy_kind": self.energy_kind,
        }


@dataclass
class Validation:
    """What one validation found.

    Attributes:
        metric: what decides "best": the validation loss, or without validation data the window's training loss.
        summary: validation error metrics (:meth:`~mlip_cli.train.metrics.ErrorMetrics.summary`; empty without
            validation data).
        improved: whether ``metric`` beat every earlier validation.
    """

    metric: float
    summary: dict[str, float]
    improved: bool


def build_optimizer(parameters, optim: OptimSection, device: torch.device) -> torch.optim.AdamW:
    """The training optimizer: AdamW from the recipe's ``optim`` section, fused (one kernel for all parameters)
    where torch has a fused kernel for the device."""
    return torch.optim.AdamW(
        parameters,
        lr=optim.lr,
        betas=tuple(optim.betas),
        weight_decay=optim.weight_decay,
        fused=torch.device(device).type in ("cpu", "cuda"),
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Runs one recipe in one run directory (see :meth:`run`).

    Args:
        recipe: the resolved recipe.
        run_dir: where checkpoints, metrics and plots go.
        resume: continue from ``run_dir/last.pt``.
        log: ``log(message)`` for one-line status messages (rank 0 only); None: silent.
        progress_factory: ``factory(total, unit) -> context manager yielding update(**fields)``; None: no bar.
    """

    metric_columns = [
        "step",
        "epoch",
        "elapsed_s",
        "lr",
        "train_loss",
        "train_energy_rmse",
        "train_forces_rmse",
        "valid_loss",
        "valid_energy_per_atom_mae",
        "valid_energy_per_atom_rmse",
        "valid_forces_mae",
        "valid_forces_rmse",
        "valid_stress_rmse",
        "structures_per_s",
        "data_s",
        "compute_s",
        "valid_s",
    ]

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        resume: bool = False,
        log: Callable[[str], None] | None = None,
        progress_factory=None,
    ):
        self.recipe, self.run_dir, self.resume = recipe, Path(run_dir), resume
        self.device = _device(recipe.run.device)
        self.info = setup_distributed(self.device)
        self._log = log if self.info.is_main else None
        self.progress_factory = progress_factory if self.info.is_main else None
        self.dtype = resolve_dtype(recipe.run.dtype)
        if recipe.data.batch_size % self.info.world:
            raise UsageError(
                f"data.batch_size {recipe.data.batch_size} must be divisible by the number of "
                f"processes ({self.info.world})"
            )
        self.local_batch = recipe.data.batch_size // self.info.world
        self._signal: int | None = None  # the first SIGINT/SIGTERM received during the step loop
        self._resumed_window: LossWindow | None = None  # the loss window an interrupted run saved
        self._divergence_warned = False  # since the last new best

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    # ----------------------------------------------------------------- setup
    def _setup(self) -> None:
        r = self.recipe
        if r.run.threads:
            torch.set_num_threads(int(r.run.threads))
        if r.run.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(r.run.seed)
        cutoff = float(r.model.get("cutoff", 5.0))
        self.data: TrainingData = load_training_data(
            r.data, cutoff, self.dtype, self.run_dir, progress=self._data_progress()
        )
        self.stats = fit_statistics(
            self.data.train, r.model.get("elements"), r.data, r.loss, isolated_e0s=self.data.isolated_e0s
        )
        self.stats["energy_kind"] = self.data.energy_kind
        self.model = self._build_model()
        self.log(f"E0s: {self.stats['e0s_source']}")
        broadcast_model(self.model, self.info)
        self.model.train()
        o = r.optim
        self.optimizer = build_optimizer(self.model.parameters(), o, self.device)
        self.schedule = LRSchedule(
            o.lr, o.schedule, o.warmup_steps, o.min_lr_ratio, o.plateau_factor, o.plateau_patience
        )
        self.ema = EMA(self.model, o.ema_decay) if o.ema_decay else None
        self.hooks = self.model.training_hooks()
        self.symmetry = self._symmetry_weights()
        if self.symmetry is not None:
            self.metric_columns = self.metric_columns + [
                f"symmetry_{kind}/{t}" for t in self.symmetry.types for kind in ("weight", "violation", "gap", "holds")
            ]
        workers, cached = plan_loading(self.data, r.data, self.stats, self.info.world)
        self.log(f"data: {workers} loader workers, training graphs {'cached' if cached else 'built every epoch'}")
        self.batches = TrainBatches(
            self.data.train, r.data, self.stats, self.local_batch, r.run.seed, self.info.rank, self.info.world, workers
        )
        self.batches_per_epoch = self.batches.batches_per_epoch
        self.total_steps = r.run.max_steps
        if r.run.max_epochs is not None:
            by_epochs = r.run.max_epochs * self.batches_per_epoch
            self.total_steps = by_epochs if self.total_steps is None else min(self.total_steps, by_epochs)
        self.schedule.horizon = {"steps": self.total_steps, "seconds": r.run.time_budget}
        self.state = TrainState()

    def _symmetry_weights(self) -> AutoSymmetryWeights | None:
        """Weights of the regularisers the model's training hooks ask for: tuned (``auto``) or fixed."""
        weight = self.recipe.loss.symmetry
        if not self.hooks.has_regularizers or weight == 0:
            return None
        types = self.hooks.symmetry_types
        if weight == "auto":
            loss = self.recipe.loss
            return AutoSymmetryWeights(types, target=loss.symmetry_target, gap_tolerance=loss.symmetry_tolerance)
        return AutoSymmetryWeights(types, init=float(weight), lr=0.0)

    def _data_progress(self):
        return None if self.progress_factory is None else _counting_progress(self.progress_factory)

    def _build_model(self):
        from ..models import build_model, config_class

        config = dict(self.recipe.model)
        s = self.stats
        if config.get("e0s"):
            s["e0s_source"] = "model.e0s in the recipe"
        config["elements"] = s["elements"]
        # the constants the data sets, where the family has them and the recipe leaves them open
        fitted = {
            "avg_num_neighbors": s["avg_num_neighbors"],
            "e0s": {z: e for z, e in s["e0s"].items()},
            "shift": s["shift"],
            "scale": s["scale"],
            "charge_spin": self._resumed_charge_spin(s.get("charge_spin", False)),
        }
        keys = config_class(config["family"]).allowed_keys()
        for key, value in fitted.items():
            if key in keys:
                config.setdefault(key, value)
        return build_model(config, dtype=self.dtype, device=self.device)

    def _resumed_charge_spin(self, data_has_them: bool) -> bool:
        """Condition on charge and spin where the data has them; a resumed run keeps what its checkpoint was built
        with (a run started before models read charge and spin has none, whatever the data)."""
        last = self.run_dir / "last.pt"
        if not self.resume or not last.exists():
            return data_has_them
        saved = load_checkpoint(last).get("model_config") or {}
        return bool(saved.get("charge_spin", False))

    # ------------------------------------------------------------- checkpoints
    def _payload(self, with_train_state: bool, window: LossWindow | None = None) -> dict:
        payload = {
            "model_config": self.model.config.to_dict(),
            "dtype": self.recipe.run.dtype,
            "model_state": self.model.state_dict(),
            "ema_state": self.ema.module.state_dict() if self.ema else None,
            "statistics": {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.stats.items()},
            "recipe": self.recipe.to_dict(),
            "train_state": None,
        }
        if with_train_state:
            payload["train_state"] = {
                **self.state.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "symmetry": self.symmetry.state_dict() if self.symmetry else None,
                "rng": torch.get_rng_state(),
                "world": self.info.world,
                # only in a checkpoint written on interrupt, between validations
                "window": dataclasses.asdict(window) if window is not None else None,
            }
        return payload

    def _save(self, name: str, window: LossWindow | None = None) -> None:
        if not self.info.is_main:
            return
        for p in self.model.parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingError("refusing to write a checkpoint: the weights contain NaN or inf")
        save_checkpoint(self.run_dir / name, self._payload(with_train_state=True, window=window))

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
        ts = ckpt.get("train_state")
        if not ts:
            raise TrainingError(f"{self.run_dir / 'last.pt'}: has no training state to resume from")
        if ts.get("world", 1) != self.info.world:
            self.log(
                f"note: resuming a {ts.get('world', 1)}-process run with {self.info.world} processes; "
                f"the data order stays, the exact numbers may not"
            )
        try:
            self.state = TrainState.from_dict(ts)
            self.model.load_state_dict(ckpt["model_state"])
            self.optimizer.load_state_dict(ts["optimizer"])
            self.schedule.load_state_dict(ts["schedule"])
            self._continue_schedule(ts["schedule"].get("horizon"))
            if self.ema is not None and ckpt.get("ema_state") is not None:
                self.ema.load_state_dict(ts["ema"], ckpt["ema_state"])
            if self.symmetry is not None and ts.get("symmetry"):
                self.symmetry.load_state_dict(ts["symmetry"])
            if ts.get("window"):
                self._resumed_window = LossWindow(**ts["window"])
        # RuntimeError: weights of another architecture; TypeError: a loss window of another layout
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrainingError(f"{self.run_dir / 'last.pt'}: cannot resume from it ({first})") from None
        torch.set_rng_state(ts["rng"])
        self._truncate_metrics(self.state.step)
        self.log(f"resumed {self.run_dir} at step {self.state.step} (epoch {self.state.epoch})")

    def _continue_schedule(self, saved: dict | None) -> None:
        """A resume with another step or time limit continues the decay from the rate reached (never back up)."""
        new = self.schedule.horizon
        if saved is None or saved == new or self.schedule.kind != "cosine":
            return
        s = self.state
        before = progress_fraction(s.step, s.elapsed, saved["steps"], saved["seconds"])
        after = progress_fraction(s.step, s.elapsed, new["steps"], new["seconds"])
        self.schedule.replan(before, after)
        lr = self.schedule.lr(s.step, after)
        self.log(
            f"note: the run's limit changed on resume; the learning rate continues from {lr:.3g} and decays to "
            f"{self.schedule.base_lr * self.schedule.min_lr_ratio:.3g} at the new end"
        )

    # ----------------------------------------------------------------- metrics
    def _metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _truncate_metrics(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from: those steps are replayed."""
        path = self._metrics_path()
        if not self.info.is_main or not path.exists():
            return
        with open(path, newline="") as f:
            rows = [
                {_current_column(k): v for k, v in row.items()} for row in csv.DictReader(f) if _row_step(row) <= step
            ]
        self._write_rows(rows, mode="w")

    def _write_rows(self, rows: list[dict], mode: str = "a") -> None:
        path = self._metrics_path()
        new = mode == "w" or not path.exists()
        with open(path, mode if not new else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metric_columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _tensorboard(self, row: dict) -> None:
        """Mirror a metrics row to TensorBoard when it is installed (optional; metrics.csv is the record)."""
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is not a dependency
                self._tb = None
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, global_step=row["step"])
            self._tb.flush()

    def _valid_loss(self, summary: dict[str, float]) -> float:
        w = self.recipe.loss
        value = 0.0
        if w.energy > 0 and "energy_per_atom_rmse" in summary:
            value += w.energy * (summary["energy_per_atom_rmse"] / 1000) ** 2
        if w.forces > 0 and "forces_rmse" in summary:
            value += w.forces * (summary["forces_rmse"] / 1000) ** 2
        if w.stress > 0 and "stress_rmse" in summary:
            value += w.stress * (summary["stress_rmse"] / 1000) ** 2
        return value

    def _eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def _validate(self, window: LossWindow) -> Validation:
        """Measure, judge, record (metrics row, TensorBoard, log line) and checkpoint, in that order."""
        summary = self._measure()
        metric = self._valid_loss(summary) if summary else window.loss
        result = Validation(metric, summary, self._judge(metric))
        self._record(window, result)
        self._warn_if_diverging(result)
        self._checkpoint(result.improved)
        return result

    def _measure(self) -> dict[str, float]:
        """Validation error metrics of the evaluated weights (and the symmetrisation gaps, for tuned weights)."""
        start = time.perf_counter()
        summary: dict[str, float] = {}
        if self.data.valid is not None:
            vbs = self.recipe.data.valid_batch_size or 2 * self.recipe.data.batch_size
            metrics = evaluate_set(
                self._eval_model(),
                self.data.valid,
                vbs,
                self.device,
                self.info,
                compute_stress=self.recipe.loss.stress > 0,
            )
            summary = metrics.summary()
            if self.symmetry is not None and self.symmetry.lr > 0:
                self.symmetry.update_gaps(
                    symmetrization_gaps(
                        self._eval_model(),
                        self.data.valid,
                        vbs,
                        self.device,
                        self.symmetry.types,
                        self.info,
                        seed=self.state.step,
                    )
                )
        self.state.valid_s += time.perf_counter() - start
        return summary

    def _judge(self, metric: float) -> bool:
        """Whether ``metric`` is a new best; updates the early-stopping count and the plateau schedule."""
        s = self.state
        improved = metric < s.best
        if improved:
            s.best, s.bad_validations = metric, 0
        else:
            s.bad_validations += 1
        self.schedule.observe(metric)
        return improved

    def _record(self, window: LossWindow, result: Validation) -> None:
        """One metrics row (metrics.csv and TensorBoard) and one log line."""
        s, summary = self.state, result.summary
        blank = ""  # a column without a value in this row
        row = {
            "step": s.step,
            "epoch": s.epoch,
            "elapsed_s": round(s.elapsed, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": window.loss,
            "train_energy_rmse": blank if window.energy_rmse is None else window.energy_rmse,
            "train_forces_rmse": blank if window.forces_rmse is None else window.forces_rmse,
            "valid_loss": result.metric if summary else blank,
            **{f"valid_{k}": v for k, v in summary.items()},
            "structures_per_s": s.structures / s.elapsed if s.elapsed > 0 else blank,
            "data_s": round(s.data_s, 3),
            "compute_s": round(s.compute_s, 3),
            "valid_s": round(s.valid_s, 3),
        }
        if self.symmetry is not None:
            row.update(self.symmetry.log())
        if self.info.is_main:
            self._write_rows([row])
            self._tensorboard(row)
        msg = f"step {s.step:>6}  loss {window.loss:.4g}"
        if summary:
            msg += (
                f"  valid E {summary.get('energy_per_atom_rmse', float('nan')):.2f} meV/atom"
                f"  F {summary.get('forces_rmse', float('nan')):.1f} meV/A"
            )
        self.log(msg + ("  *" if result.improved else ""))

    def _warn_if_diverging(self, result: Validation) -> None:
        """One warning when the validation loss first climbs ``DIVERGENCE_FACTOR`` above its best; again only after
        a new best."""
        s = self.state
        if result.improved:
            self._divergence_warned = False
        elif result.metric > DIVERGENCE_FACTOR * s.best and not self._divergence_warned:
            self._divergence_warned = True
            self.log(
                f"warning: step {s.step}: validation loss {result.metric:.3g} is {result.metric / s.best:.0f}x its "
                f"best ({s.best:.3g}); the run may be diverging (best.pt keeps the best weights). If it does not "
                "recover, lower optim.lr"
            )

    def _checkpoint(self, improved: bool) -> None:
        """``last.pt`` at every validation, ``best.pt`` when it improved (main process only)."""
        self._save("last.pt")
        if improved:
            self._save("best.pt")

    # -------------------------------------------------------------- interrupts
    @contextlib.contextmanager
    def _interrupt_handlers(self):
        """Catch SIGINT/SIGTERM while the loop runs (main thread only); the previous handlers come back after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in _INTERRUPT_SIGNALS}

        def handler(signum, frame) -> None:
            if self._signal is None:
                self._signal = signum
            if not self.info.active:  # a second signal aborts at once; torchrun re-sends its own, so not there
                for sig in _INTERRUPT_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)

        for sig in _INTERRUPT_SIGNALS:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _interrupt_requested(self) -> bool:
        """Whether any process got a signal; the same answer on every process (checked after whole steps)."""
        flag = torch.tensor([float(self._signal is not None)], dtype=torch.float64)
        return bool(all_reduce_sum(flag, self.info)[0] > 0)

    def _interrupt(self, window: LossWindow, validated: bool) -> None:
        """Write ``last.pt`` at the current step (unless this step's validation just did) and raise."""
        if not validated:
            self._save("last.pt", window=window)
        if self.info.active:
            torch.distributed.barrier()  # nobody exits (and makes torchrun kill rank 0) before the file is there
        raise TrainingInterrupted(
            self._signal or signal.SIGTERM, self.state.step, self.run_dir / "last.pt", is_main=self.info.is_main
        )

    # -------------------------------------------------------------------- loop
    def _step(self, batch, window: LossWindow) -> bool:
        """One optimizer step; returns False when it was skipped because the loss was not finite."""
        s = self.state
        lr = self.schedule.lr(
            s.step, progress_fraction(s.step, s.elapsed, self.total_steps, self.recipe.run.time_budget)
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        w = self.recipe.loss
        counts = all_reduce_sum(label_counts(batch, self.recipe.loss.forces_on), self.info)
        out = self.model(batch, compute_forces=w.forces > 0, compute_stress=w.stress > 0, create_graph=True)
        loss, sse = self._data_loss(batch, out, counts)
        violations = None
        if self.symmetry is not None:
            regs = self.hooks.regularizers(batch, out)  # an ensemble's add up over its members
            # each process's share of the mean over processes, like the data loss
            loss = loss + self.symmetry.weighted_sum(regs) / self.info.world
            violations = torch.stack([regs[t].detach().double() for t in self.symmetry.types]) / self.info.world
            violations = violations / self.num_members  # the mean member's violation steers the weights
        finite = torch.tensor([float(torch.isfinite(loss)), 1.0], dtype=torch.float64)
        all_reduce_sum(finite, self.info)
        self.optimizer.zero_grad(set_to_none=True)
        ok = finite[0] == finite[1]
        if ok:
            loss.backward()
            sync_gradients(self.model, self.info)
            clip = self.recipe.optim.clip_norm
            # each member clips its own gradient, as it would alone
            norms = [torch.nn.utils.clip_grad_norm_(m.parameters(), clip if clip else math.inf) for m in self.members]
            ok = all(bool(torch.isfinite(n)) for n in norms)  # identical on every process after the sum
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if violations is not None:
            all_reduce_sum(violations, self.info)
            self.symmetry.update(dict(zip(self.symmetry.types, violations.tolist())))
        # per-process loss shares add up to the global loss; squared-error sums add up; counts are global
        loss = loss / self.num_members  # what is logged: the mean member's
        shares = torch.tensor(
            [float(loss.detach()), float(sse.get("energy", 0.0)), float(sse.get("forces", 0.0))], dtype=torch.float64
        )
        all_reduce_sum(shares, self.info)
        window.add(
            loss=float(shares[0]),
            energy_sse=float(shares[1]),
            energy_count=float(counts[0]),
            forces_sse=float(shares[2]),
            forces_count=float(counts[1]),
        )
        return True

    @property
    def members(self) -> list[torch.nn.Module]:
        """The separately trained models: an ensemble's members, else the model itself."""
        return list(self.model.members) if is_ensemble(self.model) else [self.model]

    @property
    def num_members(self) -> int:
        return len(self.members)

    def _data_loss(self, batch, out: dict, counts: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The data loss summed over ensemble members (each member's gradient is its own loss's, as if trained
        alone; bootstrap weights per member with ``data.bootstrap``) and the mean member's squared-error sums."""
        outputs = out.get("member_outputs", [out])
        bootstrap = self.recipe.data.bootstrap
        loss, sse = None, {}
        for k, member_out in enumerate(outputs):
            weights = bootstrap_weights(batch.index, k, self.recipe.run.seed) if bootstrap else None
            member_loss, member_sse = weighted_loss(batch, member_out, self.recipe.loss, counts, weights)
            loss = member_loss if loss is None else loss + member_loss
            for key, value in member_sse.items():
                sse[key] = sse.get(key, 0.0) + value / len(outputs)
        return loss, sse

    def _should_stop(self) -> str | None:
        r, s = self.recipe.run, self.state
        if self.total_steps is not None and s.step >= self.total_steps:
            return "max_epochs" if r.max_steps is None or s.step < r.max_steps else "max_steps"
        if r.time_budget is not None:
            over = torch.tensor([float(s.elapsed >= r.time_budget)], dtype=torch.float64)
            if self.info.active:  # rank 0's clock decides for everyone
                torch.distributed.broadcast(over, src=0)
            if over[0] > 0:
                return "time_budget"
        if r.early_stopping is not None and s.bad_validations >= r.early_stopping:
            return "early_stopping"
        return None

    def run(self) -> TrainResult:
        """Train until a limit is hit; returns what happened. Writes everything into ``run_dir``."""
        self._setup()
        if self.resume:
            self._restore()
        elif self.info.is_main:
            self._metrics_path().unlink(missing_ok=True)  # a fresh run starts a fresh log
        r = self.recipe
        members = f"ensemble of {self.num_members} " if self.num_members > 1 else ""
        bootstrap = " (bootstrap)" if r.data.bootstrap else ""
        self.log(
            f"model {members}{r.model['family']}{bootstrap}: {sum(p.numel() for p in self.model.parameters()):,} "
            "parameters, "
            f"{len(self.data.train)} train / {len(self.data.valid) if self.data.valid else 0} valid "
            f"structures, batch {r.data.batch_size}, {self.dtype}, {self.device}"
            + (f", {self.info.world} processes" if self.info.active else "")
        )
        s = self.state  # the restored state on resume: take it after _restore
        window = self._resumed_window or LossWindow()
        self._step_times: list[float] = []
        stop = self._should_stop()
        # a checkpoint with a loss window was written on interrupt, between validations
        last_validated = s.step if self.resume and self._resumed_window is None else -1
        total = self.total_steps if self.total_steps else r.run.time_budget
        bar = self.progress_factory(total, "steps" if self.total_steps else "s") if self.progress_factory else None
        with self._interrupt_handlers(), bar if bar is not None else contextlib.nullcontext() as update:
            while stop is None:
                for k, batch, data_time in self.batches.epoch(s.epoch, skip=s.batch_in_epoch):
                    start = time.perf_counter()
                    batch = batch.to(self.device)
                    if r.run.augment_rotations:
                        from ..models.soft_equivariance import random_rotate_batch

                        batch = random_rotate_batch(batch)  # global RNG: replayed exactly on resume
                    ok = self._step(batch, window)
                    compute_time = time.perf_counter() - start
                    s.data_s += data_time
                    s.compute_s += compute_time
                    self._step_times.append(data_time + compute_time)
                    s.elapsed += data_time + compute_time
                    s.batch_in_epoch = k + 1
                    if not ok:
                        s.nan_streak += 1
                        self.log(
                            f"warning: step {s.step + 1}: the loss or its gradient is NaN/inf; "
                            f"step skipped ({s.nan_streak} in a row)"
                        )
                        if s.nan_streak >= r.run.max_nan_steps:
                            raise TrainingError(
                                f"{s.nan_streak} steps in a row had a NaN/inf loss; stopping without writing "
                                f"a NaN checkpoint. Lower optim.lr, check the data with `mlip data validate`, "
                                f"or use run.dtype=float64"
                            )
                        continue
                    s.nan_streak = 0
                    s.step += 1
                    s.structures += int(batch.num_graphs) * self.info.world
                    if s.step % r.run.valid_every == 0:
                        result = self._validate(window)
                        window = LossWindow()
                        last_validated = s.step
                        if update is not None:
                            update(
                                completed=s.step if self.total_steps else s.elapsed,
                                valid=result.summary.get("forces_rmse"),
                            )
                    elif update is not None and s.step % r.run.log_every == 0:
                        update(
                            completed=s.step if self.total_steps else s.elapsed,
                            loss=window.loss,
                            rate=s.structures / max(s.elapsed, 1e-9),
                        )
                    if self._interrupt_requested():
                        self._interrupt(window, validated=last_validated == s.step)
                    stop = self._should_stop()
                    if stop is not None:
                        break
                else:
                    s.epoch += 1
                    s.batch_in_epoch = 0
                    stop = self._should_stop()
            if last_validated != s.step:
                self._validate(window)
            if update is not None:
                update(completed=s.step if self.total_steps else s.elapsed)
            if self._interrupt_requested():  # during the final validation: last.pt is already this step's
                self._interrupt(window, validated=True)
        return self._finish(stop)

    def _finish(self, stop: str) -> TrainResult:
        s = self.state
        result = TrainResult(run_dir=self.run_dir, steps=s.step, epochs=s.epoch, stop_reason=stop, best_metric=s.best)
        result.is_main = self.info.is_main
        result.e0s = dict(self.model.config.e0s)
        result.e0s_source = self.stats.get("e0s_source", "")
        result.energy_kind = self.stats.get("energy_kind")
        result.timing = {
            "train_s": s.elapsed,
            "data_s": s.data_s,
            "compute_s": s.compute_s,
            "valid_s": s.valid_s,
            "structures_per_s": s.structures / s.elapsed if s.elapsed else 0.0,
            "step_ms": 1000 * s.compute_s / max(s.step, 1),
            # median over this process's steps after the first 10 (warm-up), data + compute
            "median_step_ms": 1000 * float(np.median(self._step_times[10:] or self._step_times or [0])),
        }
        wait_for_all(self.info)  # rank 0 writes best.pt; the others read it only once it is complete
        best = self.run_dir / "best.pt"
        if best.exists():
            ckpt = load_checkpoint(best, map_location=self.device)
            model = self._eval_model()
            model.load_state_dict(ckpt["ema_state"] if ckpt.get("ema_state") is not None else ckpt["model_state"])
        vbs = self.recipe.data.valid_batch_size or 2 * self.recipe.data.batch_size
        if self.data.valid is not None:
            result.valid = evaluate_set(self._eval_model(), self.data.valid, vbs, self.device, self.info).summary()
        if self.data.test is not None:
            result.test = evaluate_set(self._eval_model(), self.data.test, vbs, self.device, self.info).summary()
        return result


def _current_column(name: str) -> str:
    """A metrics column under today's name: symmetry columns of runs logged before a type was renamed."""
    prefix, _, kind = name.rpartition("/")
    return f"{prefix}/{RENAMED_TYPES[kind]}" if prefix and kind in RENAMED_TYPES else name


def _row_step(row: dict) -> float:
    """The step of a metrics row; a row cut short by a kill counts as after every checkpoint."""
    try:
        return int(row["step"]) if row.get("valid_s") not in (None, "") else math.inf
    except (TypeError, ValueError):
        return math.inf


def _counting_progress(factory):
    """Adapt the trainer's progress factory to the ``progress(desc, total)`` shape data generation uses."""

    @contextlib.contextmanager
    def progress(description: str, total: int):
        with factory(total, description) as update:
            yield lambda k: update(completed=k)

    return progress
