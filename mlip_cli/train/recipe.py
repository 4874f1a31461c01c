"""Training recipes: plain YAML with strict, typed sections, and ``--set section.key=value`` overrides.

A recipe has five sections; every key is optional except ``model.family``::

    model:    a ModelConfig mapping (elements may be left out: they are taken from the training data)
    data:     where the structures come from (paths, a split, or a generator for self-contained recipes)
    loss:     weights of the per-atom energy, force and stress terms
    optim:    AdamW, gradient clipping, EMA, learning-rate schedule
    run:      steps/epochs/time budget, validation cadence, early stopping, seed, dtype, device

Relative data paths in a recipe file are resolved against the file's directory; paths given on the command
line (``--data``, as :class:`RecipeSettings`) against the working directory.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

__all__ = [
    "Recipe",
    "DataSection",
    "LossSection",
    "OptimSection",
    "RunSection",
    "RecipeError",
    "RecipeSettings",
    "load_recipe",
    "parse_duration",
    "apply_overrides",
]


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string (it wants ``1.0e-3``); recipes mean the number."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str):
    """Safe YAML load with exponent floats (``1e-3``) read as numbers."""
    return yaml.load(text, Loader=_RecipeLoader)


class RecipeError(UsageError):
    """A recipe (or an override) is wrong; the message names the key and the allowed values."""


def parse_duration(text: str | int | float | None) -> float | None:
    """``"20m"``, ``"1h30m"``, ``"90s"``, ``"1.5h"``, ``600`` (seconds) -> seconds; None stays None."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", str(text).strip().lower())
        if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", str(text).strip().lower()):
            raise RecipeError(f"time budget {text!r}: expected a duration like 20m, 1h30m, 90s or seconds")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise RecipeError(f"time budget must be positive, got {text!r}")
    return seconds


@dataclass
class DataSection:
    """Where training data comes from.

    Attributes:
        train: path of the training data (any ``mlip data`` format).
        valid, test: explicit validation / test paths; without ``valid``, ``split`` carves it from ``train``.
        split: fractions ``[train, valid]`` or ``[train, valid, test]`` of ``train`` (used when ``valid`` is
            not given), drawn with ``split_seed``.
        generate: make the training data instead of reading it: ``{kind, n, seed, ...}`` as for
            ``mlip data generate`` (self-contained recipes; the data is written into the run directory).
        batch_size: structures per optimizer step (global over all processes).
        valid_batch_size: structures per evaluation batch (default: 2 x batch_size).
        max_train, max_valid: use at most this many structures (first ones after the split).
        max_atoms, max_edges: also close a batch before it would exceed this many atoms / edges (per process;
            for data whose sizes vary, e.g. OC20 slabs). Edges are estimated as atoms x the mean neighbours per
            atom of the training statistics. ``batch_size`` still caps the structures: raise it so that these bind.
        num_workers: processes that read records and build neighbour lists ahead of the step (per training
            process); ``auto``: 0 when the graphs are cached, else half the cores of this process, at most 4.
        cache_graphs: keep neighbour graphs in memory after they are first built (``auto``: when the training and
            validation graphs fit in about 1 GiB; the training set only with 0 workers, ``yes`` implies 0).
        keys: where the labels are stored when not under their plain names, e.g. ``{energy: REF_energy, forces:
            REF_forces}`` (MACE's convention); keys not given keep ``energy``, ``forces``, ``stress``, ``charge``,
            ``spin``.
        e0s: per-element reference energies: ``auto`` (isolated atoms found in the training data, least squares
            for the other elements), ``least_squares``, ``average`` (the mean energy per atom for every element),
            a file of isolated-atom calculations (any ``mlip data`` format), or ``{H: -13.6, C: -1029.5}``.
            Isolated atoms (``config_type=IsolatedAtom`` or a single non-periodic atom) never enter training.
        fixed_tags: atoms whose tag is in this list count as fixed where the data marks none (OC20: ``[0]``, the
            sub-surface slab); fixed atoms leave the force loss unless ``loss.forces_on: all``.
        units: units of HDF5 data that does not declare them, e.g. ``{energy: hartree, length: bohr}`` (as
            ``mlip data --units``; every data file of the run must then be HDF5).
        allow_is2re: train on data whose energies belong to another geometry than the stored positions (OC20
            IS2RE: relaxed energies with initial structures), i.e. a direct IS2RE model; refused otherwise.
        bootstrap: ensembles (``model.ensemble`` > 1): each member sees its own bootstrap resample of the
            training set, drawn as a Poisson(1) weight per member and structure (same weight every epoch).
    """

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    split: list[float] = field(default_factory=lambda: [0.9, 0.1])
    split_seed: int = 0
    generate: dict[str, Any] | None = None
    batch_size: int = 8
    valid_batch_size: int | None = None
    max_train: int | None = None
    max_valid: int | None = None
    max_atoms: int | None = None
    max_edges: int | None = None
    num_workers: Any = "auto"
    cache_graphs: str = "auto"
    keys: dict[str, str] = field(default_factory=dict)
    e0s: Any = "auto"
    fixed_tags: list[int] | None = None
    allow_is2re: bool = False
    units: dict[str, str] | None = None
    bootstrap: bool = False

    def label_keys(self):
        """The :class:`~mlip_datasets.keys.LabelKeys` to open the data with."""
        from mlip_datasets.keys import LabelKeys

        return LabelKeys(**self.keys)


E0_METHODS = ("auto", "least_squares", "average")


@dataclass
class LossSection:
    """Loss = energy * MSE(E/N) + forces * MSE(F components) + stress * MSE(stress components), in eV, A."""

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 0.0
    forces_on: str = "free"
    """``free``: atoms the data marks fixed (OC20 sub-surface slabs) leave the force loss, as fairchem scores
    them; ``all``: every atom counts."""
    symmetry: Any = "auto"
    """TransIP only: weight of the learned-equivariance regularisers, a number or ``auto`` (enforced by dual
    ascent, released where the data breaks the symmetry; see ``AutoSymmetryWeights``)."""
    symmetry_target: float = 1e-3
    """``auto``: the alignment violation each enforced symmetry is held to."""
    symmetry_tolerance: float = 0.05
    """``auto``: symmetrisation gap (share of the labels' variance) above which a symmetry is released."""


@dataclass
class OptimSection:
    """AdamW with a warmup + cosine or plateau schedule, gradient clipping and an EMA of the weights."""

    lr: float = 5e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_norm: float | None = 10.0
    ema_decay: float | None = 0.99
    schedule: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 5


@dataclass
class RunSection:
    """How long to train and how to watch it.

    Attributes:
        max_steps, max_epochs, time_budget: stop at whichever comes first (at least one is required; the
            time budget counts training time, not validation). The cosine schedule runs over the first limit
            known in advance: ``max_steps`` (or ``max_epochs`` x batches), else the time budget.
        valid_every: validate (and write ``last.pt``) every this many steps.
        early_stopping: stop after this many validations without improvement (None: never).
        seed: seeds model initialisation, shuffling and augmentation.
        dtype: ``float32`` or ``float64``.
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: torch CPU threads (None: torch's default).
        max_nan_steps: abort after this many consecutive non-finite losses (each one skips its step).
        deterministic: ask torch for deterministic algorithms (exact resume on CPU holds without it).
        augment_rotations: apply a random rotation to every training batch.
    """

    max_steps: int | None = None
    max_epochs: int | None = None
    time_budget: Any = None
    valid_every: int = 100
    early_stopping: int | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    max_nan_steps: int = 5
    deterministic: bool = False
    augment_rotations: bool = False
    log_every: int = 10


_SECTIONS = {"data": DataSection, "loss": LossSection, "optim": OptimSection, "run": RunSection}


@dataclass
class Recipe:
    """A resolved recipe: ``model`` stays a plain mapping (validated by ``ModelConfig`` when the model is built)."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    name: str = "run"

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None, settings: RecipeSettings | None = None
    ) -> Recipe:
        """Build, resolve relative data paths against ``base_dir``, apply ``settings``, validate.

        Unknown sections or keys raise :class:`RecipeError` listing the allowed ones.
        """
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a mapping of sections, got {type(data).__name__}")
        allowed = ["name", "model", *_SECTIONS]
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise RecipeError(f"recipe: unknown section {unknown[0]!r}; allowed: {', '.join(allowed)}")
        model = data.get("model") or {}
        if not isinstance(model, Mapping):
            raise RecipeError("recipe: 'model' must be a mapping of model config keys")
        sections = {name: _section(kind, data.get(name), name) for name, kind in _SECTIONS.items()}
        recipe = cls(model=dict(model), name=str(data.get("name", "run")), **sections)
        if base_dir is not None:
            recipe.resolve_paths(Path(base_dir))
        if settings is not None:
            settings.apply(recipe)
        recipe.validate()
        return recipe

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": dict(self.model),
            **{k: dataclasses.asdict(getattr(self, k)) for k in _SECTIONS},
        }

    def resolve_paths(self, base: Path) -> None:
        for key in ("train", "valid", "test"):
            value = getattr(self.data, key)
            if value and not Path(value).expanduser().is_absolute():
                setattr(self.data, key, str((base / Path(value).expanduser()).resolve()))
        e0s = self.data.e0s
        if isinstance(e0s, str) and e0s not in E0_METHODS and not Path(e0s).expanduser().is_absolute():
            self.data.e0s = str((base / Path(e0s).expanduser()).resolve())

    def validate(self) -> None:
        from ..models import config_class, registered_families

        if "family" not in self.model:
            raise RecipeError(f"recipe: model.family is required (one of {', '.join(registered_families())})")
        family = str(self.model["family"])
        if family not in registered_families():
            raise RecipeError(
                f"recipe: model.family {family!r} is not a model family; available: {', '.join(registered_families())}"
            )
        allowed = config_class(family).allowed_keys()
        unknown = [k for k in self.model if k not in allowed]
        if unknown:
            raise RecipeError(
                f"recipe: unknown key model.{unknown[0]} for family {family!r}; allowed: {', '.join(allowed)}"
            )
        _check_model(self.model)
        d, o, r, lo = self.data, self.optim, self.run, self.loss
        if d.train is None and d.generate is None:
            raise RecipeError("recipe: no training data; set data.train (or pass --data PATH) or data.generate")
        bad_split = not (2 <= len(d.split) <= 3) or any(f <= 0 for f in d.split) or abs(sum(d.split) - 1) > 1e-6
        if not d.valid and bad_split:
            raise RecipeError(f"recipe: data.split must be 2 or 3 positive fractions summing to 1, got {d.split}")
        _positive(d.batch_size, "data.batch_size", int)
        if d.valid_batch_size is not None:
            _positive(d.valid_batch_size, "data.valid_batch_size", int)
        if d.cache_graphs not in ("auto", "yes", "no", True, False):
            raise RecipeError(f"recipe: data.cache_graphs must be auto, yes or no, got {d.cache_graphs!r}")
        for name in ("max_atoms", "max_edges"):
            if getattr(d, name) is not None:
                _positive(getattr(d, name), f"data.{name}", int)
        if d.num_workers != "auto" and not (
            isinstance(d.num_workers, int) and not isinstance(d.num_workers, bool) and d.num_workers >= 0
        ):
            raise RecipeError(f"recipe: data.num_workers must be auto or an integer >= 0, got {d.num_workers!r}")
        if d.cache_graphs in ("yes", True) and d.num_workers not in ("auto", 0):
            raise RecipeError(
                f"recipe: data.cache_graphs: yes keeps the graphs in the training process and needs "
                f"data.num_workers: 0 (or auto), got {d.num_workers}"
            )
        _check_keys(d.keys)
        _check_e0s(d.e0s)
        _check_units(d.units)
        if d.fixed_tags is not None and (
            not isinstance(d.fixed_tags, list)
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in d.fixed_tags)
        ):
            raise RecipeError(
                f"recipe: data.fixed_tags must be a list of integer tags (OC20: [0]), got {d.fixed_tags!r}"
            )
        if not isinstance(d.bootstrap, bool):
            raise RecipeError(f"recipe: data.bootstrap must be true or false, got {d.bootstrap!r}")
        if d.bootstrap and int(self.model.get("ensemble", 1)) < 2:
            raise RecipeError("recipe: data.bootstrap resamples the data per ensemble member; set model.ensemble >= 2")
        if lo.forces_on not in ("free", "all"):
            raise RecipeError(f"recipe: loss.forces_on must be free or all, got {lo.forces_on!r}")
        _positive(o.lr, "optim.lr", float)
        if o.schedule not in ("cosine", "plateau", "constant"):
            raise RecipeError(f"recipe: optim.schedule must be one of cosine, plateau, constant; got {o.schedule!r}")
        if o.ema_decay is not None and not 0.0 <= o.ema_decay < 1.0:
            raise RecipeError(f"recipe: optim.ema_decay must be in [0, 1) or null, got {o.ema_decay}")
        if o.clip_norm is not None:
            _positive(o.clip_norm, "optim.clip_norm", float)
        if not 0 <= o.min_lr_ratio <= 1:
            raise RecipeError(f"recipe: optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
        if not _is_number(o.weight_decay) or not o.weight_decay >= 0:
            raise RecipeError(f"recipe: optim.weight_decay must be a number >= 0, got {o.weight_decay!r}")
        if not isinstance(o.betas, list) or len(o.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in o.betas):
            raise RecipeError(f"recipe: optim.betas must be two numbers in [0, 1), got {o.betas}")
        for name in ("energy", "forces", "stress"):
            weight = getattr(lo, name)
            if not _is_number(weight) or not weight >= 0:
                raise RecipeError(f"recipe: loss.{name} must be a number >= 0, got {weight!r}")
        if lo.energy == lo.forces == lo.stress == 0:
            raise RecipeError("recipe: loss.energy, loss.forces and loss.stress are all 0: nothing to train on")
        if lo.symmetry != "auto" and not (_is_number(lo.symmetry) and lo.symmetry >= 0):
            raise RecipeError(f"recipe: loss.symmetry must be 'auto' or a number >= 0, got {lo.symmetry!r}")
        _positive(lo.symmetry_target, "loss.symmetry_target", float)
        _positive(lo.symmetry_tolerance, "loss.symmetry_tolerance", float)
        r.time_budget = parse_duration(r.time_budget)
        if r.max_steps is None and r.max_epochs is None and r.time_budget is None:
            raise RecipeError(
                "recipe: set at least one of run.max_steps, run.max_epochs, run.time_budget (or pass --time-budget)"
            )
        for name in ("max_steps", "max_epochs", "early_stopping"):
            if getattr(r, name) is not None:
                _positive(getattr(r, name), f"run.{name}", int)
        _positive(r.valid_every, "run.valid_every", int)
        _positive(r.max_nan_steps, "run.max_nan_steps", int)
        if r.dtype not in ("float32", "float64"):
            raise RecipeError(f"recipe: run.dtype must be float32 or float64, got {r.dtype!r}")
        if r.device not in ("auto", "cpu", "cuda") and not str(r.device).startswith("cuda:"):
            raise RecipeError(f"recipe: run.device must be auto, cpu or cuda, got {r.device!r}")


@dataclass(frozen=True)
class RecipeSettings:
    """Recipe fields set from typed values (the options of ``mlip train``), after the file and its ``--set``
    overrides. Nothing here is parsed as YAML, so a path holding ``" #"`` or ``": "`` is taken as it is.

    Attributes:
        train: ``data.train`` (relative: against the working directory); also drops ``data.generate``.
        valid, test: ``data.valid``, ``data.test`` (likewise).
        time_budget: ``run.time_budget``: a duration such as ``"20m"`` or seconds.
        keys: entries of ``data.keys`` (``--energy-key`` etc.), e.g. ``{"energy": "REF_energy"}``.
        device, dtype, threads: ``run.device``, ``run.dtype``, ``run.threads``.
    """

    train: str | Path | None = None
    valid: str | Path | None = None
    test: str | Path | None = None
    time_budget: str | float | None = None
    keys: Mapping[str, str] | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None

    def apply(self, recipe: Recipe) -> None:
        """Set the fields on ``recipe`` (validated afterwards by :meth:`Recipe.validate`)."""
        if self.train is not None:
            recipe.data.train, recipe.data.generate = str(Path(self.train).expanduser().resolve()), None
        if self.valid is not None:
            recipe.data.valid = str(Path(self.valid).expanduser().resolve())
        if self.test is not None:
            recipe.data.test = str(Path(self.test).expanduser().resolve())
        if self.time_budget is not None:
            recipe.run.time_budget = self.time_budget
        if self.keys:
            recipe.data.keys = {**recipe.data.keys, **self.keys}
        for name in ("device", "dtype", "threads"):
            if getattr(self, name) is not None:
                setattr(recipe.run, name, getattr(self, name))


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any, name: str, kind: type) -> None:
    if not _is_number(value) or (kind is int and int(value) != value) or not value > 0:
        raise RecipeError(f"recipe: {name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")


def _check_keys(keys: Any) -> None:
    from mlip_datasets.record import LABELS

    if not isinstance(keys, Mapping):
        raise RecipeError(f"recipe: data.keys must map labels to key names, e.g. {{energy: REF_energy}}; got {keys!r}")
    for label, name in keys.items():
        if label not in LABELS:
            raise RecipeError(f"recipe: unknown label data.keys.{label}; allowed: {', '.join(LABELS)}")
        if not isinstance(name, str) or not name:
            raise RecipeError(f"recipe: data.keys.{label} must be a key name (a non-empty string), got {name!r}")


def _check_units(units: Any) -> None:
    from mlip_datasets.units import parse_units

    if units is None:
        return
    if not isinstance(units, Mapping) or not units:
        raise RecipeError(f"recipe: data.units must map kinds to units, e.g. {{energy: hartree}}; got {units!r}")
    try:
        parse_units(",".join(f"{kind}={unit}" for kind, unit in units.items()))
    except ValueError as err:
        raise RecipeError(f"recipe: data.units: {err}") from None


def _check_e0s(e0s: Any) -> None:
    if isinstance(e0s, str) and e0s:
        return  # a method name, or a file checked when it is read
    if isinstance(e0s, Mapping) and e0s:
        for element, value in e0s.items():
            if not _is_number(value):
                raise RecipeError(f"recipe: data.e0s.{element} must be a finite number in eV, got {value!r}")
        return
    raise RecipeError(
        f"recipe: data.e0s must be one of {', '.join(E0_METHODS)}, a file of isolated atoms, or a mapping "
        f"{{element: eV}}; got {e0s!r}"
    )


def _check_model(model: Mapping[str, Any]) -> None:
    """The model section's values, checked by the family's config class before any data is read."""
    from ..models.config import ConfigError, ModelConfig

    try:
        ModelConfig.check_recipe_section(model)
    except ConfigError as err:
        raise RecipeError(f"recipe: model: {str(err).removeprefix('model config: ')}") from None


def _section(kind: type, values: Any, name: str):
    if values is None:
        return kind()
    if not isinstance(values, Mapping):
        raise RecipeError(f"recipe: section {name!r} must be a mapping, got {type(values).__name__}")
    allowed = [f.name for f in dataclasses.fields(kind)]
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise RecipeError(f"recipe: unknown key {name}.{unknown[0]}; allowed: {', '.join(allowed)}")
    return kind(**dict(values))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: ``1e-3``, ``[1, 6]``, ``null``) in place."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected section.key=value, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        path = [p for p in key.strip().split(".") if p]
        if len(path) < 2:
            raise RecipeError(f"--set {item!r}: the key needs a section, e.g. model.channels or run.max_steps")
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def load_recipe(
    path: str | Path | None,
    overrides: list[str] | None = None,
    builtin_dir: Path | None = None,
    settings: RecipeSettings | None = None,
) -> Recipe:
    """Read a recipe file (or a shipped recipe by name, e.g. ``tdn-tiny``), apply the ``section.key=value``
    ``overrides`` (values parsed as YAML), then the typed ``settings``, and validate."""
    path = find_recipe(path, builtin_dir)
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    apply_overrides(data, overrides or [])
    try:
        return Recipe.from_dict(data, base_dir=path.parent, settings=settings)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None
    except TypeError as err:  # e.g. a section that is a list
        raise RecipeError(f"{path}: {err}") from None


def builtin_recipes_dir() -> Path:
    """The shipped recipes: ``recipes/`` of a source checkout, or ``mlip_cli/recipes`` in an installed wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "recipes", package / "recipes"):
        if candidate.is_dir():
            return candidate
    return package / "recipes"


def find_recipe(path: str | Path | None, builtin_dir: Path | None = None) -> Path:
    """A recipe path, or the name of a shipped recipe (``tdn-tiny``, ``acac/tdn``)."""
    if path is None:
        raise RecipeError("no recipe given")
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    base = builtin_dir or builtin_recipes_dir()
    for name in (str(path), f"{path}.yaml"):
        if (base / name).is_file():
            return base / name
    shipped = sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))
    raise RecipeError(f"{path}: no such recipe file; shipped recipes: {', '.join(shipped) or 'none'}")
