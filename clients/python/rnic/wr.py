"""Work requests: SGE, SendWR, RecvWR (struct ibv_sge / ibv_send_wr / ibv_recv_wr), as pyverbs.wr.

Plain Python objects: nothing is checked here; QP.post_send / post_recv validate a WR
completely before writing it into the ring. ``imm_data`` is an int (0..2**32-1): rnicd
sends it big-endian on the wire and the receiver's WC.imm_data is the same int. For
IBV_WR_LOCAL_INV and IBV_WR_SEND_WITH_INV it is the rkey to invalidate (ibv_send_wr's
invalidate_rkey shares its place), as pyverbs uses it.
"""
from rnicd.wire.abi import SendFlags, WROpcode

from .base import inc_rkey
from .errors import einval

# Work requests remember their last successful check (rnic._post): a WR posted again
# unchanged, as a benchmark or a ping-pong loop does, is not checked again. Setting any field
# of a WR forgets it; setting a field of any SGE moves this epoch, which forgets them all.
sge_epoch = 0


class SGE:
    """A scatter/gather element: ``addr`` (an address inside an MR, e.g. ``mr.buf + off``),
    ``length``, ``lkey``."""

    __slots__ = ("addr", "length", "lkey")

    def __init__(self, addr, length, lkey):
        self.addr = addr
        self.length = length
        self.lkey = lkey

    def __setattr__(self, name, value) -> None:
        global sge_epoch
        sge_epoch += 1
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"SGE(addr={self.addr:#x}, length={self.length}, lkey={self.lkey:#x})"


def _sg_list(sg, num_sge):
    if sg is None:
        sg = []
    elif isinstance(sg, SGE):
        sg = [sg]
    else:
        sg = list(sg)
    if num_sge is None or num_sge == 0:
        num_sge = len(sg)
    if num_sge < 0 or num_sge > len(sg):
        raise einval(f"num_sge={num_sge} but {len(sg)} SGE(s) were given")
    return sg[:num_sge]


class _SGListMixin:
    """num_sge and sg_list, as pyverbs has them on both kinds of work request; and the
    memory of the last successful check, ``_checked``, forgotten when a field is set."""

    def __setattr__(self, name, value) -> None:
        self.__dict__.pop("_checked", None)
        object.__setattr__(self, name, value)

    @property
    def num_sge(self) -> int:
        return len(self.sg)

    @property
    def sg_list(self):
        return self.sg

    @sg_list.setter
    def sg_list(self, val) -> None:
        self.sg = _sg_list(val, 0)


class RecvWR(_SGListMixin):
    """A receive work request; chain several with ``next_wr``."""

    def __init__(self, wr_id=0, num_sge=0, sg=None, next_wr=None):
        self.wr_id = wr_id
        self.sg = _sg_list(sg, num_sge)
        self.next_wr = next_wr


    def __repr__(self) -> str:
        return f"RecvWR(wr_id={self.wr_id}, sg={self.sg!r})"


class SendWR(_SGListMixin):
    """A send work request. The opcode-specific parts are set with set_wr_rdma,
    set_wr_atomic and set_wr_ud; chain several with ``next_wr``.

    As in pyverbs, ``send_flags`` defaults to IBV_SEND_SIGNALED."""

    def __init__(self, wr_id=0, opcode=WROpcode.IBV_WR_SEND, num_sge=0, imm_data=0, sg=None,
                 send_flags=SendFlags.IBV_SEND_SIGNALED, next_wr=None):
        self.wr_id = wr_id
        self.opcode = opcode
        self.sg = _sg_list(sg, num_sge)
        self.imm_data = imm_data
        self.send_flags = send_flags
        self.next_wr = next_wr
        self.remote_addr = 0
        self.rkey = 0
        self.compare_add = 0
        self.swap = 0
        self.ah = None
        self.remote_qpn = 0
        self.remote_qkey = 0
        self.remote_srqn = 0
        self.bind_mw = None         # IBV_WR_BIND_MW: set_bind_wr
        self.bind_info = None


    def set_wr_rdma(self, rkey, addr) -> None:
        """Remote key and address of an RDMA READ/WRITE."""
        self.rkey = rkey
        self.remote_addr = addr

    def set_wr_atomic(self, rkey, addr, compare_add, swap=0) -> None:
        """Remote key and address of an atomic; compare (or add) and swap operands."""
        self.rkey = rkey
        self.remote_addr = addr
        self.compare_add = compare_add
        self.swap = swap

    def set_wr_ud(self, ah, rqpn, rqkey) -> None:
        """Destination of a UD send: an AH, the remote QP number and Q_Key."""
        self.ah = ah
        self.remote_qpn = rqpn
        self.remote_qkey = rqkey

    def set_qp_type_xrc(self, remote_srqn) -> None:
        """XRC: the responder's XRC SRQ that serves this WR (qp_type.xrc.remote_srqn, sent
        in the XRCETH, IBTA Annex A14); see SRQ.get_srq_num()."""
        self.remote_srqn = remote_srqn

    def set_bind_wr(self, mw, bind_info) -> None:
        """IBV_WR_BIND_MW: bind window mw as bind_info (an MWBindInfo) says; the new rkey,
        ``ibv_inc_rkey(mw.rkey)``, is ``self.rkey`` (ibv_send_wr.bind_mw.rkey)."""
        self.bind_mw = mw
        self.bind_info = bind_info
        self.rkey = inc_rkey(mw.rkey)

    def __repr__(self) -> str:
        try:
            op = WROpcode(self.opcode).name
        except ValueError:
            op = str(self.opcode)
        return (f"SendWR(wr_id={self.wr_id}, opcode={op}, send_flags={self.send_flags:#x}, "
                f"sg={self.sg!r})")


def wr_chain(wr) -> list:
    """The WRs of a post call: one WR and its ``next_wr`` chain, or a list/tuple of WRs."""
    if getattr(wr, "next_wr", 0) is None:
        return [wr]                     # the common case: one WR
    if isinstance(wr, (list, tuple)):
        out = []
        for w in wr:
            if getattr(w, "next_wr", None) is None and not isinstance(w, (list, tuple)):
                out.append(w)           # the common case: a list of single WRs
            else:
                out.extend(wr_chain(w))
        return out
    out, seen = [], set()
    while wr is not None:
        if id(wr) in seen:
            raise einval("the work request chain (next_wr) loops")
        seen.add(id(wr))
        out.append(wr)
        wr = getattr(wr, "next_wr", None)
    return out
