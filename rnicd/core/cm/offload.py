"""Connection establishment offloaded to the daemon, with bulk notification (seed feature:
"connection establishment offloaded to the offload engine").

A listener hands the daemon a template: how to create each connection's QP, which receive
buffers to pre-post, and the accept parameters. The daemon then completes every incoming
handshake itself (QP created, moved to RTS, REP sent, RTU received) and tells the consumer
about established connections in bulk: one notification carries every connection
established since the previous one. A notification goes out when `notify_max` connections
are waiting, or `notify_delay` seconds after the first of them (interrupt moderation), so a
burst of N connections costs about N / notify_max notifications instead of N.

The backlog counts handshakes in progress plus connections established but not yet notified;
a REQ beyond it is rejected with REJ reason 28 (consumer defined), as the consumer asked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

NOTIFY_MAX = 64
NOTIFY_DELAY = 0.05
BACKLOG_FULL = b"rnicd: listen backlog full"     # REJ private data beyond the backlog


@dataclass
class Offload:
    spawn: Callable[[float], object]         # -> a new RC QP, receives pre-posted (api layer)
    discard: Callable[[object], None]        # destroys a QP whose handshake failed
    conn_param: dict
    private_data: bytes = b""
    notify_max: int = NOTIFY_MAX
    notify_delay: float = NOTIFY_DELAY
    batch: list = field(default_factory=list)     # established, not yet notified
    deadline: float | None = None
    notifications: int = 0
    established: int = 0

    def add(self, entry: dict, now: float) -> bool:
        """One more established connection; True when the batch must go out now."""
        self.batch.append(entry)
        self.established += 1
        if self.deadline is None:
            self.deadline = now + self.notify_delay
        return len(self.batch) >= self.notify_max

    def take(self) -> list:
        batch, self.batch, self.deadline = self.batch, [], None
        if batch:
            self.notifications += 1
        return batch
