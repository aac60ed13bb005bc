"""perftest-style text output of `rnic perf` (the --json form is the result dict itself)."""
from __future__ import annotations

from .endpoint import Params

RULE = "-" * 95
TITLES = {"write": "RDMA_Write", "read": "RDMA_Read", "send": "Send",
          "atomic": "Atomic FETCH_AND_ADD"}
BW_HEAD = (" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   "
           "MsgRate[Mpps]")
LAT_HEAD = (" #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]"
            "    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]")


def print_header(p: Params) -> None:
    kind = "BW" if p.is_bw else "Latency"
    print(RULE)
    print(f"{TITLES[p.verb] + ' ' + kind + ' Test':^95}")
    print(f" Number of qps   : {p.qps:<8} Transport type : IB (RoCEv2 over rnicd)")
    print(" Connection type : RC       Using SRQ      : OFF")
    print(f" TX depth        : {p.tx_depth:<8} Post list      : {p.post_list}")
    print(f" Mtu             : {p.mtu:<8} Max inline data: {p.inline}[B]")
    print(f" {'Events' if p.event else 'Polling'} for completions")
    print(RULE)
    print(BW_HEAD if p.is_bw else LAT_HEAD)


def print_result(p: Params, r: dict) -> None:
    if p.is_bw:
        print(f" {r['bytes']:<10} {r['iterations']:<14} {r['bw_peak_MBps']:<18.2f} "
              f"{r['bw_avg_MBps']:<20.2f} {r['msg_rate_Mpps']:.6f}", flush=True)
    else:
        print(f" {r['bytes']:<6} {r['iterations']:<11} {r['t_min_us']:<14.2f} "
              f"{r['t_max_us']:<12.2f} {r['t_typical_us']:<18.2f} {r['t_avg_us']:<14.2f} "
              f"{r['t_stdev_us']:<15.2f} {r['p99_us']:<22.2f} {r['p999_us']:.2f}", flush=True)


def print_footer() -> None:
    print(RULE)
