"""Named counters (rxe's names where they exist). A QP's counters also count for its device."""
from collections import Counter


class Counters:
    __slots__ = ("values", "parent")

    def __init__(self, parent: "Counters | None" = None):
        self.values: Counter = Counter()
        self.parent = parent

    def inc(self, name: str, n: int = 1):
        self.values[name] += n
        if self.parent is not None:
            self.parent.inc(name, n)

    def child(self) -> "Counters":
        return Counters(self)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.values.items()))
