"""Every byte layout rnicd speaks: RoCEv2 headers, opcode tables, the control protocol, enums.

Pure: no I/O, no clocks. Shared by the daemon and the clients.
"""
