"""State a QP shares with the data plane: attributes of core/'s objects that live in the
QP's struct rnic_dp_qp (native/include/rnic_dp.h), so that there is one copy of each."""


def dp_field(name: str, doc: str, kind=int):
    """A property stored in self.dp.<name> (cffi struct field), converted with `kind`."""
    return property(lambda self: getattr(self.dp, name),
                    lambda self, v: setattr(self.dp, name, kind(v)), doc=doc)


def dp_own_rq(dp, rq, ffi) -> None:
    """The data plane takes receive WQEs from the QP's own RQ (core/resources.py's), never an
    SRQ's: its ring, entries and geometry in the QP's record."""
    ring = rq.ring
    dp.rq = ring.hdr
    dp.rq_entries = ffi.cast("uint8_t *", ring.hdr) + ring.hdr_size
    dp.rq_mask, dp.rq_entry_size = ring.num_entries - 1, ring.entry_size


# Counters the data plane keeps in each QP's struct rnic_dp_qp (rxe's names), reported with
# core/'s named counters (Device/QP.counter_snapshot).
DP_COUNTERS = ("sent_pkts", "retransmitted_pkts", "out_of_seq_request", "duplicate_request",
               "rcvd_seq_err", "nak_seq_retries", "timeout_retries", "implied_nak_seq_err",
               "early_retransmits", "duplicate_response", "out_of_seq_response")
