"""Engine failover between hosts in network namespaces (issue 23, docs/failover.md): the
mixed WRITE/SEND/READ stream of tests/integration/test_failover.py, 256 MiB with at least 10
SIGKILLs of random engines on both hosts, without and with faults on both daemons."""
import pytest
import rnic.enums as e
from kills import engines, mixed_stream_under_kills


@pytest.mark.parametrize("fault", [None, "drop=0.02,reorder=0.01,dup=0.01,seed=5"])
def test_mixed_stream_between_hosts_survives_ten_kills(hosts, fault):
    ha, hb = hosts(2, fault=fault)
    if len(engines(ha)) < 2:
        pytest.skip("one CPU: the hosts run one engine each (the test kills two per host)")
    mixed_stream_under_kills(ha, hb, e.IBV_MTU_1024, 21)
