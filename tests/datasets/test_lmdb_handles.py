"""LMDB handles: two readers of one file, sniffing while a reader holds it, fork and spawn; the growing writer."""

from __future__ import annotations

import gc
import multiprocessing
import operator
import os
import pickle
import sys

import lmdb
import pytest
from datasets_testlib import FLOAT32, assert_same_structure, random_structures

from mlip_datasets import lmdb_handles
from mlip_datasets.formats import get_format, native, oc20_lmdb
from mlip_datasets.io import detect_format, open_dataset, write_dataset
from mlip_datasets.lmdb_handles import LmdbWriter, ShardEnvs, open_readonly, readonly, references, release
from mlip_datasets.record import Structure

fork_only = pytest.mark.skipif(sys.platform != "linux", reason="fork start method")


def _structures(n: int = 5, seed: int = 0) -> list[Structure]:
    return random_structures(n, seed, complete=True)  # complete: OC20 files store absent tags/fixed as zeros


def _assert_same(a: Structure, b: Structure) -> None:
    assert_same_structure(a, b, tolerance=FLOAT32, info=False)  # OC20 keeps float32 and only some of info


def _assert_all_match(reader, structures) -> None:
    # sharded aselmdb reads shard by shard, not in the writer's round-robin order: match records by sid
    by_sid = {s.sid: s for s in structures}
    assert len(reader) == len(structures)
    for i in range(len(reader)):
        got = reader[i]
        _assert_same(by_sid[got.sid], got)


# name -> (format, file name, shards)
CASES = {
    "native-file": ("native", "data.lmdb", 1),
    "native-shards": ("native", "store", 2),
    "aselmdb-file": ("aselmdb", "data.aselmdb", 1),
    "aselmdb-shards": ("aselmdb", "shards", 2),
    "oc20-file": ("oc20", "oc20.lmdb", 1),
    "oc20-shards": ("oc20", "s2ef", 2),
}


def _files(path) -> list:
    return sorted(p for p in path.iterdir() if p.suffix in (".lmdb", ".aselmdb")) if path.is_dir() else [path]


@pytest.fixture(params=list(CASES))
def dataset(request, tmp_path):
    fmt, name, shards = CASES[request.param]
    path = tmp_path / name
    structures = _structures()
    get_format(fmt).write(path, structures, shards=shards)
    return fmt, path, structures


def test_two_readers_share_one_handle_and_close_independently(dataset):
    fmt, path, structures = dataset
    first, second = open_dataset(path), open_dataset(path)  # py-lmdb alone would refuse the second open
    assert first.format_name == second.format_name == fmt
    _assert_all_match(first, structures)
    _assert_all_match(second, structures)
    files = _files(path)
    assert all(references(f) == 2 for f in files)
    assert first._envs[0] is second._envs[0]
    first.close()
    assert all(references(f) == 1 for f in files)
    _assert_all_match(second, structures)
    _assert_all_match(first, structures)  # a closed reader reopens on use
    first.close()
    second.close()
    assert all(references(f) == 0 for f in files)


def test_sniff_and_detect_format_while_a_reader_is_open(dataset):
    fmt, path, structures = dataset
    with open_dataset(path) as reader:
        reader[0]  # holds the environments now
        assert detect_format(path).name == fmt
        assert native.sniff(path) == (fmt == "native")
        assert oc20_lmdb.sniff(path) == (fmt == "oc20")
        again = open_dataset(path)
        _assert_all_match(again, structures)
        _assert_all_match(reader, structures)
        again.close()
        assert references(_files(path)[0]) == 1  # the sniffs gave their references back
    assert references(_files(path)[0]) == 0


# -- fork ------------------------------------------------------------------------------------------------------

_PARENT: dict = {}  # set before the pool forks, so that its workers inherit the reader and its open handles


def _closed(env) -> bool:
    try:
        env.stat()
    except lmdb.Error:
        return True
    return False


def _read_in_child(index: int):
    reader, inherited = _PARENT["reader"], _PARENT["env"]
    s = reader[index]
    own = reader._envs[0]  # this child's handle for shard 0 (opened here if the record was in another shard)
    return s, os.getpid(), own is not inherited and not _closed(own), _closed(inherited)


@fork_only
def test_forked_workers_read_through_a_reader_opened_in_the_parent(dataset):
    fmt, path, structures = dataset
    reader = open_dataset(path)
    expected = [reader[i] for i in range(len(reader))]  # opens every shard in the parent first
    _PARENT.update(reader=reader, env=reader._envs[0])
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_in_child, range(len(reader)), chunksize=1)
    finally:
        _PARENT.clear()
    for (got, *_), want in zip(results, expected, strict=True):  # the same records, in order
        _assert_same(want, got)
    assert all(pid != os.getpid() and fresh and closed for _, pid, fresh, closed in results)
    # the children closed their copies of the inherited handles; the parent's are untouched
    _assert_all_match(reader, structures)
    assert references(_files(path)[0]) == 1
    reader.close()


def _child_closes_inherited(path, queue):
    try:
        inherited = _PARENT["env"]
        env = open_readonly(path)  # first call in the child: closes the inherited handle, opens its own
        with env.begin() as txn:
            value = txn.get(b"k")
        queue.put((bytes(value), env is not inherited, _closed(inherited), references(path)))
    except BaseException as err:  # noqa: BLE001 - report, do not hang the parent
        queue.put(repr(err))


@fork_only
def test_closing_an_inherited_environment_in_the_child_leaves_the_parent_alone(tmp_path):
    path = tmp_path / "raw.lmdb"
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"value")
    env.close()
    parent_env = open_readonly(path)
    txn = parent_env.begin()  # a read transaction held open across the fork
    assert bytes(txn.get(b"k")) == b"value"
    _PARENT["env"] = parent_env
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_closes_inherited, args=(path, queue))
        child.start()
        reply = queue.get(timeout=60)
        child.join(60)
    finally:
        _PARENT.clear()
    assert reply == (b"value", True, True, 1) and child.exitcode == 0
    assert bytes(txn.get(b"k")) == b"value"  # the parent's transaction and environment still work
    txn.abort()
    with parent_env.begin() as txn:
        assert bytes(txn.get(b"k")) == b"value"
    assert references(path) == 1
    release(parent_env)
    assert references(path) == 0


# -- spawn / pickle --------------------------------------------------------------------------------------------


def test_pickled_and_spawned_readers(tmp_path):
    readers = []
    for fmt, name, shards in {k: CASES[k] for k in ("native-shards", "aselmdb-file", "oc20-shards")}.values():
        path = tmp_path / name
        get_format(fmt).write(path, _structures(3, seed=len(readers)), shards=shards)
        readers.append(open_dataset(path))
    expected = [r[2] for r in readers]  # handles open in this process
    clones = [pickle.loads(pickle.dumps(r)) for r in readers]  # in-process copies share the handles
    for clone, want in zip(clones, expected, strict=True):
        _assert_same(want, clone[2])
    assert all(c._envs[0] is r._envs[0] for c, r in zip(clones, readers))
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # workers that get the readers by pickle
        got = pool.starmap(operator.getitem, [(r, 2) for r in readers])
    for g, want in zip(got, expected, strict=True):
        _assert_same(want, g)
    for r in readers + clones:
        r.close()
    assert all(references(_files(r.path)[0]) == 0 for r in readers)


# -- the handle registry itself --------------------------------------------------------------------------------


def _raw_file(path, value=b"1"):
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", value)
    env.close()
    return path


def test_counts_identity_and_close(tmp_path):
    path = _raw_file(tmp_path / "a.lmdb")
    env = open_readonly(path)
    assert open_readonly(tmp_path / "." / "a.lmdb") is env and references(path) == 2
    os.link(path, tmp_path / "hard.lmdb")  # the same file under another name: the same environment
    assert open_readonly(tmp_path / "hard.lmdb") is env and references(path) == 3
    for _ in range(3):
        release(env)
    assert references(path) == 0
    with pytest.raises(lmdb.Error):
        env.stat()  # the last release closed it
    release(env)  # releasing a closed handle again is harmless
    with pytest.raises(lmdb.Error):
        open_readonly(tmp_path / "missing.lmdb")
    assert references(tmp_path / "missing.lmdb") == 0


def test_replaced_file_gets_a_new_environment(tmp_path):
    path = tmp_path / "data.lmdb"
    first, second = _structures(2, seed=0), _structures(3, seed=1)
    assert first[0].sid != second[0].sid
    write_dataset(path, first, "native")
    old = open_dataset(path)
    assert old[0].sid == first[0].sid
    write_dataset(path, second, "native", overwrite=True)  # renamed over the open file
    new = open_dataset(path)
    assert len(new) == 3 and new[0].sid == second[0].sid
    assert old[0].sid == first[0].sid and new._envs[0] is not old._envs[0]  # the old reader keeps its unlinked file
    old.close()
    new.close()


def test_readonly_block_and_shard_envs_release_on_garbage_collection(tmp_path):
    path = _raw_file(tmp_path / "a.lmdb")
    with readonly(path) as env, env.begin() as txn:
        assert bytes(txn.get(b"k")) == b"1" and references(path) == 1
    assert references(path) == 0
    envs = ShardEnvs([path])
    envs[0]
    assert references(path) == 1
    del envs
    gc.collect()
    assert references(path) == 0
    # a finalizer that finds the registry busy (the collector ran inside it) defers its release, never blocks
    envs = ShardEnvs([path])
    envs[0]
    with lmdb_handles._lock:
        del envs
        gc.collect()
    assert references(path) == 0  # done by the next call


def test_shard_envs_pickle_without_handles(tmp_path):
    path = _raw_file(tmp_path / "a.lmdb")
    envs = ShardEnvs([path])
    env = envs[0]
    clone = pickle.loads(pickle.dumps(envs))
    assert clone._held == {} and clone.paths == [path]
    assert clone[0] is env and references(path) == 2
    clone.close()
    envs.close()
    assert references(path) == 0


# -- the writer --------------------------------------------------------------------------------------------------

TINY_MAP = 1 << 16  # 64 KiB: the data below needs several doublings


def _stored_map_size(path) -> int:
    # map_size=0 adopts the size recorded in the file, which is what the writer's map had grown to
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False, map_size=0) as env:
        return env.info()["map_size"]


def test_writer_grows_the_map_and_keeps_every_put(tmp_path):
    path = tmp_path / "grown.lmdb"
    values = {i.to_bytes(8, "big"): os.urandom(int(i % 7) * 300 + 1) for i in range(3 * LmdbWriter.BATCH)}
    with LmdbWriter(path, map_size=TINY_MAP) as writer:
        for key, value in values.items():
            writer.put(key, value, append=True)  # keys ascend
        writer.put(b"meta", b"last")
        assert writer.env.info()["map_size"] > TINY_MAP  # full batches were committed, so it has grown already
    assert sum(map(len, values.values())) > 10 * TINY_MAP
    assert _stored_map_size(path) > TINY_MAP and not list(tmp_path.glob("*-lock"))
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env, env.begin() as txn:
        assert dict(txn.cursor()) == {**values, b"meta": b"last"}  # nothing lost or doubled by the redone commits


def test_writer_commits_nothing_more_after_an_error(tmp_path):
    path = tmp_path / "failed.lmdb"
    with pytest.raises(RuntimeError), LmdbWriter(path) as writer:
        writer.put(b"k", b"v")
        raise RuntimeError("the caller failed mid-write")
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env:
        assert env.stat()["entries"] == 0


@pytest.mark.parametrize("fmt, name", [("native", "data.lmdb"), ("oc20", "oc20.lmdb"), ("aselmdb", "data.aselmdb")])
def test_every_lmdb_format_writes_through_the_growing_writer(tmp_path, monkeypatch, fmt, name):
    monkeypatch.setattr(lmdb_handles, "WRITE_MAP_SIZE", TINY_MAP)
    structures = _structures(300)
    path = tmp_path / name
    assert get_format(fmt).write(path, structures) == 300
    assert _stored_map_size(path) in {TINY_MAP << k for k in range(1, 12)}  # the tiny map, doubled a few times
    with open_dataset(path) as reader:
        assert len(reader) == 300
        for want, got in zip(structures, reader):
            _assert_same(want, got)
