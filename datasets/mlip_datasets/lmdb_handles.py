"""Read-only LMDB environments shared per (process, file), counted, and never used across ``fork()``.

py-lmdb (3.x) refuses to open a file that is already open in the process ("already open in this process"), yet
one process often needs a file twice: ``sniff`` during ``open_dataset``, train and validation readers of one
store, a pickled copy of a reader. Every LMDB reader of this package therefore gets its environments here:

- :func:`open_readonly` returns this process's environment for a file, opening it on first use, and counts one
  reference; :func:`release` gives one back and the last one closes the environment. :func:`readonly` is the
  ``with`` form for a short look (``sniff``), and :class:`ShardEnvs` is what a reader holds: one environment per
  shard, opened on first use, released on ``close`` or garbage collection, dropped when pickled.
- Files are identified like py-lmdb's own guard does, by ``(st_dev, st_ino)`` (the resolved path where the file
  system reports no inode): a hard link is the same file, a file replaced at the same path is a new one.
- Fork: LMDB's documentation says an environment must not be used in a child after ``fork()``. The first call
  into this module in a child closes every environment the child inherited and forgets the parent's counts;
  :class:`ShardEnvs` notices the new pid too and never touches an inherited handle. Closing in the child is
  safe for these environments and leaves the parent alone: they are opened with ``lock=False`` (no shared lock
  table), so ``mdb_env_close`` in the child only unmaps the child's copy of the map and closes the child's
  copies of the file descriptors (tested in ``tests/datasets/test_lmdb_handles.py``). One case it cannot
  help: a fork while another thread of the parent is inside an LMDB call on the same environment.

Environments open with ``subdir=False, readonly=True, lock=False, readahead=False, meminit=False``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:
    import lmdb

__all__ = ["ShardEnvs", "open_readonly", "readonly", "references", "release"]

_lock = threading.Lock()
_pid = os.getpid()
_entries: dict[tuple, list] = {}  # file identity -> [environment, references]
_keys: dict[int, tuple] = {}  # id(environment) -> file identity, for release()
_pending: list = []  # releases from __del__ that found the lock taken (see ShardEnvs.__del__)


def shard_files(path: str | Path, pattern: str = "*.lmdb") -> list[Path]:
    """The shard files of a data set: ``path`` itself, or the files matching ``pattern`` in a directory, by name."""
    path = Path(path)
    return sorted(p for p in path.glob(pattern) if p.is_file()) if path.is_dir() else [path]


def first_shard(path: str | Path, pattern: str = "*.lmdb") -> Path | None:
    """The first shard of ``path`` if it is a readable file, for content sniffing; else None."""
    files = shard_files(path, pattern)
    return files[0] if files and files[0].is_file() else None


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()  # a fork while another thread held the lock must not deadlock the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


def _identity(path: str | Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        st = None  # lmdb.open will say what is wrong
    if st is not None and st.st_ino:
        return ("ino", st.st_dev, st.st_ino)
    return ("path", os.path.realpath(path))


def _own_process() -> None:
    """With the lock held: in a forked child, close what was inherited (child's copies only) and start afresh."""
    global _pid
    if _pid == os.getpid():
        while _pending:
            _release_locked(_pending.pop())
        return
    inherited = [env for env, _ in _entries.values()]
    _entries.clear()
    _keys.clear()
    _pending.clear()
    _pid = os.getpid()
    for env in inherited:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - an unusable inherited handle is gone either way
            pass


def _release_locked(env) -> None:
    key = _keys.get(id(env))
    entry = _entries.get(key) if key is not None else None
    if entry is None or entry[0] is not env:
        return  # not ours: inherited from a parent process, or already closed
    entry[1] -= 1
    if entry[1] <= 0:
        del _entries[key], _keys[id(env)]
        env.close()


def open_readonly(path: str | Path) -> lmdb.Environment:
    """This process's read-only environment for the LMDB file ``path``; counts one reference.

    Give the reference back with :func:`release`. Raises ``lmdb.Error`` when the file cannot be opened.
    """
    import lmdb  # here, so that importing this module (and the aselmdb format) stays light

    key = _identity(path)
    with _lock:
        _own_process()
        entry = _entries.get(key)
        if entry is None:
            env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
            entry = _entries[key] = [env, 0]
            _keys[id(env)] = key
        entry[1] += 1
        return entry[0]


def release(env: lmdb.Environment) -> None:
    """Give back one reference taken by :func:`open_readonly`; the last one closes ``env``.

    A no-op for an environment this process did not open here (one inherited across ``fork()``) or already closed.
    """
    with _lock:
        _own_process()
        _release_locked(env)


def _release_soon(env) -> None:
    # for finalizers: the garbage collector may run while this very thread holds the lock, so never wait on it
    if _lock.acquire(blocking=False):
        try:
            _own_process()
            _release_locked(env)
        finally:
            _lock.release()
    elif _pid == os.getpid():
        _pending.append(env)  # done by the next call into this module


@contextlib.contextmanager
def readonly(path: str | Path) -> Iterator[lmdb.Environment]:
    """``with readonly(path) as env:`` the shared environment for the duration of the block."""
    env = open_readonly(path)
    try:
        yield env
    finally:
        release(env)


def references(path: str | Path) -> int:
    """How many references this process holds on the environment of ``path`` (0: not open)."""
    with _lock:
        _own_process()
        entry = _entries.get(_identity(path))
        return 0 if entry is None else entry[1]


class ShardEnvs:
    """The environments one reader uses: ``envs[k]`` is shard ``paths[k]``'s, opened on first use.

    After a fork the child's first ``envs[k]`` drops the parent's handles (they count for the parent) and opens its
    own. Pickling keeps only the paths, so a spawned DataLoader worker reopens lazily. ``close()`` releases the
    handles (a later ``envs[k]`` reopens); so does garbage collection.
    """

    def __init__(self, paths: Iterable[str | Path]):
        self.paths = [Path(p) for p in paths]
        self._held: dict[int, lmdb.Environment] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> lmdb.Environment:
        if self._pid != os.getpid():  # forked: the parent's handles must not be used (or released) here
            self._held, self._pid = {}, os.getpid()
        env = self._held.get(k)
        if env is None:
            env = open_readonly(self.paths[k])
            kept = self._held.setdefault(k, env)
            if kept is not env:  # another thread got there first
                release(env)
            env = kept
        return env

    def close(self) -> None:
        held, self._held = self._held, {}
        if self._pid == os.getpid():
            for env in held.values():
                release(env)

    def __del__(self):
        try:
            held, self._held = self._held, {}
            if self._pid == os.getpid():
                for env in held.values():
                    _release_soon(env)
        except Exception:  # noqa: BLE001 - interpreter shutdown: module globals may already be gone
            pass

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_held": {}, "_pid": None}
