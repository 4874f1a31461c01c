"""LMDB access for the formats: shared read-only environments, shard listing, and the one writer of new files.

Reading: environments shared per (process, file), counted, and never used across ``fork()``. py-lmdb (3.x)
refuses to open a file that is already open in the process ("already open in this process"), yet one process often
needs a file twice: ``sniff`` during ``open_dataset``, train and validation readers of one store, a pickled copy of
a reader. Every LMDB reader of this package therefore gets its environments here:

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

Writing: :class:`LmdbWriter` writes one new file for the native store, the OC20 LMDB and the aselmdb formats. It
batches puts into write transactions and doubles the map when a transaction does not fit (``lmdb.MapFullError``),
so the first map can stay small. It takes no lock and syncs once at the end: a file being written is seen by
nobody else (``io.write_dataset`` writes to a temporary path and renames it when complete).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lmdb

__all__ = [
    "LmdbWriter",
    "ShardEnvs",
    "first_shard",
    "open_readonly",
    "readonly",
    "references",
    "release",
    "shard_files",
    "sniff_first_shard",
]

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


def sniff_first_shard(
    path: str | Path, looks_right: Callable[[lmdb.Transaction], bool], pattern: str = "*.lmdb"
) -> bool:
    """``looks_right(txn)`` in a read transaction on the first shard of ``path``; False if that is no LMDB file.

    Uses the process's shared environment, so sniffing works while a reader holds the file.
    """
    import lmdb

    shard = first_shard(path, pattern)
    if shard is None:
        return False
    try:
        with readonly(shard) as env, env.begin() as txn:
            return looks_right(txn)
    except lmdb.Error:
        return False


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
        with contextlib.suppress(Exception):  # an unusable inherited handle is gone either way
            env.close()


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


# ---------------------------------------------------------------------------------------------------- writing

WRITE_MAP_SIZE = 1 << 28  # first map of a new file (bytes); doubled as often as the data needs


class LmdbWriter:
    """Writes one new LMDB file (``subdir=False``): puts are committed in batches, the map grows when full.

    ``with LmdbWriter(path) as w: w.put(key, value)`` commits what is queued, syncs and closes on leaving the
    block; after an exception it closes without committing more (the caller discards the file).
    ``map_size`` (bytes) defaults to :data:`WRITE_MAP_SIZE`.
    """

    BATCH = 1024  # puts per write transaction: bounds the memory held, keeps commits rare

    def __init__(self, path: str | Path, map_size: int | None = None):
        import lmdb

        self.path = Path(path)
        # one writer of a file nobody else sees yet: no lock table, and one sync on close instead of one per commit
        self.env = lmdb.open(
            str(path),
            subdir=False,
            map_size=map_size or WRITE_MAP_SIZE,
            lock=False,
            sync=False,
            metasync=False,
            meminit=False,
        )
        self._pending: list[tuple[bytes, bytes, bool]] = []

    def put(self, key: bytes, value: bytes, *, append: bool = False) -> None:
        """Queue ``key -> value``. ``append=True`` promises keys in ascending order (LMDB then packs pages full)."""
        self._pending.append((key, value, append))
        if len(self._pending) >= self.BATCH:
            self.commit()

    def commit(self) -> None:
        """Write the queued puts in one transaction, doubling the map and redoing it until it fits."""
        import lmdb

        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value, append in self._pending:
                        txn.put(key, value, append=append)
                break
            except lmdb.MapFullError:  # the transaction was aborted: grow and redo it
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self._pending.clear()

    def close(self) -> None:
        """Commit what is queued, write the file to disk and close it."""
        try:
            self.commit()
            self.env.sync(True)
        finally:
            self.env.close()

    def __enter__(self) -> LmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.env.close()
