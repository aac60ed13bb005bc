"""The engines of a device: C processes that run the data plane's steady state
(native/src/engine.c, docs/engines.md). This module starts them, tells them what the daemon
maps, holds them while core/ works, and hands their events to core/.

Each engine has a UDP socket in the port's SO_REUSEPORT group (the kernel steers a datagram
to engine DestQP mod N, rnic_steer_by_qpn), a command socket (SOCK_SEQPACKET: memfds and
eventfds by SCM_RIGHTS), and two eventfds: `wake` (it has events for core/) and `resume`
(its hold is over). Its records live in the state arena, so both sides share them.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import signal
import socket
import struct
import termios
import time

from rnicd import native
from rnicd.core.fault import C_COUNTERS
from rnicd.wire.roce import ROCEV2_PORT

log = logging.getLogger("rnicd.engines")

EVENTS = 1024               # event ring entries per engine
HOLD_TIMEOUT = 1.0          # seconds an engine may take to reach a safe point, else hung
WATCH_EVERY = 0.25          # the daemon looks at the heartbeats this often, and an engine
HUNG_LOOKS = 5              # beats at least once in each (RNIC_ENGINE_BEAT_MS): this many
                            # looks in a row without a beat is a hung engine
COMMAND_TIMEOUT = 2.0
QP_CAP = 1 << 15            # QPs one engine may serve (the QP table's size)
_GSI_QPN = b"\x00\x00\x01"  # BTH DestQP of CM MADs (IBTA 13.5.1)


def recover(device, qpns, dead_id: int, who: str) -> None:
    """What the daemon does first for a writer that died (lock_id dead_id) serving the QPs
    numbered qpns: the one it was changing is rolled back or forward from its journal
    (rnic_dp_recover; docs/failover.md), then the locks it held are broken, the send WQEs
    it found finished are completed, and every requester goes back N: what the dead writer
    had queued to send is lost with it (ACKs it owed: its substitute forgets them, and the
    requester's probe brings a duplicate that gets one)."""
    lib, ffi = native.lib, native.ffi
    dev = device.dp
    changed = []
    for qpn in qpns:
        qp = dev.qps[qpn]
        if qp != ffi.NULL and (found := lib.rnic_dp_recover(dev, qp, dead_id)):
            rolled = "back" if found == lib.RNIC_DP_TXN_OPEN else "forward"
            device.counters.inc(f"engine_txn_rolled_{rolled}")
            log.warning("%s died changing QP %d: rolled %s", who, qpn, rolled)
            changed.append(qp)
    if lib.rnic_dp_lock_break(dev.atomic_lock, dead_id):
        log.warning("%s died holding the atomic lock: broken", who)
    for cq in list(device.cqs.values()):
        if lib.rnic_dp_lock_break(ffi.addressof(cq.dp, "lock"), dead_id):
            log.warning("%s died holding CQ %d's lock: broken", who, cq.uid)
    for qp in changed:      # WQEs it found acknowledged: their ACK will not come again
        if qp.sq != ffi.NULL:
            lib.rnic_dp_retire(dev, qp)
    dev.now = time.monotonic()
    for qpn in qpns:
        qp = dev.qps[qpn]
        if qp != ffi.NULL and not qp.unreliable and qp.una != qp.send_psn:
            lib.rnic_dp_go_back(dev, qp, qp.una, 1)     # requests: resend from una at once


def default_count() -> int:
    """One engine per CPU the daemon may run on."""
    return len(os.sched_getaffinity(0))


def engine_cpus(ip: str) -> list[int]:
    """The CPUs engine 0, 1, ... are pinned to: the daemon's, starting at one chosen by its
    address, so that several daemons on one host (network namespaces, loopback pairs) put
    their busiest engine, 0, on different CPUs instead of all on the first."""
    cpus = sorted(os.sched_getaffinity(0))
    start = int.from_bytes(socket.inet_aton(ip), "big") % len(cpus)
    return cpus[start:] + cpus[:start]


class Engine:
    """One engine: its shared record and the daemon's ends of its channels."""

    def __init__(self, index: int, cpu: int, sock: socket.socket, device, spin_s: float,
                 peer_port: int, tables, udp_gso: bool):
        new = native.shared_new
        self.index, self.cpu, self.sock = index, cpu, sock
        self.restarts = 0
        cap, tx = tables["tx_cap"], tables["tx_buf"]
        self.arrays = dict(
            acks=new("uint32_t[]", tables["acks_len"]),
            pumps=new("uint32_t[]", tables["acks_len"]),
            notify=new("uint32_t[]", tables["notify_cap"]),
            notify_fds=new("int32_t[]", tables["notify_cap"]),
            tx_bufs=new("uint8_t[]", cap * tx),
            tx_lens=new("uint32_t[]", cap),
            tx_addrs_be=new("uint32_t[]", cap))
        d = device.dp
        self.dev = new("struct rnic_dp_dev *", dict(
            self.arrays, ip_be=d.ip_be, port=d.port, qps=d.qps, qps_len=d.qps_len,
            mrs=d.mrs, mrs_len=d.mrs_len, ahs=d.ahs, ahs_len=d.ahs_len,
            atomic_lock=d.atomic_lock, acks_len=tables["acks_len"],
            pumps_cap=tables["acks_len"], notify_cap=tables["notify_cap"], tx_buf_size=tx,
            tx_cap=cap))
        self.events = new("struct rnic_engine_event[]", EVENTS)
        self.qpns = new("uint32_t[]", QP_CAP)
        self.cmd, child_cmd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.resume_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.rec = new("struct rnic_engine *", dict(
            id=index, cpu=cpu, ev_cap=EVENTS, qps_cap=QP_CAP, qpns=self.qpns,
            events=self.events, dev=self.dev, spin_s=spin_s, sock_fd=sock.fileno(),
            cmd_fd=child_cmd.fileno(), resume_fd=self.resume_fd, wake_fd=self.wake_fd,
            peer_port=peer_port, udp_gso=int(udp_gso)))
        self._child_cmd = child_cmd
        self.slot = {}                      # qpn -> index in qpns
        self.dead = False                   # it exited, and no substitute runs yet
        self.pidfd = -1
        self.beat, self.still = -1, 0       # the heartbeat last seen; looks it has not moved
        self.failed_at: float | None = None       # the last death seen (time.monotonic)
        self.blackout_ms: float | None = None     # from it to the substitute's start

    def configure_faults(self, spec, fault_c) -> None:
        """The device's fault knobs and hold times (its own counters go on), with this
        engine's own generator (seeded from the device's and the engine's index, so a
        seeded run repeats)."""
        f = self.rec.fault
        for k in ("drop", "dup", "reorder", "delay", "corrupt", "delay_s", "reorder_s"):
            setattr(f, k, getattr(fault_c, k))
        f.rng = (fault_c.rng + 0x9E3779B97F4A7C15 * (self.index + 1)) & (2**64 - 1)
        self.rec.fault_on = int(spec.active())

    def spawn(self) -> int:
        pid = native.lib.rnic_engine_spawn(self.rec)
        if pid < 0:
            raise OSError(-pid, f"starting engine {self.index}: {os.strerror(-pid)}")
        self.pid = pid
        self.beat, self.still = self.rec.heartbeat, 0
        return pid

    def command(self, op: int, fd: int = -1, dfd: int = -1, addr: int = 0, length: int = 0,
                off: int = 0, flags: int = 0) -> None:
        c = native.ffi.new("struct rnic_engine_cmd *", dict(
            op=op, dfd=dfd, flags=flags, addr=addr, len=length, off=off))
        rc = native.lib.rnic_engine_command(self.cmd.fileno(), c, fd, COMMAND_TIMEOUT)
        if rc < 0:
            raise OSError(-rc, f"engine {self.index}: {os.strerror(-rc)}")


class Engines:
    """The device's engines (`rnicd --engines N`)."""

    def __init__(self, loop, device, shm, ip: str, port: int, count: int, spin_us: float,
                 on_events, udp_gso: bool = True):
        from rnicd.io.udp import open_roce_socket
        self.loop, self.device, self.shm = loop, device, shm
        self.on_events = on_events
        lib = native.lib
        cpus = engine_cpus(ip)
        socks = [open_roce_socket(ip, port, reuseport=True) for _ in range(count)]
        rc = lib.rnic_steer_by_qpn(socks[0].fileno(), count)
        if rc < 0:
            raise OSError(-rc, f"steering datagrams to the engines: {os.strerror(-rc)}")
        d = device.dp
        tables = dict(acks_len=d.acks_len, notify_cap=d.notify_cap, tx_cap=d.tx_cap,
                      tx_buf=d.tx_buf_size)
        self.engines = [Engine(k, cpus[k % len(cpus)], socks[k], device, spin_us / 1e6,
                               ROCEV2_PORT, tables, udp_gso) for k in range(count)]
        self.dps = [e.dev for e in self.engines]
        self._depth = 0
        # descriptors the engines hold: fd -> the engine whose doorbell it is, or None
        self.fds: dict[int, int | None] = {}
        self._mad_since = None      # when a CM MAD began waiting for the others' sockets
        self.configure_faults()
        device.comp_vectors = count
        device.engines = self

    def start(self) -> None:
        for e in self.engines:
            e.spawn()
            e._child_cmd.close()            # the engine has its end
            self.loop.add_reader(e.wake_fd, self._woken, e)
            e.pidfd = os.pidfd_open(e.pid)  # readable the moment it exits
            self.loop.add_reader(e.pidfd, self._exited, e)
            log.info("engine %d: pid %d on CPU %d", e.index, e.pid, e.cpu)
        self.shm.mirror = self
        self._watch_timer = self.loop.call_later(WATCH_EVERY, self._watch)

    def _exited(self, e: Engine) -> None:
        """An engine died (its pidfd): a substitute takes over."""
        try:
            _, status = os.waitpid(e.pid, os.WNOHANG)
        except ChildProcessError:
            status = 0
        self._lost(e, f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"status {os.waitstatus_to_exitcode(status)}")

    def _fence(self, e: Engine, why: str) -> None:
        """A hung engine (no heartbeat, no safe point) is killed and reaped before anything
        else touches its QPs: after a SIGSTOP and SIGCONT it cannot write again."""
        log.error("engine %d (pid %d) is hung (%s): fenced", e.index, e.pid, why)
        self.device.counters.inc("engine_fenced")
        self._reap(e)
        self._lost(e, "fenced")

    @staticmethod
    def _reap(e: Engine) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(e.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(e.pid, 0)

    def restart(self, which: int | None = None) -> list[int]:
        """Planned restart (`rnic engine restart`): engine `which`, or every one in turn, is
        replaced by a fresh process, as an upgraded engine binary would be rolled out. Called
        with the engines held: each is killed at a safe point, then failed over."""
        done = []
        for e in [x for x in self.live if which is None or x.index == which]:
            self._reap(e)
            self._lost(e, "restarted", planned=True)
            done.append(e.index)
        return done

    def _lost(self, e: Engine, how: str, planned: bool = False) -> None:
        """Nothing holds the dead engine or sends it commands any more; the QP it was
        changing is rolled back or forward (its journal, rnic_dp_recover), then the locks it
        held are broken and the completion channels it had yet to signal are signalled;
        unless the daemon is stopping, a substitute resumes its QPs from their hard state in
        the arena (docs/failover.md)."""
        lib = native.lib
        if e.pidfd >= 0:
            self.loop.remove_reader(e.pidfd)
            os.close(e.pidfd)
            e.pidfd = -1
        e.dead = True
        lib.rnic_engine_release(e.rec)
        e.rec.state = lib.RNIC_ENGINE_EXITED
        recover(self.device, [e.qpns[i] for i in range(e.rec.nqps)], e.pid,
                f"engine {e.index}")
        for i in range(e.dev.nnotify):      # noted, perhaps not signalled: at most twice
            self.device.notify_cq(e.dev.notify[i])
        e.dev.nnotify = 0
        self.loop.call_soon(self.on_events)
        if e.rec.stop:
            return
        e.failed_at = time.monotonic()
        (log.info if planned else log.error)(
            "engine %d (pid %d) %s: a substitute takes its %d QPs", e.index, e.pid,
            how if planned else f"exited ({how})", e.rec.nqps)
        if not planned:
            self.device.counters.inc("engine_deaths")
        self._substitute(e, planned)

    def _substitute(self, e: Engine, planned: bool = False) -> None:
        """Fork a fresh engine into the dead one's slot (same record, socket, CPU), give it
        the descriptors the daemon shares (it inherits the mappings), and count it."""
        e.cmd.close()
        e.cmd, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        e.rec.cmd_fd, e.rec.hold_waiting = child.fileno(), 0
        e.rec.pause_req = int(self._depth > 0)     # core/ works now: it starts held
        try:
            e.spawn()
        except OSError as exc:
            log.error("engine %d: no substitute: %s", e.index, exc)
            return
        finally:
            child.close()
        e.dead = False
        e.restarts += 1
        e.pidfd = os.pidfd_open(e.pid)
        self.loop.add_reader(e.pidfd, self._exited, e)
        for fd, doorbell in self.fds.items():
            e.command(native.lib.RNIC_ENGINE_CMD_FD, fd, dfd=fd, flags=_fd_flags(e, doorbell))
        if self._depth:
            native.lib.rnic_engine_hold(e.rec, HOLD_TIMEOUT, e.pidfd)
        self.device.counters.inc("engine_restarts" if planned else "engine_failovers")
        log.warning("engine %d: substitute pid %d on CPU %d (restart %d)", e.index, e.pid,
                    e.cpu, e.restarts)

    def _watch(self) -> None:
        """Heartbeats: one that has not moved in HUNG_LOOKS looks is a hung engine, fenced
        within (HUNG_LOOKS + 1) * WATCH_EVERY = 1.5 s. Looks, not seconds: a daemon that was
        stopped itself (SIGSTOP of the whole host) does not take its engines' pause for a
        hang. Also logs the last failover's blackout."""
        for e in self.live:
            beat = e.rec.heartbeat
            if e.failed_at is not None and e.rec.started >= e.failed_at:
                e.blackout_ms = round((e.rec.started - e.failed_at) * 1000, 1)
                log.warning("engine %d: blackout %.1f ms (death seen to substitute running)",
                            e.index, e.blackout_ms)
                e.failed_at = None
            if beat != e.beat:
                e.beat, e.still = beat, 0
            else:
                e.still += 1
                if e.still >= HUNG_LOOKS:
                    self._fence(e, f"no heartbeat in {e.still * WATCH_EVERY:.2f} s")
        self._watch_timer = self.loop.call_later(WATCH_EVERY, self._watch)

    @property
    def live(self) -> list[Engine]:
        return [e for e in self.engines if not e.dead]

    def stop(self) -> None:
        self._watch_timer.cancel()
        for e in self.engines:
            e.rec.stop = 1
            self.loop.remove_reader(e.wake_fd)
            if e.pidfd >= 0:
                self.loop.remove_reader(e.pidfd)
                os.close(e.pidfd)
                e.pidfd = -1
        for e in self.engines:
            native.lib.rnic_engine_release(e.rec)
            os.write(e.resume_fd, (1).to_bytes(8, "little"))
            e.cmd.close()                   # an engine that reads EOF exits as well
        for e in self.engines:
            try:
                os.waitpid(e.pid, 0)
            except ChildProcessError:
                pass
            e.sock.close()
            os.close(e.wake_fd)
            os.close(e.resume_fd)

    def configure_faults(self) -> None:
        for e in self.engines:
            e.configure_faults(self.device.fault.spec, self.device.fault.c)

    # ---- holding -------------------------------------------------------------------------
    @contextlib.contextmanager
    def held(self):
        """Every engine at a safe point while core/ works (nests)."""
        if self._depth == 0:
            for e in self.live:
                rc = native.lib.rnic_engine_hold(e.rec, HOLD_TIMEOUT, e.pidfd)
                if rc == -errno.ESRCH and e.pidfd >= 0:
                    self._exited(e)             # died just now: its pidfd says so
                elif rc == -errno.ETIMEDOUT:
                    self._fence(e, f"no safe point in {HOLD_TIMEOUT} s")
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for e in self.live:
                    native.lib.rnic_engine_release(e.rec)

    # ---- what the daemon maps, the engines map (SharedMemory.mirror) ----------------------
    def _tell(self, op: int, fd: int = -1, doorbell: int | None = None, **kw) -> None:
        """A command to every live engine; one that does not answer in COMMAND_TIMEOUT is
        hung and fenced (its substitute, forked now, inherits the daemon's mappings and is
        given self.fds). With an fd, ``doorbell`` names the engine that waits on it."""
        for e in self.live:
            try:
                if op == native.lib.RNIC_ENGINE_CMD_FD:
                    kw["flags"] = _fd_flags(e, doorbell)
                e.command(op, fd, **kw)
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):    # it died just now
                    self._reap(e)
                    self._lost(e, "its command socket closed")
                elif exc.errno == errno.ETIMEDOUT:
                    self._fence(e, f"no answer to a command in {COMMAND_TIMEOUT} s")
                else:
                    raise

    def map(self, addr: int, length: int, fd: int, offset: int) -> None:
        self._tell(native.lib.RNIC_ENGINE_CMD_MAP, fd, addr=addr, length=length, off=offset)

    def unmap(self, addr: int, length: int) -> None:
        try:
            self._tell(native.lib.RNIC_ENGINE_CMD_UNMAP, addr=addr, length=length)
        except OSError as exc:
            log.warning("%s", exc)

    def add_fd(self, fd: int, doorbell: int | None) -> None:
        self.fds[fd] = doorbell
        self._tell(native.lib.RNIC_ENGINE_CMD_FD, fd, doorbell, dfd=fd)

    def forget_fd(self, fd: int) -> None:
        self.fds.pop(fd, None)
        try:
            self._tell(native.lib.RNIC_ENGINE_CMD_CLOSE_FD, dfd=fd)
        except OSError as exc:
            log.warning("%s", exc)

    # ---- which QPs each engine serves (called with the engines held) ----------------------
    def add_qp(self, qp) -> None:
        e = self.engines[qp.dp.engine]
        n = e.rec.nqps
        e.qpns[n] = qp.qp_num
        e.slot[qp.qp_num] = n
        e.rec.nqps = n + 1

    def remove_qp(self, qp) -> None:
        e = self.engines[qp.dp.engine]
        i = e.slot.pop(qp.qp_num, None)
        if i is None:
            return
        last = e.rec.nqps - 1
        if i != last:
            moved = e.qpns[last]
            e.qpns[i] = moved
            e.slot[moved] = i
        e.rec.nqps = last

    # ---- events ----------------------------------------------------------------------------
    def _woken(self, e: Engine) -> None:
        try:
            os.read(e.wake_fd, 8)
        except BlockingIOError:
            pass
        self.on_events()

    def handle_events(self, now: float) -> None:
        """Every engine's events, in order (with the engines held)."""
        lib, ffi, dev = native.lib, native.ffi, self.device
        for e in self.engines:
            rec = e.rec
            mask = rec.ev_cap - 1
            cons_p = ffi.addressof(rec, "ev_cons")
            dev.dp.now = now
            while True:
                lib.rnic_engine_take_fast(rec, dev.dp)      # runs of datagrams: in C
                prod, cons = rec.ev_prod, rec.ev_cons
                if cons == prod:
                    break
                ev = e.events[cons & mask]
                kind, ident = ev.kind, ev.id
                if kind == lib.RNIC_EV_PACKET:
                    data = ffi.buffer(ev.data, ev.len)[:]
                    if data[5:8] == _GSI_QPN and not self._others_caught_up(e):
                        break               # a CM MAD waits: see _others_caught_up
                    self._packet(data, ev.src_ip_be, ev.sport, ev.ip_id, now)
                elif kind == lib.RNIC_EV_PUMP:
                    qp = dev.qps.get(ident)
                    if qp is not None:
                        qp.dp.eng_pump_posted = 0
                        qp.pump(now)
                elif kind == lib.RNIC_EV_TIMER:
                    qp = dev.qps.get(ident)
                    if qp is not None:
                        qp.dp.eng_timer_posted = 0
                        qp.on_timer(now)
                elif kind == lib.RNIC_EV_NOTIFY:
                    dev.notify_cq(ident)
                lib.rnic_store_release(cons_p, (cons + 1) & 0xFFFFFFFF)
            if rec.ev_overflow:             # something was lost: look at everything
                rec.ev_overflow = 0
                dev.counters.inc("engine_event_overflow")
                for qp in list(dev.qps.values()):
                    qp.dp.eng_pump_posted = qp.dp.eng_timer_posted = 0
                    qp.pump(now)
                dev.on_timer(now)
                for cq in list(dev.cqs.values()):
                    dev.notify_cq(cq.uid)
        dev.end_batch(now)

    def before_verb(self, session, now: float) -> None:
        """A control verb of session is next (with the engines held). What its program did
        before it sent the verb must have happened first, as on hardware, where posted work
        is under way at once: the events the engines handed up, then the WQEs of its QPs
        that no engine has looked at yet (a program that posts and then resizes its CQ
        finds the completions there: rdma-core's test_resize_cq)."""
        self.handle_events(now)
        lib, ffi = native.lib, native.ffi
        for qp in list(session.qps.values()):
            dp = qp.dp
            if dp.sq != ffi.NULL and lib.rnic_load_acquire(
                    ffi.addressof(dp.sq, "prod")) != dp.eng_seen_sq:
                qp.pump(now)

    def _others_caught_up(self, e: Engine) -> bool:
        """A CM MAD (QP 1) reached engine e, but its connection's datagrams are steered to
        the QP's engine: one the peer sent before the MAD (the ACK of the last WRITE before
        a DREQ) may still wait in that engine's socket. On one port hardware handles
        packets in arrival order, so the MAD waits until no other engine holds anything
        unread. (Held, every engine is at a safe point: what it took from its socket is
        handled; what it has not is in the socket, or in its backlog.)"""
        for o in self.live:
            if o is e:
                continue
            unread = fcntl.ioctl(o.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            if unread != b"\0\0\0\0" or o.rec.rx_backlog:
                if self._mad_since is None:
                    self._mad_since = self.loop.time()
                if self.loop.time() - self._mad_since < 0.05:
                    self.loop.call_later(0.0002, self.on_events)    # once it has read it
                    return False
        self._mad_since = None
        return True

    def _packet(self, data: bytes, ip_be: int, sport: int, ip_id: int, now: float) -> None:
        """A datagram the fast path did not take (rnic_engine_take_fast tried it): core/'s."""
        self.device.receive_slow(data, _ip_str(ip_be), sport, now, ip_id)

    # ---- `rnic engine` ---------------------------------------------------------------------
    def info(self, now: float) -> list[dict]:
        out = []
        for e in self.engines:
            r = e.rec
            up = max(now - r.started, 1e-9) if r.started else 0.0
            state = "dead" if e.dead else "running"
            out.append(dict(
                id=e.index, pid=e.pid, cpu=e.cpu, state=state, qps=r.nqps,
                cqs=sum(1 for cq in self.device.cqs.values() if cq.dp.engine == e.index),
                restarts=e.restarts, blackout_ms=e.blackout_ms, rx_pkts=r.rx_pkts,
                tx_pkts=r.tx_pkts,
                fast_pkts=e.dev.fast_pkts, slow_pkts=e.dev.slow_pkts,
                events=r.events_posted, wakeups=r.wakeups, channel_events=r.channel_events,
                spin_yielded=r.spin_yielded, poller_yields=r.poller_yields,
                busy_pct=round(100.0 * r.busy_ns / 1e9 / up, 1) if up else 0.0))
        return out

    def counters(self) -> dict[str, int]:
        """The engines' own counters, summed (rnic stat)."""
        names = (("tx_dropped_busy", "tx_dropped_busy"), ("tx_errors", "tx_error"),
                 ("rx_drop_oversize", "rx_drop_oversize"), ("ev_dropped", "engine_event_drop"),
                 ("fault_no_room", "fault_dup_no_room"))
        out: dict[str, int] = {}
        for e in self.engines:
            for field, name in names:
                if v := getattr(e.rec, field):
                    out[name] = out.get(name, 0) + v
            for field, name in C_COUNTERS:
                if v := getattr(e.rec.fault, field):
                    out[name] = out.get(name, 0) + v
        return out


def _fd_flags(e: Engine, doorbell: int | None) -> int:
    """An eventfd is engine e's to wait on only if it is e's doorbell; every engine holds
    every eventfd (it may signal any completion channel)."""
    return native.lib.RNIC_ENGINE_FD_DOORBELL if doorbell == e.index else 0


@functools.lru_cache(maxsize=1024)
def _ip_str(addr_be: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", addr_be))

