"""Reproducible train/valid/test splits, optionally keeping all frames of one system together."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from .errors import DataError


def parse_fractions(text: str) -> list[float]:
    """``"0.8,0.1,0.1"`` -> [0.8, 0.1, 0.1]; must be positive and sum to 1 (within 1e-6)."""
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"fractions must be comma-separated numbers, got {text!r}") from None
    if not fractions or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {text!r}")
    return fractions


def split_indices(
    n: int, fractions: Sequence[float], seed: int, groups: Sequence[Hashable] | None = None
) -> list[np.ndarray]:
    """Split ``range(n)`` into ``len(fractions)`` sorted index arrays.

    With ``groups`` (one key per record, e.g. ``sid``) whole groups are assigned, in a seeded random order,
    to the split that is furthest below its target size, so every group lands in exactly one split and the
    sizes stay close to the fractions. The result depends only on ``n``, ``fractions``, ``seed``, ``groups``.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        bounds = np.round(np.cumsum(fractions) * n).astype(int)
        bounds[-1] = n
        return [np.sort(part) for part in np.split(order, bounds[:-1])]
    if len(groups) != n:
        raise ValueError(f"got {len(groups)} group keys for {n} records")
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    keys = list(members)
    targets = np.asarray(fractions) * n
    sizes = np.zeros(len(fractions))
    parts: list[list[int]] = [[] for _ in fractions]
    for g in rng.permutation(len(keys)):
        idx = members[keys[g]]
        k = int(np.argmax(targets - sizes))  # the split most in need of records
        parts[k].extend(idx)
        sizes[k] += len(idx)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def write_splits(
    reader,
    targets: Sequence[Path],
    indices: Sequence[np.ndarray],
    index_file: Path,
    index: dict,
    fmt: str | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] | None = None,
) -> None:
    """Write each ``reader[indices[k]]`` to ``targets[k]`` and ``index`` as JSON to ``index_file``, all or nothing.

    Every output goes to a hidden temporary sibling first; they are renamed into place only once every split and
    the index were written, and on any failure all temporaries are removed, leaving the folder as it was.
    ``progress(label, total)`` may return a context manager yielding a ``update(k)`` callback.
    """
    from .io import check_output, commit_staged, discard_staged, stage_dataset

    for target in targets:
        check_output(target, fmt, overwrite)
    if index_file.exists() and not overwrite:
        raise DataError(index_file, "output already exists (pass --overwrite to replace it)")
    staged: list[tuple[Path, Path]] = []
    try:
        for target, idx in zip(targets, indices, strict=True):
            with progress(target.name, len(idx)) if progress else contextlib.nullcontext(None) as update:
                tmp, _ = stage_dataset(target, (reader[int(i)] for i in idx), fmt, progress=update)
            staged.append((tmp, target))
        tmp = index_file.with_name(f".{index_file.name}.tmp-{uuid.uuid4().hex[:8]}")
        staged.append((tmp, index_file))
        try:
            tmp.write_text(json.dumps(index))
        except OSError as err:
            raise DataError(index_file, f"cannot write: {err.strerror or err}") from None
    except BaseException:
        discard_staged(t for t, _ in staged)
        raise
    commit_staged(staged)
