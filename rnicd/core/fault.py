"""Built-in fault injection (netem is not available here): per device, on transmit.

Each outgoing datagram independently may be dropped, corrupted (one bit flipped: the peer's
ICRC check catches it), duplicated, delayed, or reordered (held back so that later datagrams
overtake it). Seeded, so a run can be repeated.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from rnicd import native

KINDS = ("drop", "dup", "reorder", "delay", "corrupt")


@dataclass
class FaultSpec:
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 5.0       # how long a delayed datagram waits
    reorder_ms: float = 0.5     # how long a reordered datagram is held back
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """'drop=0.05,reorder=0.02,seed=7' -> FaultSpec (ValueError with a clear message)."""
        spec = cls()
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, _, value = item.partition("=")
            spec.set(key.strip(), value.strip())
        return spec

    def set(self, key: str, value):
        if key not in self.__dataclass_fields__:
            known = ", ".join(self.__dataclass_fields__)
            raise ValueError(f"unknown fault '{key}'; known: {known}")
        if key == "seed":
            setattr(self, key, None if value in (None, "") else int(value))
            return
        v = float(value)
        if key in KINDS and not 0.0 <= v <= 1.0:
            raise ValueError(f"fault rate {key}={v} must be between 0 and 1")
        if v < 0:
            raise ValueError(f"{key} must not be negative")
        setattr(self, key, v)

    def active(self) -> bool:
        return any(getattr(self, k) for k in KINDS)

    def to_dict(self) -> dict:
        return asdict(self)


# the C counters and the names `rnic stat` gives them (also the engines': io/engines.py)
C_COUNTERS = (("n_drop", "fault_drop"), ("n_dup", "fault_dup"), ("n_reorder", "fault_reorder"),
               ("n_delay", "fault_delay"), ("n_corrupt", "fault_corrupt"))


class FaultInjector:
    """Every datagram goes through the C injector (native/src/fault.c) on the data plane's
    transmit buffer, before it is sent or spilled (Device.inject_faults)."""

    def __init__(self, spec: FaultSpec, counters):
        self.counters = counters
        ffi = native.ffi
        self.c = ffi.new("struct rnic_fault *")
        self._marks = self._held = ()        # sized by the transmit buffer, on first use
        self._hold_s = ffi.new("double *")
        self.configure(spec)

    def configure(self, spec: FaultSpec):
        self.spec = spec
        c = self.c
        for k in KINDS:                      # a rate as a threshold out of 2^32
            setattr(c, k, round(getattr(spec, k) * (1 << 32)))
        c.rng = random.Random(spec.seed).getrandbits(64)     # the seed's (or a random) state
        c.delay_s, c.reorder_s = spec.delay_ms / 1000, spec.reorder_ms / 1000
        c.n_drop = c.n_dup = c.n_reorder = c.n_delay = c.n_corrupt = 0

    def apply_buffer(self, dp, address_of) -> list[tuple[float, bytes, object]]:
        """Faults on the data plane's transmit buffer, in place: dropped datagrams leave it,
        duplicates join it; the delayed and reordered ones are returned as (delay_seconds,
        datagram, address_of(ip_be)) for the caller to send later."""
        lib, ffi, c = native.lib, native.ffi, self.c
        if len(self._marks) < dp.tx_cap:
            self._marks, self._held = (ffi.new("uint8_t[]", dp.tx_cap),
                                       ffi.new("uint32_t[]", dp.tx_cap))
        before = [getattr(c, f) for f, _ in C_COUNTERS]
        n = lib.rnic_fault_mark(dp, c, self._marks, self._held, len(self._held))
        later = []
        for k in range(n):
            i = self._held[k]
            copies = lib.rnic_fault_held(c, self._marks[i], self._hold_s)
            data = ffi.buffer(dp.tx_bufs + i * dp.tx_buf_size, dp.tx_lens[i])[:]
            later += [(self._hold_s[0], data, address_of(dp.tx_addrs_be[i]))] * copies
        lost = lib.rnic_fault_compact(dp, self._marks)
        if lost:
            self.counters.inc("fault_dup_no_room", lost)
        for (field, name), was in zip(C_COUNTERS, before, strict=True):
            if getattr(c, field) != was:
                self.counters.inc(name, getattr(c, field) - was)
        return later
