"""Control-verb handlers for one client connection (one verbs context).

Every argument is untrusted: it is checked for type and range here, before core/ sees it,
and every failure becomes an error reply with an errno code and a message naming the fix.
Ring memory and fds come from an injected `shm` provider (io/shm.py), keeping api/ free of I/O.
"""
from __future__ import annotations

import errno
import logging
import os

from rnicd.api.args import arg_int
from rnicd.api.cm_verbs import CMVerbs
from rnicd.api.device_attr import device_attr, device_attr_ex
from rnicd.core import mw
from rnicd.core.cm.conn import CMId
from rnicd.core.device import RC_LIKE, Device
from rnicd.core.fault import FaultSpec
from rnicd.core.resources import CQ, MR, PD, SRQ, XRCD, CompChannel, RecvQueue
from rnicd.core.roce.qp import RCQP, QPCap
from rnicd.core.roce.xrc import XRCQP
from rnicd.core.ud import UDQP, AddressHandle
from rnicd.errors import VerbsError, einval, enoent
from rnicd.wire import ctl, roce
from rnicd.wire.abi import (
    IBV_GID_TYPE_ROCE_V2,
    IBV_LINK_LAYER_ETHERNET,
    RC_ACCESS,
    Access,
    PortState,
    QPType,
    ReregFlags,
    SRQType,
)
from rnicd.wire.rings import CQE_SIZE, RECV_WQE_HDR, SEND_WQE_HDR, SGE_SIZE, RingKind

log = logging.getLogger("rnicd.api")
# ibv_port_cap_flags: a connection manager (QP1, rdma_cm) and GIDs from IP addresses (RoCE)
PORT_CAP_FLAGS = 1 << 16 | 1 << 26           # IBV_PORT_CM_SUP | IBV_PORT_IP_BASED_GIDS

PAGE = 4096               # the page size of the client's memfd segments
REREG_FLAGS = (ReregFlags.IBV_REREG_MR_CHANGE_TRANSLATION | ReregFlags.IBV_REREG_MR_CHANGE_PD
               | ReregFlags.IBV_REREG_MR_CHANGE_ACCESS)
# IBV_ACCESS_MW_BIND permits binding memory windows to the MR (core/mw.py, C10-73).
MR_ACCESS = (RC_ACCESS | Access.IBV_ACCESS_MW_BIND | Access.IBV_ACCESS_ZERO_BASED
             | Access.IBV_ACCESS_RELAXED_ORDERING)


def pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def send_slots(c: QPCap) -> int:
    """SGE-sized slots of a send WQE: room for max_send_sge SGEs or the inline data asked
    for, at least one. Inline data lives where the SGEs would (rnic_abi.h), so the QP's
    max_inline_data becomes all of that room, at least what was asked for, as
    ibv_create_qp(3) allows and rxe and mlx5 do (a program that posts 16 inline bytes with
    max_send_sge 1 and no max_inline_data, as librdmacm's rdma_xclient does, works there)."""
    slots = max(c.max_send_sge, -(-c.max_inline_data // SGE_SIZE), 1)
    c.max_inline_data = SGE_SIZE * slots
    return slots


class Session(CMVerbs):
    """One verbs context: the objects a client created, released together on close."""

    def __init__(self, device: Device, shm, pid: int | None = None):
        self.device = device
        self.shm = shm
        self.pid = pid
        self.pds: dict[int, PD] = {}
        self.mrs: dict[int, MR] = {}
        self.mws: dict[int, mw.MW] = {}          # memory windows (core/mw.py)
        self.cqs: dict[int, CQ] = {}
        self.qps: dict[int, RCQP] = {}
        self.srqs: dict[int, SRQ] = {}
        self.xrcds: dict[int, XRCD] = {}
        self.channels: dict[int, CompChannel] = {}
        self.ahs: dict[int, AddressHandle] = {}
        self.cm_ids: dict[int, CMId] = {}
        self.parked_rings: dict[int, tuple[dict, list[int]]] = {}   # offloaded QPs' rings
        self._next_handle = 1
        # a doorbell per engine (comp vector): a post wakes only the engine of its QP
        self.doorbell_fds = [shm.new_eventfd(doorbell=k) for k in range(device.comp_vectors)]
        # inodes of its clients' command sockets (each passed its own end by SCM_RIGHTS at
        # hello): import_context recognises a context by one of them
        self.sockets: set[int] = set()
        # the connection whose request is being served (set by the io layer): CM ids created
        # or migrated by it send their events there (librdmacm's event channels)
        self.caller = None
        self.closed = False

    def _handle(self) -> int:
        h = self._next_handle
        self._next_handle += 1
        return h

    new_handle = _handle        # core/cm names handles for the ids it creates

    def _get(self, table: dict, args: dict, name: str, what: str):
        h = args.get(name)
        obj = table.get(h) if isinstance(h, int) else None
        if obj is None:
            raise enoent(f"{what} handle {h!r} does not exist in this context")
        return obj

    # ---- dispatch ------------------------------------------------------------------------
    def call(self, method: str, args: dict, fds: list[int], now: float):
        """-> (result dict, fds to send). Raises VerbsError."""
        handler = getattr(self, "m_" + method, None) if method in ctl.METHODS else None
        if handler is None:
            raise VerbsError(errno.EOPNOTSUPP, f"unknown method '{method}'")
        if not isinstance(args, dict):
            raise einval("arguments must be a map")
        return handler(args, fds, now)

    # ---- device --------------------------------------------------------------------------
    def m_hello(self, args, fds, now):
        n = len(self.doorbell_fds)
        return {"version": ctl.PROTOCOL_VERSION, "device": self.device.name,
                "num_comp_vectors": self.device.comp_vectors, "doorbell_fd": 0,
                "doorbell_fds": list(range(n))}, list(self.doorbell_fds)

    def m_query_device(self, args, fds, now):
        return device_attr(self.device), []

    def m_query_device_ex(self, args, fds, now):
        return device_attr_ex(self.device), []

    def m_query_port(self, args, fds, now):
        arg_int(args, "port", 1, 1, 1)
        up = self.device.port_active
        return {
            "state": int(PortState.IBV_PORT_ACTIVE if up else PortState.IBV_PORT_DOWN),
            "max_mtu": 5, "active_mtu": int(self.device.active_mtu),
            "gid_tbl_len": len(self.device.gid_table), "port_cap_flags": PORT_CAP_FLAGS,
            "max_msg_sz": self.device.limits.max_msg_sz,
            "bad_pkey_cntr": 0, "qkey_viol_cntr": 0, "pkey_tbl_len": 1, "lid": 0, "sm_lid": 0,
            "lmc": 0, "max_vl_num": 1, "sm_sl": 0, "subnet_timeout": 0, "init_type_reply": 0,
            "active_width": 2, "active_speed": 32, "phys_state": 5 if up else 3,
            "link_layer": IBV_LINK_LAYER_ETHERNET,
        }, []

    def m_query_gid(self, args, fds, now):
        arg_int(args, "port", 1, 1, 1)
        index = arg_int(args, "index", 0, len(self.device.gid_table) - 1, 0)
        return {"gid": self.device.gid_table[index], "gid_type": IBV_GID_TYPE_ROCE_V2,
                "ndev_ifindex": self.device.netdev_ifindex}, []

    def m_get_counters(self, args, fds, now):
        if args.get("qp") is not None:
            return {"counters": self._get(self.qps, args, "qp", "QP").counter_snapshot()}, []
        return {"counters": self.device.counter_snapshot()}, []

    def m_set_fault(self, args, fds, now):
        spec = FaultSpec()
        untrusted = args.get("spec")
        if not isinstance(untrusted, dict):
            raise einval("set_fault needs 'spec': a map such as {'drop': 0.05, 'seed': 7}")
        try:
            for k, v in untrusted.items():
                spec.set(str(k), v)
        except (TypeError, ValueError) as exc:
            raise einval(f"set_fault: {exc}") from None
        self.device.fault.configure(spec)
        if self.device.engines is not None:
            self.device.engines.configure_faults()
        log.info("fault injection on %s: %s", self.device.name, spec.to_dict())
        return {"spec": spec.to_dict()}, []

    def m_get_fault(self, args, fds, now):
        return {"spec": self.device.fault.spec.to_dict()}, []

    def m_get_qps(self, args, fds, now):
        """Every QP of the device (like `rdma resource show qp`): number, type, state, PSNs,
        peer, owner."""
        rows = []
        for qpn, qp in sorted(self.device.qps.items()):
            row = {"qp_num": qpn, "qp_type": int(qp.qp_type), "state": int(qp.state),
                   "pid": qp.owner.pid, "sq_psn": None, "una": None, "rq_psn": None,
                   "peer": None, "cwnd": None, "srtt_us": None}
            if qp.qp_type in RC_LIKE:
                # the requester's soft state too, as `ss -i` shows a TCP socket's
                row.update(sq_psn=qp.requester.next_psn, una=qp.completer.una,
                           rq_psn=qp.responder.epsn, cwnd=round(qp.dp.cwnd, 1),
                           srtt_us=round(qp.dp.srtt * 1e6, 1),
                           peer=f"{qp.peer_ip}/{qp.attr['dest_qp_num']}" if qp.peer_ip else None)
            else:
                row.update(sq_psn=qp.psn)
            rows.append(row)
        return {"qps": rows}, []

    def m_get_engines(self, args, fds, now):
        """The engines (`rnic engine`): none when the daemon's loop runs the data plane."""
        engines = self.device.engines
        return {"engines": engines.info(now) if engines is not None else []}, []

    def m_restart_engine(self, args, fds, now):
        """`rnic engine restart [ID|all]`: replace engines with fresh processes."""
        engines = self.device.engines
        if engines is None:
            raise VerbsError(errno.EOPNOTSUPP, "no engines: the daemon's loop runs the data "
                             "plane (rnicd --engines 0)")
        which = args.get("id")
        if which is not None and not any(e.index == which for e in engines.engines):
            raise VerbsError(errno.EINVAL, f"no engine {which}")
        return {"restarted": engines.restart(which)}, []

    def m_get_objects(self, args, fds, now):
        # with the rdma_cm ports listened on: what a script waits for before its client
        # (rdma_cm has no socket of its own to look at)
        listening = sorted(port for _, port in self.device.cm.listeners)
        return self.shm.object_counts() | {"cm_listening": listening}, []

    # ---- PD / MR -------------------------------------------------------------------------
    def m_alloc_pd(self, args, fds, now):
        pd = PD(self._handle(), self)
        self.pds[pd.handle] = pd
        return {"pd": pd.handle}, []

    def m_import_pd(self, args, fds, now):
        """ibv_import_pd: the PD exists in this (shared) context."""
        self._get(self.pds, args, "pd", "PD")
        return {}, []

    def m_import_mr(self, args, fds, now):
        """ibv_import_mr: the MR's attributes, for a context that shares it."""
        mr = self._get(self.mrs, args, "mr", "MR")
        return {"pd": mr.pd.handle, "addr": mr.iova, "length": mr.length,
                "access": int(mr.access), "lkey": mr.lkey, "rkey": mr.rkey}, []

    def m_dealloc_pd(self, args, fds, now):
        pd = self._get(self.pds, args, "pd", "PD")
        if pd.refs:
            raise VerbsError(errno.EBUSY, f"PD {pd.handle} is still used by {pd.refs} "
                             "MRs/QPs/SRQs: destroy them first")
        del self.pds[pd.handle]
        return {}, []

    def _mr_access(self, args, verb: str) -> int:
        access = arg_int(args, "access", 0, (1 << 32) - 1)
        if access & ~MR_ACCESS:
            raise einval(f"{verb}: unsupported access bits {access & ~MR_ACCESS:#x}")
        if (access & (Access.IBV_ACCESS_REMOTE_WRITE | Access.IBV_ACCESS_REMOTE_ATOMIC)
                and not access & Access.IBV_ACCESS_LOCAL_WRITE):
            raise einval(f"{verb}: REMOTE_WRITE and REMOTE_ATOMIC need LOCAL_WRITE "
                         "(IBTA 10.6.3.1)")
        return access

    def _mr_memory(self, args, fds, verb: str):
        """The memory of a reg_mr/rereg_mr: (mapping, start, iova, length), checked
        (docs/memory-registration.md: ``segments`` of memfds, ``start`` the byte offset of
        ``addr`` in them; without ``segments``, one memfd from ``offset``)."""
        length = arg_int(args, "length", 1, self.device.limits.max_mr_size)
        addr = arg_int(args, "addr", 0, (1 << 64) - 1)
        if addr + length > 1 << 64:
            raise einval(f"{verb}: [addr, addr+length) wraps around the address space")
        if not fds:
            raise einval(f"{verb} needs the region's memfds passed with SCM_RIGHTS")
        untrusted = args.get("segments")
        if untrusted is None:      # one memfd, from a page-aligned offset
            off = arg_int(args, "offset", 0, 1 << 62, 0)
            untrusted, start = [[0, off, -(-length // PAGE) * PAGE]], 0
        else:
            start = arg_int(args, "start", 0, PAGE - 1, 0)
        if not isinstance(untrusted, list) or not 1 <= len(untrusted) <= ctl.MAX_FDS:
            raise einval(f"{verb}: 'segments' must be a list of 1..{ctl.MAX_FDS} "
                         "[fd index, offset, bytes]")
        segments = []
        for seg in untrusted:
            if (not isinstance(seg, list | tuple) or len(seg) != 3
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in seg)):
                raise einval(f"{verb}: a segment must be [fd index, offset, bytes], got {seg!r}")
            i, off, n = seg
            if not 0 <= i < len(fds):
                raise einval(f"{verb}: segment fd index {i}, but {len(fds)} fds came")
            if off < 0 or n <= 0 or off % PAGE or n % PAGE or off + n > 1 << 62:
                raise einval(f"{verb}: segment [{off}, +{n}) must be page-aligned and "
                             "non-empty")
            segments.append((i, off, n))
        if len({i for i, _, _ in segments}) != len(fds):
            raise einval(f"{verb}: {len(fds)} fds came but the segments use "
                         f"{len({i for i, _, _ in segments})}")
        total = sum(n for _, _, n in segments)
        if start + length > total or total - (start + length) >= PAGE:
            raise einval(f"{verb}: segments of {total} bytes do not hold exactly the pages "
                         f"of [{start}, {start + length})")
        if (addr - start) % PAGE:
            raise einval(f"{verb}: addr {addr:#x} is not at offset {start} of a page")
        return self.shm.map_region(fds, segments), start, addr, length

    def m_reg_mr(self, args, fds, now):
        pd = self._get(self.pds, args, "pd", "PD")
        access = self._mr_access(args, "reg_mr")
        if len(self.device.keys) >= self.device.limits.max_mr:
            raise VerbsError(errno.ENOMEM, f"reg_mr: device limit of "
                             f"{self.device.limits.max_mr} MRs reached")
        mapping, start, addr, length = self._mr_memory(args, fds, "reg_mr")
        lkey, rkey = self.device.keys.allocate()
        mr = MR(self._handle(), pd, addr, length, access, lkey, rkey, mapping, start)
        self.device.keys.insert(mr)
        pd.refs += 1
        self.mrs[mr.handle] = mr
        return {"mr": mr.handle, "lkey": lkey, "rkey": rkey}, []

    def m_rereg_mr(self, args, fds, now):
        """ibv_rereg_mr: a new translation (the memory, as reg_mr's), PD and/or access; the
        keys stay. Everything is checked before anything changes, so an error leaves the MR
        as it was. A new translation is dereg + reg under the same keys: a WRITE being
        placed into the old memory is abandoned and a QP with a send WR still using it
        fails, as on dereg (device.forget_region)."""
        mr = self._get(self.mrs, args, "mr", "MR")
        flags = arg_int(args, "flags", 1, (1 << 31) - 1)
        if flags & ~REREG_FLAGS:
            raise einval(f"rereg_mr: flags {flags:#x}: only IBV_REREG_MR_CHANGE_TRANSLATION, "
                         "_CHANGE_PD and _CHANGE_ACCESS exist (KEEP_VALID is not supported)")
        pd = access = None
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_PD:
            pd = self._get(self.pds, args, "pd", "PD")
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_ACCESS:
            access = self._mr_access(args, "rereg_mr")
        if flags & ReregFlags.IBV_REREG_MR_CHANGE_TRANSLATION:
            mapping, start, addr, length = self._mr_memory(args, fds, "rereg_mr")
            self.device.forget_region(mr, now)
            self.shm.unmap(mr.retarget(mapping, start, addr, length))
            self.device.keys.insert(mr)
        elif fds:
            raise einval("rereg_mr: memfds came without IBV_REREG_MR_CHANGE_TRANSLATION")
        if pd is not None and pd is not mr.pd:
            mr.pd.refs -= 1
            pd.refs += 1
            mr.set_pd(pd)
        if access is not None:
            mr.set_access(access)
        return {"lkey": mr.lkey, "rkey": mr.rkey}, []

    def m_dereg_mr(self, args, fds, now):
        mr = self._get(self.mrs, args, "mr", "MR")
        if n := mw.windows_on(self.device, mr):
            raise VerbsError(errno.EBUSY, f"dereg_mr: {n} memory window(s) are bound to MR "
                             f"{mr.handle}: invalidate or deallocate them first")
        self._destroy_mr(mr, now)
        return {}, []

    # ---- memory windows (IBTA 10.6.7; core/mw.py) -----------------------------------------
    def m_alloc_mw(self, args, fds, now):
        pd = self._get(self.pds, args, "pd", "PD")
        mw_type = arg_int(args, "mw_type", 0, (1 << 32) - 1)
        if mw_type not in (mw.TYPE_1, mw.TYPE_2):
            raise einval(f"alloc_mw: mw_type {mw_type} is neither IBV_MW_TYPE_1 (1) nor "
                         "IBV_MW_TYPE_2 (2)")
        if self.device.keys.windows >= self.device.limits.max_mw:
            raise VerbsError(errno.ENOMEM, f"alloc_mw: device limit of "
                             f"{self.device.limits.max_mw} memory windows reached")
        w = mw.alloc(self.device, self._handle(), self, pd, mw_type)
        pd.refs += 1
        self.mws[w.handle] = w
        return {"mw": w.handle, "rkey": w.rkey}, []

    def m_dealloc_mw(self, args, fds, now):
        self._destroy_mw(self._get(self.mws, args, "mw", "memory window"))
        return {}, []

    def _destroy_mw(self, w):
        mw.dealloc(self.device, w)
        del self.mws[w.handle]
        w.pd.refs -= 1

    def _destroy_mr(self, mr: MR, now: float):
        self.device.forget_region(mr, now)
        del self.mrs[mr.handle]
        mr.pd.refs -= 1
        mr.release()
        self.shm.unmap(mr.mapping)

    # ---- address handles (UD) ------------------------------------------------------------
    def m_create_ah(self, args, fds, now):
        pd = self._get(self.pds, args, "pd", "PD")
        attr = args.get("ah_attr")
        grh = attr.get("grh") if isinstance(attr, dict) else None
        dgid = grh.get("dgid") if isinstance(grh, dict) else None
        peer = roce.ipv4_of_gid(dgid) if isinstance(dgid, bytes | bytearray) else None
        if peer is None:
            raise einval("create_ah: ah_attr needs is_global=1 and grh.dgid, an IPv4-mapped "
                         "GID (RoCEv2 routes by GID)")
        ah = AddressHandle(self.device, pd, attr, peer)
        pd.refs += 1
        self.ahs[ah.handle] = ah
        return {"ah": ah.handle}, []

    def m_destroy_ah(self, args, fds, now):
        ah = self._get(self.ahs, args, "ah", "address handle")
        del self.ahs[ah.handle]
        ah.pd.refs -= 1
        self.device.remove_ah(ah.handle)
        return {}, []

    # ---- channels / CQ -------------------------------------------------------------------
    def m_create_comp_channel(self, args, fds, now):
        ch = CompChannel(self._handle(), self, self.shm.new_eventfd())
        self.channels[ch.handle] = ch
        return {"channel": ch.handle}, [ch.fd]

    def m_destroy_comp_channel(self, args, fds, now):
        ch = self._get(self.channels, args, "channel", "completion channel")
        if any(cq.channel is ch for cq in self.cqs.values()):
            raise VerbsError(errno.EBUSY, "completion channel still has CQs: destroy them first")
        del self.channels[ch.handle]
        self.shm.close_fd(ch.fd)
        return {}, []

    def m_create_cq(self, args, fds, now):
        lim = self.device.limits
        cqe = arg_int(args, "cqe", 1, lim.max_cqe)
        # one completion vector per engine (seed 000): vector k's CQEs are engine k's
        comp_vector = arg_int(args, "comp_vector", 0, self.device.comp_vectors - 1, 0)
        channel = None
        if args.get("channel") is not None:
            channel = self._get(self.channels, args, "channel", "completion channel")
        ring, fd, size = self.shm.new_ring(RingKind.CQ, CQE_SIZE, pow2_at_least(cqe + 1), 0, 0)
        cq = CQ(self._handle(), self, ring, channel, comp_vector)
        self.cqs[cq.handle] = cq
        self.device.add_cq(cq)
        return {"cq": cq.handle, "cqe": cq.cqe, "size": size}, [fd]

    def m_resize_cq(self, args, fds, now):
        cq = self._get(self.cqs, args, "cq", "CQ")
        cqe = arg_int(args, "cqe", 1, self.device.limits.max_cqe)
        old = cq.ring
        pending = (old.hdr.prod - old.load_cons()) & 0xFFFFFFFF
        if cqe < pending:
            raise einval(f"resize_cq: {pending} completions are pending, more than cqe={cqe}")
        ring, fd, size = self.shm.new_ring(RingKind.CQ, CQE_SIZE, pow2_at_least(cqe + 1), 0, 0)
        cons = old.load_cons()
        for i in range(pending):       # move unpolled CQEs, in order, to the new ring
            self.device.native.ffi.memmove(ring.cqe(i), old.cqe(cons + i), CQE_SIZE)
        ring.store_prod(pending)
        cq.ring = ring
        self.shm.release_ring(old)
        return {"cqe": cq.cqe, "size": size}, [fd]

    def m_destroy_cq(self, args, fds, now):
        cq = self._get(self.cqs, args, "cq", "CQ")
        if cq.refs:
            raise VerbsError(errno.EBUSY, f"CQ {cq.handle} is still used by {cq.refs} QPs")
        self._destroy_cq(cq)
        return {}, []

    def _destroy_cq(self, cq):
        del self.cqs[cq.handle]
        self.device.remove_cq(cq)
        self.shm.release_ring(cq.ring)

    # ---- SRQ -----------------------------------------------------------------------------
    def m_create_srq(self, args, fds, now):
        pd = self._get(self.pds, args, "pd", "PD")
        srq_type = arg_int(args, "srq_type", 0, 255, 0)
        xrcd = cq = None
        if srq_type == SRQType.IBV_SRQT_XRC:      # Annex A14.2.2: a domain and a CQ
            xrcd = self._get(self.xrcds, args, "xrcd", "XRCD")
            cq = self._get(self.cqs, args, "cq", "CQ (an XRC SRQ's receives complete there)")
        elif srq_type != SRQType.IBV_SRQT_BASIC:
            raise VerbsError(errno.EOPNOTSUPP, f"create_srq: srq_type {srq_type} is not "
                             "supported (IBV_SRQT_BASIC and IBV_SRQT_XRC are; no tag matching)")
        lim = self.device.limits
        max_wr = arg_int(args, "max_wr", 1, lim.max_srq_wr)
        max_sge = arg_int(args, "max_sge", 1, lim.max_srq_sge)
        limit = arg_int(args, "srq_limit", 0, max_wr, 0)
        n = pow2_at_least(max_wr)
        ring, fd, size = self.shm.new_ring(RingKind.SRQ, RECV_WQE_HDR + SGE_SIZE * max_sge, n,
                                           max_sge, 0)
        srq = SRQ(self._handle(), self, pd, ring, n, max_sge, limit, xrcd, cq)
        for ref in (pd, xrcd, cq):
            if ref is not None:
                ref.refs += 1
        if xrcd is not None:
            self.device.add_xrc_srq(srq)
        self.srqs[srq.handle] = srq
        return {"srq": srq.handle, "max_wr": n, "max_sge": max_sge, "size": size,
                "srq_num": srq.srq_num if xrcd is not None else None}, [fd]

    def m_modify_srq(self, args, fds, now):
        srq = self._get(self.srqs, args, "srq", "SRQ")
        mask = arg_int(args, "attr_mask", 0, 3)
        if mask & 1:
            raise VerbsError(errno.EOPNOTSUPP, "modify_srq: resizing an SRQ (IBV_SRQ_MAX_WR) "
                             "is not supported")
        if mask & 2:
            srq.limit = arg_int(args, "srq_limit", 0, srq.max_wr)
        return {}, []

    def m_query_srq(self, args, fds, now):
        srq = self._get(self.srqs, args, "srq", "SRQ")
        return {"max_wr": srq.max_wr, "max_sge": srq.max_sge, "srq_limit": srq.limit}, []

    def m_destroy_srq(self, args, fds, now):
        srq = self._get(self.srqs, args, "srq", "SRQ")
        if srq.refs:
            raise VerbsError(errno.EBUSY, f"SRQ {srq.handle} is still used by {srq.refs} QPs")
        self._destroy_srq(srq)
        return {}, []

    def _destroy_srq(self, srq, now: float = 0.0):
        del self.srqs[srq.handle]
        if srq.xrcd is not None:            # no TGT QP serves from it any more
            self.device.remove_xrc_srq(srq, now)
        for ref in (srq.pd, srq.xrcd, srq.cq):
            if ref is not None:
                ref.refs -= 1
        self.shm.release_ring(srq.rq.ring)

    # ---- XRC domains (Annex A14.2.1, ibv_open_xrcd) ----------------------------------------
    def m_open_xrcd(self, args, fds, now):
        """Open the XRC domain of the file passed (shared by every context that opens the
        same file), or a new private one without an fd (as fd -1)."""
        oflags = arg_int(args, "oflags", 0, (1 << 32) - 1, 0)
        if len(fds) > 1:
            raise einval("open_xrcd takes at most one fd (the file naming the domain)")
        key = self.shm.file_identity(fds[0]) if fds else None
        dom = self.device.open_xrc_domain(key, bool(oflags & os.O_CREAT),
                                          bool(oflags & os.O_EXCL))
        x = XRCD(self._handle(), self, dom)
        self.xrcds[x.handle] = x
        return {"xrcd": x.handle}, []

    def m_close_xrcd(self, args, fds, now):
        x = self._get(self.xrcds, args, "xrcd", "XRCD")
        if x.refs:
            raise VerbsError(errno.EBUSY, f"close_xrcd: XRCD {x.handle} is still used by "
                             f"{x.refs} XRC SRQs/TGT QPs: destroy them first")
        self._close_xrcd(x)
        return {}, []

    def _close_xrcd(self, x: XRCD):
        del self.xrcds[x.handle]
        self.device.close_xrc_domain(x.domain)

    # ---- QP ------------------------------------------------------------------------------
    def m_create_qp(self, args, fds, now):
        qp, result, out_fds = self._create_qp(args)
        return result, out_fds

    def _create_qp(self, args):
        lim = self.device.limits
        qp_type = arg_int(args, "qp_type", 0, 255)
        if qp_type in (QPType.IBV_QPT_XRC_SEND, QPType.IBV_QPT_XRC_RECV):
            return self._create_xrc_qp(args, qp_type)
        pd = self._get(self.pds, args, "pd", "PD")
        if qp_type not in (QPType.IBV_QPT_RC, QPType.IBV_QPT_UC, QPType.IBV_QPT_UD):
            raise VerbsError(errno.EOPNOTSUPP, f"create_qp: qp_type {qp_type} not supported "
                             "(IBV_QPT_RC, _UC, _UD, _XRC_SEND and _XRC_RECV are)")
        scq = self._get(self.cqs, args, "send_cq", "send CQ")
        rcq = self._get(self.cqs, args, "recv_cq", "receive CQ")
        srq = None
        if args.get("srq") is not None:
            srq = self._get(self.srqs, args, "srq", "SRQ")
        cap = args.get("cap")
        if not isinstance(cap, dict):
            raise einval("create_qp needs 'cap': {max_send_wr, max_recv_wr, ...}")
        c = QPCap(arg_int(cap, "max_send_wr", 1, lim.max_qp_wr),
                  0 if srq else arg_int(cap, "max_recv_wr", 1, lim.max_qp_wr),
                  arg_int(cap, "max_send_sge", 0, lim.max_sge, 1),
                  0 if srq else arg_int(cap, "max_recv_sge", 0, lim.max_sge, 1),
                  arg_int(cap, "max_inline_data", 0, lim.max_inline_data, 0))
        if len(self.device.qps) >= lim.max_qp:
            raise VerbsError(errno.ENOMEM, f"create_qp: device limit of {lim.max_qp} QPs reached")
        sq_slots = send_slots(c)
        c.max_send_wr = pow2_at_least(c.max_send_wr)
        sq, sq_fd, sq_size = self.shm.new_ring(RingKind.SQ, SEND_WQE_HDR + SGE_SIZE * sq_slots,
                                               c.max_send_wr, c.max_send_sge, c.max_inline_data)
        out_fds, rq, rq_size = [sq_fd], None, 0
        if srq is None:
            c.max_recv_wr = pow2_at_least(c.max_recv_wr)
            ring, rq_fd, rq_size = self.shm.new_ring(
                RingKind.RQ, RECV_WQE_HDR + SGE_SIZE * max(c.max_recv_sge, 1), c.max_recv_wr,
                c.max_recv_sge, 0)
            rq = RecvQueue(ring, c.max_recv_sge)
            out_fds.append(rq_fd)
        kind = UDQP if qp_type == QPType.IBV_QPT_UD else RCQP     # RCQP: RC and UC
        qp = kind(self.device, self, self._handle(), self.device.allocate_qpn(scq), pd, scq, rcq,
                  srq, sq, rq, c, bool(args.get("sq_sig_all")), qp_type)
        for ref in (pd, scq, rcq, srq):
            if ref is not None:
                ref.refs += 1
        self.qps[qp.handle] = qp
        self.device.add_qp(qp)
        return qp, {"qp": qp.handle, "qp_num": qp.qp_num, "cap": vars(c).copy(),
                    "sq_size": sq_size, "rq_size": rq_size}, out_fds

    def _create_xrc_qp(self, args, qp_type):
        """An XRC INI QP (pd, send_cq, an SQ; no receive side) or TGT QP (xrcd only: no SQ,
        no RQ, no CQ: its requests are served by the XRC SRQs their XRCETH names)."""
        lim = self.device.limits
        if len(self.device.qps) >= lim.max_qp:
            raise VerbsError(errno.ENOMEM, f"create_qp: device limit of {lim.max_qp} QPs reached")
        if args.get("srq") is not None:
            raise einval("create_qp: an XRC QP takes no SRQ (a TGT QP's requests name their "
                         "XRC SRQ in the XRCETH)")
        pd = scq = xrcd = None
        if qp_type == QPType.IBV_QPT_XRC_SEND:
            pd = self._get(self.pds, args, "pd", "PD")
            scq = self._get(self.cqs, args, "send_cq", "send CQ")
            cap = args.get("cap")
            if not isinstance(cap, dict):
                raise einval("create_qp needs 'cap': {max_send_wr, max_send_sge, ...}")
            c = QPCap(pow2_at_least(arg_int(cap, "max_send_wr", 1, lim.max_qp_wr)), 0,
                      arg_int(cap, "max_send_sge", 0, lim.max_sge, 1), 0,
                      arg_int(cap, "max_inline_data", 0, lim.max_inline_data, 0))
            slots = send_slots(c)
            sq, sq_fd, sq_size = self.shm.new_ring(RingKind.SQ, SEND_WQE_HDR + SGE_SIZE * slots,
                                                   c.max_send_wr, c.max_send_sge,
                                                   c.max_inline_data)
            out_fds = [sq_fd]
        else:
            xrcd = self._get(self.xrcds, args, "xrcd", "XRCD")
            c = QPCap(0, 0, 0, 0, 0)
            # the engines want an SQ: an empty one the client never sees
            sq, fd, _size = self.shm.new_ring(RingKind.SQ, SEND_WQE_HDR + SGE_SIZE, 1, 0, 0)
            self.shm.close_fd(fd)
            out_fds, sq_size = [], 0
        qp = XRCQP(self.device, self, self._handle(), self.device.allocate_qpn(scq), pd, scq,
                   xrcd, sq, c, bool(args.get("sq_sig_all")), qp_type)
        qp.held = tuple(r for r in (pd, scq, xrcd) if r is not None)
        for ref in qp.held:
            ref.refs += 1
        self.qps[qp.handle] = qp
        self.device.add_qp(qp)
        return qp, {"qp": qp.handle, "qp_num": qp.qp_num, "cap": vars(c).copy(),
                    "sq_size": sq_size, "rq_size": 0}, out_fds

    def m_modify_qp(self, args, fds, now):
        qp = self._get(self.qps, args, "qp", "QP")
        mask = arg_int(args, "attr_mask", 0, (1 << 32) - 1)
        attr = args.get("attr")
        if not isinstance(attr, dict):
            raise einval("modify_qp needs 'attr': a map of ibv_qp_attr fields")
        qp.modify(mask, attr, now)
        return {"qp_state": int(qp.state)}, []

    def m_query_qp(self, args, fds, now):
        qp = self._get(self.qps, args, "qp", "QP")
        xrcd = getattr(qp, "xrcd", None)
        init = {"qp_type": qp.qp_type, "sq_sig_all": int(qp.sq_sig_all),
                "cap": vars(qp.cap).copy(),
                "send_cq": qp.send_cq.handle if qp.send_cq else None,
                "recv_cq": qp.recv_cq.handle if qp.recv_cq and not xrcd else None,
                "srq": qp.srq.handle if qp.srq and not xrcd else None,
                "xrcd": xrcd.handle if xrcd else None}
        return {"attr": qp.query(), "init_attr": init}, []

    def m_destroy_qp(self, args, fds, now):
        self._destroy_qp(self._get(self.qps, args, "qp", "QP"), now)
        return {}, []

    def _destroy_qp(self, qp: RCQP, now: float):
        _result, parked = self.parked_rings.pop(qp.handle, (None, ()))
        for fd in parked:                       # an offloaded QP the client never opened
            self.shm.close_fd(fd)
        self.device.remove_qp(qp)
        del self.qps[qp.handle]
        for ref in getattr(qp, "held", (qp.pd, qp.send_cq, qp.recv_cq, qp.srq)):
            if ref is not None:
                ref.refs -= 1
        qp.destroy()
        self.shm.release_ring(qp.sq_ring)
        if qp.rq is not None:
            self.shm.release_ring(qp.rq.ring)

    # ---- teardown ------------------------------------------------------------------------
    def close(self, now: float):
        """The client went away: its connections are closed on its behalf (abortive close:
        DREQ or REJ to every peer), then everything it had is released, children first."""
        if self.closed:
            return
        self.closed = True
        self.device.cm.abort_owner(self, list(self.cm_ids.values()), now)
        self.cm_ids.clear()
        for qp in list(self.qps.values()):         # also closes parked (offloaded) rings
            self._destroy_qp(qp, now)
        for srq in list(self.srqs.values()):
            self._destroy_srq(srq, now)
        for cq in list(self.cqs.values()):
            self._destroy_cq(cq)
        for w in list(self.mws.values()):          # before the MRs they are bound to
            self._destroy_mw(w)
        for mr in list(self.mrs.values()):
            self._destroy_mr(mr, now)
        for x in list(self.xrcds.values()):
            self._close_xrcd(x)
        for ah in self.ahs.values():
            self.device.remove_ah(ah.handle)
        self.ahs.clear()
        self.pds.clear()
        for ch in self.channels.values():
            self.shm.close_fd(ch.fd)
        self.channels.clear()
        for fd in self.doorbell_fds:
            self.shm.close_fd(fd)

