"""Engine failover between hosts in network namespaces (issue 23, docs/failover.md): the
mixed WRITE/SEND/READ stream of tests/integration/test_failover.py, 256 MiB with at least 10
SIGKILLs of random engines on both hosts, without and with faults on both daemons."""
import pytest
import rnic.enums as e
from kills import MiB, engines, killer, mixed_stream, wait_replaced
from rc_pair import Side, connect


@pytest.mark.parametrize("fault", [None, "drop=0.02,reorder=0.01,dup=0.01,seed=5"])
def test_mixed_stream_between_hosts_survives_ten_kills(hosts, fault):
    ha, hb = hosts(2, fault=fault)
    if len(engines(ha)) < 2:
        pytest.skip("one CPU: the hosts run one engine each (the test kills two per host)")
    a, b = Side(ha, mr_size=24 * MiB, cqe=512), Side(hb, mr_size=24 * MiB, cqe=512)
    try:
        connect(a, b, mtu=e.IBV_MTU_1024, timeout=14, retry_cnt=7)
        a.mr.write(bytes(range(256)) * (64 * 1024), 16 * MiB, 0)
        b.mr.write(bytes(range(255, -1, -1)) * (64 * 1024), 16 * MiB, 0)
        kills = []
        sent, landed = mixed_stream(a, b, 256 * MiB, 16, killer((ha, hb), kills, 400, 21))
        assert len(kills) >= 10
        assert landed == sent
        for h, k, pid in kills:
            wait_replaced(h, k, pid)
        for h, side in ((ha, a), (hb, b)):
            rows = engines(h)
            mine = [k for hh, k, _ in kills if hh is h]
            assert all(r["state"] == "running" for r in rows)
            assert [r["restarts"] for r in rows[:2]] == [mine.count(0), mine.count(1)]
            assert side.ctx.get_counters()["engine_failovers"] == len(mine)
    finally:
        a.close()
        b.close()
