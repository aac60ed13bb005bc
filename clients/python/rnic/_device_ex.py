"""The extended device query's structures (struct ibv_device_attr_ex and its capability
structs), GID entries and device-list entries, with pyverbs.device's names."""
from rnicd.wire.abi import GIDType, GIDTypeSysfs

from .addr import GID


class _Struct:
    """Attributes from a reply map (untrusted: identifier-like str keys only)."""

    _fields: tuple = ()

    def __init__(self, d: dict | None = None):
        d = d if isinstance(d, dict) else {}
        for f in self._fields:
            v = d.get(f, 0)
            setattr(self, f, v if isinstance(v, (int, str, bytes)) else 0)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({body})"


class ODPCaps(_Struct):
    _fields = ("general_caps", "rc_odp_caps", "uc_odp_caps", "ud_odp_caps", "xrc_odp_caps")


class TSOCaps(_Struct):
    _fields = ("max_tso", "supported_qpts")


class RSSCaps(_Struct):
    _fields = ("supported_qpts", "max_rwq_indirection_tables",
               "max_rwq_indirection_table_size", "rx_hash_fields_mask", "rx_hash_function")


class PacketPacingCaps(_Struct):
    _fields = ("qp_rate_limit_min", "qp_rate_limit_max", "supported_qpts")


class TMCaps(_Struct):
    _fields = ("max_rndv_hdr_size", "max_num_tags", "flags", "max_ops", "max_sge")


class CQModerationCaps(_Struct):
    _fields = ("max_cq_count", "max_cq_period")


class PCIAtomicCaps(_Struct):
    _fields = ("fetch_add", "swap", "compare_swap")


class DeviceAttrEx:
    """struct ibv_device_attr_ex: ``orig_attr`` (a DeviceAttr) and the extended fields."""

    _ints = ("comp_mask", "completion_timestamp_mask", "hca_core_clock",
             "device_cap_flags_ex", "max_wq_type_rq", "raw_packet_caps", "max_dm_size",
             "phys_port_cnt_ex")
    _structs = {"odp_caps": ODPCaps, "tso_caps": TSOCaps, "rss_caps": RSSCaps,
                "packet_pacing_caps": PacketPacingCaps, "tm_caps": TMCaps,
                "cq_mod_caps": CQModerationCaps, "pci_atomic_caps": PCIAtomicCaps}

    def __init__(self, d: dict, device_attr_cls):
        self.orig_attr = device_attr_cls(d.get("orig_attr") or {})
        for f in self._ints:
            v = d.get(f, 0)
            setattr(self, f, v if isinstance(v, int) and not isinstance(v, bool) else 0)
        for f, cls in self._structs.items():
            setattr(self, f, cls(d.get(f)))
        # struct ibv_odp_caps.per_transport_caps in pyverbs 44 is flattened into odp_caps;
        # xrc_odp_caps is a field of ibv_device_attr_ex itself.
        self.xrc_odp_caps = self.odp_caps.xrc_odp_caps

    def __repr__(self) -> str:
        return f"DeviceAttrEx(device_cap_flags_ex={self.device_cap_flags_ex:#x}, ...)"


class GIDEntry:
    """struct ibv_gid_entry: gid_subnet_prefix, gid_interface_id, gid_index, port_num,
    gid_type (IBV_GID_TYPE_*), ndev_ifindex; gid_str() as pyverbs."""

    def __init__(self, raw: bytes, index: int, port_num: int, gid_type: int,
                 ndev_ifindex: int):
        self._gid = GID(raw)
        self.gid_subnet_prefix = int.from_bytes(raw[:8], "little")
        self.gid_interface_id = int.from_bytes(raw[8:], "little")
        self.gid_index = index
        self.port_num = port_num
        self.gid_type = gid_type
        self.ndev_ifindex = ndev_ifindex

    def gid_str(self) -> str:
        return self._gid.gid

    def __repr__(self) -> str:
        return (f"GIDEntry(index={self.gid_index}, gid={self.gid_str()}, "
                f"type={self.gid_type}, ndev_ifindex={self.ndev_ifindex})")


def sysfs_gid_type(gid_type: int) -> int:
    """ibv_query_gid_type's answer (enum ibv_gid_type_sysfs) for an ibv_gid_type."""
    if gid_type == GIDType.IBV_GID_TYPE_ROCE_V2:
        return int(GIDTypeSysfs.IBV_GID_TYPE_SYSFS_ROCE_V2)
    return int(GIDTypeSysfs.IBV_GID_TYPE_SYSFS_IB_ROCE_V1)


class Device:
    """An entry of get_device_list(): name (bytes), guid, node_type, transport_type, index."""

    def __init__(self, name, guid, node_type, transport_type, index):
        self.name = name.encode() if isinstance(name, str) else name
        self.guid = guid
        self.node_type = node_type
        self.transport_type = transport_type
        self.index = index

    def __repr__(self) -> str:
        return f"Device({self.name!r}, guid={self.guid:#x})"
