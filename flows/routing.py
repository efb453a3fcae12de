"""Which Bytewax worker a key lands on, so the flow's shard keys can be one per worker.

Bytewax 0.21 sends a keyed item to worker ``SipHash-1-3(key bytes + 0xff, keys 0, 0) % workers`` (Rust's
``DefaultHasher`` over a ``String``). Plain ``shard-0``/``shard-1`` keys can hash to the same worker: with
two workers both do, and one worker then runs all the inference while the other idles.
``tests/test_batching.py`` checks this function against a real Bytewax cluster, so an upgrade that
changes the routing fails there, not silently in production.
"""

from __future__ import annotations

import functools
import itertools

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key, as Rust's ``std::collections::hash_map::DefaultHasher::new()``."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return (v0 ^ v1 ^ v2 ^ v3) & _MASK


def bytewax_worker(key: str, workers: int) -> int:
    """The worker index (0..workers-1, up to a fixed relabelling) that Bytewax routes ``key`` to."""
    return siphash13(key.encode() + b"\xff") % workers


@functools.lru_cache(maxsize=64)
def shard_labels(shards: int) -> tuple[str, ...]:
    """One key per shard, each routed to a different worker when the cluster has ``shards`` workers:
    ``shard-<i>`` where that lands on worker ``i``, else ``shard-<i>.<n>`` for the first n that does."""
    labels = []
    for i in range(shards):
        for n in itertools.count():
            label = f"shard-{i}" if n == 0 else f"shard-{i}.{n}"
            if bytewax_worker(label, shards) == i:
                labels.append(label)
                break
    return tuple(labels)
