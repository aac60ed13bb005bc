"""`rnic lab`: a virtual RDMA cluster on one machine (docs/lab.md)."""
from .core import Host, Lab, clear
from .paths import LabError, list_labs, run_root

__all__ = ["Host", "Lab", "LabError", "clear", "list_labs", "run_root"]
