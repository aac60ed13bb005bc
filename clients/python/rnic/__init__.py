"""rnic — the Python client of rnicd, a software RDMA NIC in user space.

The API has the shape and names of rdma-core's pyverbs: ``rnic.device.Context``,
``rnic.pd.PD``, ``rnic.mr.MR``, ``rnic.cq.CQ``, ``rnic.qp.QP``, ``rnic.wr.SendWR``...
Control verbs travel over rnicd's Unix socket; post_send, post_recv and poll use
shared-memory rings, as a hardware provider would. Every object is a context manager.
See docs/python-client.md.
"""
__version__ = "0.1.0"
