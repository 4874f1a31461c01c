"""Split a stream of encoded records into contiguous shards without holding them in memory.

Contiguous shards (records 0..a-1 in shard 0, a..b-1 in shard 1, ...) keep the input order for any reader
that walks shards in name order and keys in order (fairchem's ``AseDBDataset``, OC20 loaders), but the
split points need the count, which a stream does not give up front: the encoded records go to a temporary
file in the output folder first (as much disk as the output itself, 8 bytes of memory per record).
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def write_contiguous(
    folder: Path, values: Iterable[bytes], shards: int, write_shard: Callable[[int, Iterator[bytes]], object]
) -> int:
    """Call ``write_shard(k, records_of_shard_k)`` for k = 0..shards-1, in order; shard sizes differ by at most one
    record. Returns the record count."""
    with tempfile.TemporaryFile(dir=folder) as spool:
        sizes = array("q")
        for value in values:
            spool.write(value)
            sizes.append(len(value))
        spool.seek(0)
        bounds = [len(sizes) * k // shards for k in range(shards + 1)]
        for k in range(shards):
            write_shard(k, (spool.read(sizes[i]) for i in range(bounds[k], bounds[k + 1])))
    return len(sizes)
