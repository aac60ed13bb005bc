"""One communication identifier (rdma_cm_id) and its connection state (IBTA 12.9, the CM
state machine, merged with rdma_cm's view of it). The transitions live in core/cm/agent.py;
docs/connection-management.md draws them.
"""
from __future__ import annotations

from enum import Enum

from rnicd.wire import cma


class CMState(Enum):
    IDLE = "idle"                # created, or bound; may listen or connect
    LISTEN = "listen"
    REQ_SENT = "req_sent"        # active: REQ (SIDR_REQ) out, waiting for REP (or REJ, MRA)
    REQ_RCVD = "req_rcvd"        # passive: CONNECT_REQUEST given to the consumer
    REP_RCVD = "rep_rcvd"        # active, no QP on the id: CONNECT_RESPONSE given, RTU
                                 # waits for rdma_establish
    REP_SENT = "rep_sent"        # passive: accepted, waiting for RTU
    ESTABLISHED = "established"
    DREQ_SENT = "dreq_sent"      # disconnect asked, waiting for DREP
    TIMEWAIT = "timewait"        # disconnected; the record answers late DREQs, then goes
    CLOSED = "closed"            # rejected, timed out or gone: only the handle is left


# a handshake in these states still counts against its listener's backlog
HANDSHAKING = (CMState.REQ_RCVD, CMState.REP_SENT)


class CMId:
    """A CM identifier owned by one client session (owner None: orphaned by a dead client,
    finishing its disconnect on the client's behalf)."""

    def __init__(self, owner, handle: int, ps: int = cma.RDMA_PS_TCP):
        self.owner, self.handle, self.ps = owner, handle, ps
        # which of the owner's connections gets its events (an opaque token the io layer
        # gives: librdmacm's event channel; None: the context's own connection)
        self.route = None
        self.state = CMState.IDLE
        self.qp = None                        # the QP the connection drives (RC) or names (UD)
        self.qp_num = 0                       # an external QP's number (conn_param.qp_num)
        self.srq = 0                          # ... and whether it receives through an SRQ
        self.xrc = False                      # an XRC connection: INI QP to TGT QP (A14)
        self.qkey = cma.RDMA_UDP_QKEY if self.ud else 0
        self.ack_timeout: int | None = None   # RDMA_OPTION_ID_ACK_TIMEOUT
        self.tos = 0                          # RDMA_OPTION_ID_TOS
        self.tid = 0                          # passive SIDR: the SIDR_REQ's TransactionID
        self.listener: CMId | None = None     # passive side: the listening id
        self.local_ip: str | None = None
        self.local_port = 0
        self.remote_ip: str | None = None
        self.remote_port = 0
        self.local_comm_id = 0
        self.remote_comm_id = 0
        self.remote_qpn = 0
        self.remote_psn = 0
        self.local_psn = 0
        self.req = None                       # the REQ (sent or received)
        self.conn_param: dict = {}            # active side: what connect() asked for
        self.private_data = b""               # passive side: the consumer's part of the REQ
        self.path_mtu = 0
        self.responder_resources = 0          # the RC QP's max_dest_rd_atomic, and
        self.initiator_depth = 0              # max_rd_atomic, once negotiated
        self.retry = 0
        self.rnr_retry = 0
        self.last_mad: bytes | None = None    # resent on timeout and on duplicates
        self.retries_left = 0
        self.deadline: float | None = None
        # listener only
        self.backlog = 0
        self.children: set[CMId] = set()
        self.offload = None                   # core/cm/offload.Offload when offloaded

    @property
    def ud(self) -> bool:
        """A UDP/IPoIB id: connect and accept are SIDR (IBTA 12.11), the QP is UD."""
        return self.ps in cma.UD_PORT_SPACES

    @property
    def local_qpn(self) -> int:
        return self.qp.qp_num if self.qp is not None else self.qp_num

    @property
    def handshaking(self) -> bool:
        return self.state in HANDSHAKING

    def __repr__(self) -> str:
        return (f"CMId({self.handle}, {self.state.value}, comm {self.local_comm_id:#x}"
                f"->{self.remote_comm_id:#x}, peer {self.remote_ip})")
