"""Connection management (IBTA ch. 12) in the daemon, as rdma_cm over RoCEv2 does it: CM MADs
to and from QP1 (the GSI), the per-connection state machine, and establishment offload."""
