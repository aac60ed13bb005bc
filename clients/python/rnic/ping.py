"""`rnic ping`: an rping-style connection and data check over rdma_cm (rnic.cmid).

The server listens and serves one client; the client connects and, each iteration, fills a
source buffer with a pattern, asks the server to copy it into a sink buffer, and compares::

    client                                     server
      post RECV (done)                           post RECV (request), accept
      SEND request -------------------------->   RECV completes, RECV re-posted
                   <- RDMA READ source ------    (into the server's buffer)
                   <- RDMA WRITE sink -------    (the same bytes back)
                   <- SEND done -------------
      RECV completes; sink == source?

The request is 32 bytes in network byte order: two (addr u64, rkey u32, len u32) triples,
the client's source buffer (registered REMOTE_READ) then its sink (REMOTE_WRITE). "done" is
a u32 status in network byte order: 0 = copied, 1 = longer than the server's -S, 2 = a
malformed request. Written for rnicd from rping's description, not from its code.
"""
from __future__ import annotations

import argparse
import errno
import struct
import sys
import time

PORT = 7174                        # rping's
SIZE, MIN_SIZE, MAX_SIZE = 64, 16, 1 << 20
COUNT = 10
TIMEOUT = 10.0
PREFIX = b"rnic-ping: "
PRINTABLE = bytes(range(0x21, 0x7F))          # '!' .. '~'
REQ = struct.Struct("!QIIQII")                # source addr/rkey/len, sink addr/rkey/len
DONE = struct.Struct("!I")
DONE_OK, DONE_TOO_LONG, DONE_BAD_REQUEST = 0, 1, 2
DONE_TEXT = {DONE_TOO_LONG: "the transfer is longer than the server's -S",
             DONE_BAD_REQUEST: "the server could not parse the request"}
# work request ids
W_REQ, W_DONE, W_READ, W_WRITE = 1, 2, 3, 4

DESCRIPTION = f"""\
Check a connection end to end, like rdma-core's rping, over rnicd's rdma_cm.

  rnic --socket /tmp/b.sock ping -s                  # server: serves one client, then exits
  rnic --socket /tmp/a.sock ping -c -a 127.0.0.2 -v  # client

Server (-s): listens on the device's address, port -p (default {PORT}; 0 = any free port,
printed as "listening on IP:PORT"), accepts one client, serves its iterations and exits 0
when the client disconnects (or, with -C, disconnects itself after that many iterations).

Client (-c -a ADDR): connects to the server at ADDR:PORT and runs -C iterations (default
{COUNT}). Each fills a -S byte buffer (default {SIZE}) with a rotating printable pattern
("{PREFIX.decode()}", then characters starting one further along each iteration) and SENDs
the server the address and rkey of that buffer and of an empty sink buffer; the server RDMA
READs the buffer, RDMA WRITEs it into the sink and SENDs "done"; the client compares the
sink with the buffer byte for byte. It prints "ping data: ..." per iteration with -v, and a
summary with the round-trip times (request, READ, WRITE and done) at the end unless -q.

Exit status: 0 if every iteration was verified; 1 on a data mismatch (with the first
differing offset), a refused or unanswered connection, a failed work completion or a wait
longer than --timeout; 2 for bad arguments. Messages go to stderr. Note that `rnic -S` before
`ping` is the control socket; -S after it is the buffer size."""


class PingError(Exception):
    """A failure to report on stderr (exit status 1)."""


# ---- arguments ------------------------------------------------------------------------------
def _size(text: str) -> int:
    v = int(text, 0)
    if not MIN_SIZE <= v <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text}: the size must be {MIN_SIZE}..{MAX_SIZE}")
    return v


def _count(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text}: the count must be at least 1")
    return v


def _port(text: str) -> int:
    v = int(text)
    if not 0 <= v <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text}: the port must be 0..65535")
    return v


def _seconds(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text}: the timeout must be positive")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-s", "--server", action="store_true", help="run the server")
    mode.add_argument("-c", "--client", action="store_true", help="run the client")
    p.add_argument("-a", "--addr", help="client: the server's address (required); server: "
                   "the local address to listen on (default: the device's)")
    p.add_argument("-I", "--src-addr", help="client: the source address (must be the "
                   "device's; default: the device's)")
    p.add_argument("-p", "--port", type=_port, default=PORT,
                   help=f"rdma_cm port (default {PORT}; a server may use 0 for any)")
    p.add_argument("-C", "--count", type=_count, help=f"client: iterations (default {COUNT}); "
                   "server: disconnect after this many (default: when the client does)")
    p.add_argument("-S", "--size", type=_size, help=f"client: bytes per iteration (default "
                   f"{SIZE}); server: the largest it accepts (default {MAX_SIZE}); "
                   f"{MIN_SIZE}..{MAX_SIZE}")
    p.add_argument("-t", "--timeout", type=_seconds, default=TIMEOUT,
                   help=f"seconds to wait for any completion (default {TIMEOUT:g}); the "
                   "server waits for a client without limit")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-v", "--verbose", action="store_true",
                     help="print each iteration's data (\"ping data: ...\")")
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


# ---- helpers --------------------------------------------------------------------------------
def pattern(i: int, size: int) -> bytes:
    """Iteration i's data: PREFIX, then printable characters starting at offset i."""
    n = size - len(PREFIX)
    start = i % len(PRINTABLE)
    reps = (start + n) // len(PRINTABLE) + 1
    return PREFIX + (PRINTABLE * reps)[start:start + n]


def _status_name(status: int) -> str:
    from rnic.enums import WCStatus
    try:
        return WCStatus(status).name
    except ValueError:
        return str(status)


class Completions:
    """Completions of one CQ by wr_id. A poll may return completions that a later wait is
    for (the next request's RECV together with the done SEND's), so they are kept."""

    def __init__(self, cq):
        self.cq = cq
        self.pending: dict = {}

    def wait(self, want: set[int], timeout: float, what: str) -> dict:
        """Poll until a completion for every wr_id in `want` arrived -> {wr_id: WC}."""
        deadline = time.monotonic() + timeout
        spins = 0
        while not want <= self.pending.keys():
            n, wcs = self.cq.poll(8)
            for wc in wcs:
                if wc.wr_id in self.pending:
                    raise PingError(f"internal: two completions for work request {wc.wr_id}")
                self.pending[wc.wr_id] = wc
            if n:
                spins = 0
                continue
            if time.monotonic() > deadline:
                missing = ", ".join(str(w) for w in sorted(want - self.pending.keys()))
                raise PingError(f"no completion for {what} within {timeout:g} s "
                                f"(work request(s) {missing}); is the peer still there?")
            spins += 1
            if spins > 200:                  # spin a little for latency, then back off
                time.sleep(min(1e-3, 20e-6 * (spins - 200)))
        return {w: self.pending.pop(w) for w in want}


def _check(wc, what: str) -> None:
    import rnic.enums as e
    if wc.status != e.IBV_WC_SUCCESS:
        raise PingError(f"{what} failed: {_status_name(wc.status)} "
                        f"(vendor_err {wc.vendor_err})")


def _recv(qp, mr, wr_id: int) -> None:
    from rnic.wr import SGE, RecvWR
    qp.post_recv(RecvWR(wr_id=wr_id, num_sge=1, sg=[SGE(mr.buf, mr.length, mr.lkey)]))


def _send(qp, wr_id, opcode, mr, length, rkey=None, addr=None) -> None:
    from rnic.wr import SGE, SendWR
    wr = SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[SGE(mr.buf, length, mr.lkey)])
    if rkey is not None:
        wr.set_wr_rdma(rkey, addr)
    qp.post_send(wr)


def _qp_init():
    from rnic.qp import QPCap, QPInitAttr
    return QPInitAttr(cap=QPCap(max_send_wr=4, max_recv_wr=2, max_send_sge=1, max_recv_sge=1))


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace")


def _say(args, *line) -> None:
    if not args.quiet:
        print(*line, flush=True)


# ---- server ---------------------------------------------------------------------------------
def server(args, ctx) -> int:
    from rnic.cmid import CMID, RAI_PASSIVE, AddrInfo
    limit = args.size or MAX_SIZE
    with CMID(creator=AddrInfo(src=args.addr, service=str(args.port), flags=RAI_PASSIVE),
              context=ctx) as lid:
        lid.listen(backlog=1)
        _say(args, f"rnic ping: listening on {lid.local_ip}:{lid.local_port}")
        # the listener stays open while serving: the request's id shares its PD
        cid = lid.get_request()
        with cid:
            return _serve(args, cid, limit)


def _serve(args, cid, limit: int) -> int:
    import rnic.enums as e
    from rnic.mr import MR
    cid.create_qp(_qp_init())
    qp, pd = cid.qp, cid.pd
    if qp.scq is not qp.rcq:
        raise PingError("internal: expected one CQ for sends and receives")
    req_mr = MR(pd, REQ.size, e.IBV_ACCESS_LOCAL_WRITE)
    done_mr = MR(pd, DONE.size, e.IBV_ACCESS_LOCAL_WRITE)
    buf = MR(pd, limit, e.IBV_ACCESS_LOCAL_WRITE)
    cq = Completions(qp.rcq)
    _recv(qp, req_mr, W_REQ)                 # before accept: the client may send at once
    cid.accept()
    peer = f"{cid.remote_ip}:{cid.remote_port}"
    _say(args, f"rnic ping: connection from {peer}")
    served = 0
    while args.count is None or served < args.count:
        wc = cq.wait({W_REQ}, args.timeout, "the next request")[W_REQ]
        if wc.status == e.IBV_WC_WR_FLUSH_ERR:          # the client disconnected
            break
        _check(wc, "receiving a request")
        raw = req_mr.read(REQ.size)
        _recv(qp, req_mr, W_REQ)             # before "done": the next request may follow it
        if wc.byte_len != REQ.size:
            status, src = DONE_BAD_REQUEST, None
        else:
            src = REQ.unpack(raw)
            s_addr, s_rkey, s_len, k_addr, k_rkey, k_len = src
            status = DONE_TOO_LONG if s_len > limit or s_len > k_len else DONE_OK
        if status == DONE_OK:
            if s_len:
                _send(qp, W_READ, e.IBV_WR_RDMA_READ, buf, s_len, s_rkey, s_addr)
                _check(cq.wait({W_READ}, args.timeout, "the RDMA READ")[W_READ],
                       "RDMA READ of the client's buffer")
                _send(qp, W_WRITE, e.IBV_WR_RDMA_WRITE, buf, s_len, k_rkey, k_addr)
            if args.verbose:
                print(f"server ping data: {_text(buf.read(s_len))}", flush=True)
        done_mr.write(DONE.pack(status))
        _send(qp, W_DONE, e.IBV_WR_SEND, done_mr, DONE.size)
        wanted = {W_DONE, W_WRITE} if status == DONE_OK and s_len else {W_DONE}
        wcs = cq.wait(wanted, args.timeout, "the RDMA WRITE and done")
        for w, what in ((W_WRITE, "RDMA WRITE into the client's sink"),
                        (W_DONE, "SEND of done")):
            if w in wcs:
                _check(wcs[w], what)
        if status != DONE_OK:
            raise PingError(f"bad request from {peer}: {DONE_TEXT[status]} "
                            f"({wc.byte_len} byte message"
                            + (f", length {src[2]}, sink {src[5]}, limit {limit})" if src
                               else ")"))
        served += 1
    if args.count is not None and served == args.count:
        cid.disconnect()
    else:
        _wait_disconnected(cid, args.timeout)
    _say(args, f"rnic ping: {peer} done after {served} iteration(s)")
    return 0


def _wait_disconnected(cid, timeout: float) -> None:
    from rnic.cmid import CMEventType
    from rnic.errors import RnicError
    try:
        cid.wait_event(CMEventType.RDMA_CM_EVENT_DISCONNECTED, timeout=timeout)
    except RnicError as exc:
        raise PingError(f"the client's receive was flushed but no DISCONNECTED event "
                        f"arrived within {timeout:g} s") from exc


# ---- client ---------------------------------------------------------------------------------
def client(args, ctx) -> int:
    import rnic.enums as e
    from rnic.cmid import CMID, AddrInfo
    from rnic.errors import RnicError
    from rnic.mr import MR
    size, count = args.size or SIZE, args.count or COUNT
    where = f"{args.addr}:{args.port}"
    with CMID(creator=AddrInfo(src=args.src_addr, dst=args.addr, service=str(args.port)),
              qp_init_attr=_qp_init(), context=ctx) as cid:
        qp, pd = cid.qp, cid.pd
        cq = Completions(qp.rcq)
        src = MR(pd, size, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ)
        sink = MR(pd, size, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE)
        req = MR(pd, REQ.size, e.IBV_ACCESS_LOCAL_WRITE)
        done = MR(pd, DONE.size, e.IBV_ACCESS_LOCAL_WRITE)
        req.write(REQ.pack(src.buf, src.rkey, size, sink.buf, sink.rkey, size))
        try:
            cid.connect()
        except RnicError as exc:
            raise PingError(_connect_error(exc, where)) from None
        zeros = bytes(size)
        rtts = []
        for i in range(count):
            data = pattern(i, size)
            src.write(data)
            sink.write(zeros)
            _recv(qp, done, W_DONE)
            t0 = time.perf_counter()
            _send(qp, W_REQ, e.IBV_WR_SEND, req, REQ.size)
            wcs = cq.wait({W_REQ, W_DONE}, args.timeout, f"iteration {i + 1}'s done")
            rtts.append(time.perf_counter() - t0)
            for w, what in ((W_REQ, "SEND of the request"), (W_DONE, "receiving done")):
                if wcs[w].status == e.IBV_WC_WR_FLUSH_ERR:
                    raise PingError(f"iteration {i + 1}: the connection to {where} was closed "
                                    f"(the server stopped after {i} iteration(s)?)")
                _check(wcs[w], f"iteration {i + 1}: {what}")
            (status,) = DONE.unpack(done.read(DONE.size))
            if status != DONE_OK:
                raise PingError(f"iteration {i + 1}: the server refused it: "
                                f"{DONE_TEXT.get(status, f'status {status}')} ({size} bytes)")
            got = sink.read(size)
            if got != data:
                off = next(k for k in range(size) if got[k] != data[k])
                raise PingError(f"iteration {i + 1}: data mismatch at offset {off}: expected "
                                f"{data[off]:#04x}, got {got[off]:#04x}\n"
                                f"  sent: {_text(data[:80])}\n  got:  {_text(got[:80])}")
            if args.verbose:
                print(f"ping data: {_text(got)}", flush=True)
        cid.disconnect()
    us = [t * 1e6 for t in rtts]
    _say(args, f"rnic ping: {count} iterations of {size} bytes verified with {where}; "
         f"round trip min/avg/max = {min(us):.1f}/{sum(us) / len(us):.1f}/{max(us):.1f} us")
    return 0


def _connect_error(exc, where: str) -> str:
    from rnicd.wire.mad import RejReason
    ev = getattr(exc, "event", None)
    if exc.code == errno.ECONNREFUSED and ev is not None:
        try:
            reason = RejReason(ev.status).name
        except ValueError:
            reason = str(ev.status)
        hint = (" (no server listening on that port? start one with `rnic ping -s`)"
                if ev.status == RejReason.INVALID_SERVICE_ID else "")
        return f"connection to {where} rejected: REJ reason {reason}{hint}"
    if exc.code == errno.ETIMEDOUT:
        return (f"no answer from {where} ({exc.msg}); is an rnicd running at that address "
                "and reachable?")
    return f"cannot connect to {where}: {exc}"


# ---- entry ----------------------------------------------------------------------------------
def run(args, context_factory) -> int:
    """`rnic ping`; context_factory(args) opens the rnic.device.Context to use."""
    if args.client and not args.addr:
        print("rnic ping: a client needs the server's address: -c -a ADDR", file=sys.stderr)
        return 2
    if args.server and args.src_addr:
        print("rnic ping: -I is for the client; a server listens on -a", file=sys.stderr)
        return 2
    if args.client and args.port == 0:
        print("rnic ping: a client needs the server's port (-p 1..65535)", file=sys.stderr)
        return 2
    from rnic.errors import RnicError
    try:
        with context_factory(args) as ctx:
            return server(args, ctx) if args.server else client(args, ctx)
    except PingError as exc:
        print(f"rnic ping: {exc}", file=sys.stderr)
        return 1
    except RnicError as exc:
        print(f"rnic ping: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnic ping: interrupted", file=sys.stderr)
        return 130
