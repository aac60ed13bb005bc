"""rnicd: a software RDMA NIC in user space."""

__version__ = "0.1.0"
