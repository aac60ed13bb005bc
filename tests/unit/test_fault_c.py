"""The C fault injector on a transmit buffer (native/src/fault.c through core/fault.py's
FaultInjector.apply_buffer): each kind at its rate, in place; seeded runs repeat."""
import collections

import pytest

from rnicd import native
from rnicd.core.counters import Counters
from rnicd.core.fault import FaultInjector, FaultSpec

ffi, lib = native.ffi, native.lib
CAP, SIZE = 512, 64


def tx_buffer(n: int):
    """A device whose transmit buffer holds n datagrams: datagram i is 64 bytes of i."""
    keep = dict(bufs=ffi.new("uint8_t[]", CAP * SIZE), lens=ffi.new("uint32_t[]", CAP),
                addrs=ffi.new("uint32_t[]", CAP))
    dp = ffi.new("struct rnic_dp_dev *", dict(tx_bufs=keep["bufs"], tx_lens=keep["lens"],
                                              tx_addrs_be=keep["addrs"], tx_buf_size=SIZE,
                                              tx_cap=CAP, ntx=n))
    for i in range(n):
        ffi.memmove(keep["bufs"] + i * SIZE, bytes([i % 256]) * SIZE, SIZE)
        keep["lens"][i], keep["addrs"][i] = SIZE, 1000 + i
    return dp, keep


def sent(dp) -> list[bytes]:
    return [ffi.buffer(dp.tx_bufs + i * SIZE, dp.tx_lens[i])[:] for i in range(dp.ntx)]


def run(spec: str, n: int = 200):
    counters = Counters()
    inj = FaultInjector(FaultSpec.parse(spec), counters)
    dp, keep = tx_buffer(n)
    later = inj.apply_buffer(dp, lambda be: ("addr", be))
    return sent(dp), later, counters.values


def test_no_fault_changes_nothing():
    out, later, counts = run("seed=1")
    assert out == [bytes([i]) * SIZE for i in range(200)] and later == [] and not counts


def test_drop_all_and_none():
    out, later, counts = run("drop=1,seed=2")
    assert out == [] and later == [] and counts["fault_drop"] == 200


@pytest.mark.parametrize("kind", ["drop", "dup", "reorder", "delay", "corrupt"])
def test_each_kind_at_its_rate(kind):
    out, later, counts = run(f"{kind}=0.25,seed=3", n=200)
    hits = counts[f"fault_{kind}"]
    assert 25 <= hits <= 75, hits                      # 50 expected; binomial sd ~6
    if kind == "drop":
        assert len(out) == 200 - hits
    elif kind == "dup":
        assert len(out) == 200 + hits
        assert sum(c == 2 for c in collections.Counter(out).values()) == hits
    elif kind in ("reorder", "delay"):
        assert len(out) == 200 - hits and len(later) == hits
        want = 0.005 if kind == "delay" else 0.0005     # delay_ms 5, reorder_ms 0.5
        assert all(d == pytest.approx(want) and addr[0] == "addr" for d, _, addr in later)
        assert sorted(out + [dg for _, dg, _ in later]) == sorted(bytes([i]) * SIZE
                                                                for i in range(200))
    else:                                              # one bit flipped in each corrupted
        flipped = [(a, b) for a, b in zip(out, (bytes([i]) * SIZE for i in range(200)),
                                          strict=True) if a != b]
        assert len(flipped) == hits
        assert all(sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True)) == 1
                   for a, b in flipped)


def test_a_seed_repeats_its_decisions():
    spec = "drop=0.1,dup=0.1,reorder=0.1,corrupt=0.1,seed=42"
    assert run(spec) == run(spec)
    assert run(spec)[0] != run(spec.replace("seed=42", "seed=43"))[0]


def test_a_duplicate_without_room_is_counted_not_written():
    counters = Counters()
    inj = FaultInjector(FaultSpec.parse("dup=1,seed=5"), counters)
    dp, keep = tx_buffer(CAP - 10)
    inj.apply_buffer(dp, lambda be: be)
    assert dp.ntx == CAP and counters.values["fault_dup_no_room"] == CAP - 20
