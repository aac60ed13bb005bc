"""Built-in fault injection (netem is not available here): per device, on transmit.

Each outgoing datagram independently may be dropped, corrupted (one byte flipped: the peer's
ICRC check catches it), duplicated, delayed, or reordered (held back so that later datagrams
overtake it). Seeded, so a run can be repeated.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

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


class FaultInjector:
    def __init__(self, spec: FaultSpec, counters):
        self.counters = counters
        self.configure(spec)

    def configure(self, spec: FaultSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)

    def apply(self, datagram: bytes) -> list[tuple[float, bytes]]:
        """-> [(delay_seconds, datagram), ...] to actually send."""
        s, r = self.spec, self.rng
        if not s.active():
            return [(0.0, datagram)]
        if s.drop and r.random() < s.drop:
            self.counters.inc("fault_drop")
            return []
        if s.corrupt and r.random() < s.corrupt:
            self.counters.inc("fault_corrupt")
            b = bytearray(datagram)
            i = r.randrange(len(b))
            b[i] ^= 1 << r.randrange(8)
            datagram = bytes(b)
        delay = 0.0
        if s.delay and r.random() < s.delay:
            self.counters.inc("fault_delay")
            delay = s.delay_ms / 1000
        elif s.reorder and r.random() < s.reorder:
            self.counters.inc("fault_reorder")
            delay = s.reorder_ms / 1000
        out = [(delay, datagram)]
        if s.dup and r.random() < s.dup:
            self.counters.inc("fault_dup")
            out.append((delay, datagram))
        return out
