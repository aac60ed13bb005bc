"""Hosts in network namespaces, made by rnic.lab (the `rnic lab` of the package): N namespaces
on a bridge in a switch namespace, rnicd in each. Everything is torn down even when a test
fails; the fixture skips, printing why, where namespaces cannot be made."""
from __future__ import annotations

import uuid

import pytest
from rnic.lab import Lab, LabError
from rnic.lab.net import missing


@pytest.fixture
def hosts(request):
    """hosts(n) -> [rnic.lab.Host, ...]: n hosts on one bridged subnet, rnicd in each
    (.name h1.., .netns, .ip, .socket, .proc, .log, .run(...), .popen(...), .exec(...))."""
    reason = missing()
    if reason:
        print(f"SKIP netns: {reason}")
        pytest.skip(reason)
    labs = []

    def make(n: int = 3, **kw) -> list:
        lab = Lab(n, f"pytest-{uuid.uuid4().hex[:8]}", **kw)
        labs.append(lab)              # registered first: teardown removes whatever was made
        try:
            lab.up()
        except LabError as exc:
            print(f"SKIP netns: cannot build the lab here: {exc}")
            pytest.skip(f"cannot build network namespaces here: {exc}")
        return lab.hosts

    yield make
    for lab in labs:
        lab.down()
