"""Checkpoints: one ``.pt`` file per snapshot, written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and builtins (never pickled classes), so loading one never runs code:

    schema          int, CHECKPOINT_SCHEMA (older ones are migrated on load, see below)
    kind            "mlip-checkpoint"
    mlip_version    package version that wrote it
    model_config    ModelConfig.to_dict() (the family's fields, resolved: elements, E0s, scale/shift, ...)
    dtype           "float32" | "float64" (the training dtype)
    model_state     state_dict of the raw (non-EMA) weights
    ema_state       state_dict of the EMA weights, or None
    statistics      data statistics used to set the model constants (plain dict)
    recipe          the resolved training recipe (plain dict), or None
    train_state     TrainState fields (step/epoch/batch position, elapsed time, best metric, ...) and the optimizer,
                    schedule, ema, symmetry (AutoSymmetryWeights) and rng states, world; None in exports
    architecture    the fingerprint of the weights (:func:`architecture_fingerprint`): the family that wrote them
                    and the name and shape of every stored tensor; None in files older than schema 3

Schemas: 1 (until issue 11): ``model_config`` flat with every family's fields; the inversion symmetry type named
``reflection``. 2: one config per family; ``inversion``. 3: ``architecture``, so :func:`load_model` refuses
weights relabelled as another family (``tdn`` and ``gaunt`` have the same parameter shapes).
:func:`load_checkpoint` migrates an older schema step by step (:data:`MIGRATIONS`), so every reader sees the
current layout. A change of layout (a new train-state field,
a renamed key) bumps ``CHECKPOINT_SCHEMA`` and adds the step that fills it in for older files.

:func:`load_model` is what the calculator, ``mlip eval``, ``mlip relax`` and ``mlip md`` use.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import UsageError

__all__ = [
    "CHECKPOINT_SCHEMA",
    "MIGRATIONS",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "migrate_checkpoint",
    "load_model",
    "resolve_dtype",
    "architecture_fingerprint",
]

CHECKPOINT_SCHEMA = 3
_KIND = "mlip-checkpoint"


class CheckpointError(UsageError):
    """A checkpoint file is missing, unreadable, not ours, or from a newer schema."""


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """``"float32"``/``"float64"`` (also ``"fp32"``, ``"double"``...) or a torch dtype -> torch dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise UsageError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
        "single": torch.float32,
        "float64": torch.float64,
        "fp64": torch.float64,
        "double": torch.float64,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise UsageError(f"dtype must be float32 or float64, got {dtype!r}")
    return names[key]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (schema fields are filled in) to ``path`` atomically: temp file, fsync, rename.

    A reader never sees a half-written file: either the old checkpoint or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": CHECKPOINT_SCHEMA, "kind": _KIND, "mlip_version": __version__, **payload}
    if "architecture" not in payload:
        payload["architecture"] = architecture_fingerprint(payload.get("model_config"), payload.get("model_state"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err)  # torch's zip writer turns a failed write into a RuntimeError about positions
        if cause is None:
            raise
        kept = "the previous checkpoint is kept" if path.exists() else "nothing was written"
        raise CheckpointError(f"{path}: cannot write the checkpoint ({cause.strerror or cause}); {kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError (disk full, file-size limit, ...) behind ``err``, following the exception chain."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; :class:`CheckpointError` with the reason otherwise."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: a directory without best.pt or last.pt")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for corrupt or unsafe files)
        text = str(err).strip()
        if "weights only load failed" in text.lower() or "weights_only" in text:
            # torch's advice (retry with weights_only=False) would run the file's code: never repeat it
            raise CheckpointError(
                f"{path}: not a readable mlip checkpoint (it holds code or objects mlip does not load; "
                f"an mlip checkpoint holds only tensors and plain values)"
            ) from None
        first = text.splitlines()[0] if text else type(err).__name__
        raise CheckpointError(f"{path}: not a readable mlip checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("kind") != _KIND:
        raise CheckpointError(f"{path}: not an mlip checkpoint (no kind={_KIND!r} entry)")
    schema = data.get("schema")
    if not isinstance(schema, int) or schema > CHECKPOINT_SCHEMA:
        raise CheckpointError(
            f"{path}: checkpoint schema {schema!r} is newer than this mlip supports ({CHECKPOINT_SCHEMA}); upgrade mlip"
        )
    try:
        data = migrate_checkpoint(data)
    except (KeyError, TypeError, ValueError) as err:  # a file that claims a schema it does not follow
        raise CheckpointError(f"{path}: checkpoint schema {schema} does not read as expected ({err})") from None
    data["path"] = str(path)
    return data


def migrate_checkpoint(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict of any known schema in the current layout (``schema == CHECKPOINT_SCHEMA``), step by step."""
    schema = data["schema"]
    if schema < 1:
        raise ValueError(f"unknown schema {schema}")
    while schema < CHECKPOINT_SCHEMA:
        data = MIGRATIONS[schema](dict(data))
        schema = data["schema"] = schema + 1
    return data


#: The exact even-path CP ranks schema-1 ``tdn`` models were built with when their ``cp_rank`` was null.
_SCHEMA_1_TDN_RANKS = {1: 6, 2: 19, 3: 52, 4: 120, 5: 260, 6: 540}


def _schema_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """One config per model family, ``tdn`` with its rank written out; the symmetry type ``reflection`` (the
    inversion) renamed ``inversion``."""
    from .models.config import migrate_flat_config
    from .models.symmetry import RENAMED_TYPES

    if data.get("model_config") is not None:
        config = migrate_flat_config(data["model_config"])
        if config.get("family", "tdn") == "tdn" and config.get("cp_rank") is None:
            # the stored factors have the rank of that day's default, which later refits lowered
            rank = _SCHEMA_1_TDN_RANKS.get(config.get("lmax", 2))
            config = {**config, "cp_rank": rank}
        data["model_config"] = config
    train_state = data.get("train_state")
    if train_state and train_state.get("symmetry"):
        data["train_state"] = {**train_state, "symmetry": _renamed_types(train_state["symmetry"], RENAMED_TYPES)}
    return data


def _renamed_types(state: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """An AutoSymmetryWeights state with the type names in ``renamed`` replaced: the ``types`` list and the keys
    of its per-type tables."""
    out = {}
    for key, value in state.items():
        if key == "types":
            value = [renamed.get(t, t) for t in value]
        elif isinstance(value, dict):
            value = {renamed.get(t, t): v for t, v in value.items()}
        out[key] = value
    return out


def _schema_2_to_3(data: dict[str, Any]) -> dict[str, Any]:
    """No architecture fingerprint was written: ``None`` (unknown), which :func:`load_model` does not check."""
    data.setdefault("architecture", None)
    return data


#: schema n -> the function taking a schema-n checkpoint dict to schema n + 1 (the caller sets ``schema``).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _schema_1_to_2, 2: _schema_2_to_3}


def architecture_fingerprint(model_config: Any, state: Any) -> dict[str, Any] | None:
    """``{"family": ..., "tensors": {name: shape}}`` of a model config and its state dict (None without them).

    Written into every checkpoint when it is saved, from the config and weights the code built; a file whose
    ``model_config`` was edited afterwards (another family, other sizes) no longer matches it.
    """
    if not isinstance(model_config, dict) or not isinstance(state, dict):
        return None
    tensors = {str(k): list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    return {"family": str(model_config.get("family", "")), "tensors": tensors}


def _check_architecture(data: dict[str, Any], model: torch.nn.Module) -> None:
    """Refuse (one line) weights whose recorded fingerprint does not match the model built from the config."""
    stored = data.get("architecture")
    if stored is None:  # schema 1 and 2 files: nothing recorded, the state-dict check alone applies
        return
    where = data["path"]
    if not isinstance(stored, dict) or not isinstance(stored.get("tensors"), dict):
        raise CheckpointError(f"{where}: the architecture entry does not read as expected")
    family = data["model_config"].get("family")
    if stored.get("family") != family:
        raise CheckpointError(
            f"{where}: the weights were written by a {stored.get('family')!r} model, but model_config says "
            f"family {family!r}; a checkpoint's family cannot be changed"
        )
    built = architecture_fingerprint(data["model_config"], model.state_dict())["tensors"]
    for name in sorted(set(built) | set(stored["tensors"])):
        if built.get(name) != stored["tensors"].get(name):
            raise CheckpointError(
                f"{where}: the weights do not fit model_config: tensor {name!r} was written with shape "
                f"{stored['tensors'].get(name)} but the config builds {built.get(name)}"
            )


@dataclass(frozen=True)
class TrainedOn:
    """What a checkpoint says about its training labels: the ``data.keys`` it read them under (``{}``: the plain
    names) and their energy kind (``total``, ``adsorption``, ``oc22_total``; None: not stated)."""

    keys: dict[str, str]
    energy_kind: str | None


def trained_on(path: str | os.PathLike) -> TrainedOn:
    """:class:`TrainedOn` of a checkpoint (or run directory), so that scoring it on files of the same convention
    needs no options and labels of another kind are noticed."""
    ckpt = load_checkpoint(path)
    recipe, stats = ckpt.get("recipe"), ckpt.get("statistics")
    data = recipe.get("data") if isinstance(recipe, dict) else None
    keys = data.get("keys") if isinstance(data, dict) else None
    kind = stats.get("energy_kind") if isinstance(stats, dict) else None
    return TrainedOn(
        keys={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
        energy_kind=kind if isinstance(kind, str) else None,
    )


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    use_ema: bool = True,
) -> torch.nn.Module:
    """The trained model in a checkpoint (or run directory), in eval mode.

    Args:
        path: a ``.pt`` checkpoint or a run directory (``best.pt`` preferred, else ``last.pt``).
        device: where to put it.
        dtype: ``float32``/``float64`` (default: the dtype it was trained in).
        use_ema: take the EMA weights when the checkpoint has them (what validation scored).
    """
    from .models import build_model

    data = load_checkpoint(path)
    dtype = resolve_dtype(dtype, resolve_dtype(data.get("dtype", "float32")))
    state = data.get("ema_state") if use_ema and data.get("ema_state") is not None else data["model_state"]
    if not isinstance(data.get("model_config"), dict) or not isinstance(state, dict):
        raise CheckpointError(f"{data['path']}: no model_config and weights to build a model from")
    model = build_model(data["model_config"], dtype=dtype, device=device)
    _check_architecture(data, model)
    kept = _keep_rebuilt_constants(model, state)
    try:
        missing, unexpected = model.load_state_dict(kept, strict=False)
    except RuntimeError as err:  # shapes that do not fit (e.g. another rank or family)
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        why = lines[0].rstrip(".") if lines else str(err).strip().splitlines()[0]
        raise CheckpointError(f"{data['path']}: weights do not fit the stored model config ({why})") from None
    missing = [k for k in missing if k not in state]  # dropped constants are not missing
    if missing or unexpected:
        raise CheckpointError(
            f"{data['path']}: weights do not fit the stored model config "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.to(dtype=dtype, device=device)
    return model.eval()


def _keep_rebuilt_constants(model: torch.nn.Module, state: dict) -> dict:
    """Drop stored buffers that equal the freshly built ones (tensor-product factors, CG tables...).

    Such constants follow from the config; a float32 checkpoint stores them rounded, and loading that copy
    into a float64 model would cap its equivariance at float32 precision. Buffers that differ (statistics set
    from data) are loaded as stored.
    """
    fresh = dict(model.named_buffers())
    kept = {}
    for name, value in state.items():
        ref = fresh.get(name)
        if (
            ref is not None
            and ref.shape == value.shape
            and ref.is_floating_point()
            and value.is_floating_point()
            and torch.equal(ref.to(value.dtype).cpu(), value.cpu())
        ):
            continue
        kept[name] = value
    return kept
