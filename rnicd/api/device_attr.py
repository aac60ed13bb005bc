"""What query_device / query_device_ex report: struct ibv_device_attr and ibv_device_attr_ex
(verbs.h), truthful about what this device offers.

Capability bits set (each one implemented): PORT_ACTIVE_EVENT (IBV_EVENT_PORT_ACTIVE/ERR
follow the netdev), SYS_IMAGE_GUID, RC_RNR_NAK_GEN (the RC responder sends RNR NAKs), XRC
(XRC domains, XRC SRQs, INI/TGT QPs: IBTA Annex A14), MEM_WINDOW and MEM_WINDOW_TYPE_2B
(type 1 and type 2B memory windows, max_mw of them).
Everything rnicd does not offer reads zero: type 2A windows, on-demand paging, device
memory, raw packet QPs and TSO, RSS / work queues, flow steering, tag matching, packet pacing,
CQ moderation, completion timestamps, PCIe atomics, multicast.
"""
from rnicd.wire.abi import (
    IBV_NODE_CA,
    IBV_TRANSPORT_IB,
    AtomicCap,
    DeviceCapFlags,
)

# A software device has no IEEE OUI: 0xffffff says so, as rxe reports it (programs and
# rdma-core's tests take vendor_id 0 for a device that failed to answer).
VENDOR_ID = 0xFFFFFF
DEVICE_CAP_FLAGS = (DeviceCapFlags.IBV_DEVICE_PORT_ACTIVE_EVENT
                    | DeviceCapFlags.IBV_DEVICE_SYS_IMAGE_GUID
                    | DeviceCapFlags.IBV_DEVICE_RC_RNR_NAK_GEN
                    | DeviceCapFlags.IBV_DEVICE_XRC
                    | DeviceCapFlags.IBV_DEVICE_MEM_WINDOW
                    | DeviceCapFlags.IBV_DEVICE_MEM_WINDOW_TYPE_2B)


def device_attr(d) -> dict:
    """struct ibv_device_attr of a core Device (plus its name, transport and node type)."""
    lim = d.limits
    return {
        "name": d.name, "fw_ver": "rnicd-0.1", "node_guid": d.node_guid,
        "sys_image_guid": d.node_guid, "max_mr_size": lim.max_mr_size,
        "page_size_cap": 4096, "vendor_id": VENDOR_ID, "vendor_part_id": 0, "hw_ver": 0,
        "max_qp": lim.max_qp, "max_qp_wr": lim.max_qp_wr,
        "device_cap_flags": int(DEVICE_CAP_FLAGS),
        "max_sge": lim.max_sge, "max_sge_rd": lim.max_sge, "max_cq": lim.max_cq,
        "max_cqe": lim.max_cqe, "max_mr": lim.max_mr, "max_pd": lim.max_pd,
        "max_qp_rd_atom": lim.max_qp_rd_atom, "max_ee_rd_atom": 0,
        "max_res_rd_atom": lim.max_qp_rd_atom * lim.max_qp,
        "max_qp_init_rd_atom": lim.max_qp_init_rd_atom, "max_ee_init_rd_atom": 0,
        "atomic_cap": int(AtomicCap.IBV_ATOMIC_HCA), "max_ee": 0, "max_rdd": 0,
        "max_mw": lim.max_mw, "max_raw_ipv6_qp": 0, "max_raw_ethy_qp": 0, "max_mcast_grp": 0,
        "max_mcast_qp_attach": 0, "max_total_mcast_qp_attach": 0, "max_ah": lim.max_ah,
        "max_fmr": 0, "max_map_per_fmr": 0, "max_srq": lim.max_srq,
        "max_srq_wr": lim.max_srq_wr, "max_srq_sge": lim.max_srq_sge,
        "max_pkeys": 1, "local_ca_ack_delay": 15, "phys_port_cnt": 1,
        "transport_type": IBV_TRANSPORT_IB, "node_type": IBV_NODE_CA,
    }


def device_attr_ex(d) -> dict:
    """struct ibv_device_attr_ex: ``orig_attr`` and the extended capabilities, every one of
    which rnicd does not offer (zero), but the extended cap flags."""
    return {
        "orig_attr": device_attr(d),
        "comp_mask": 0,
        "odp_caps": {"general_caps": 0, "rc_odp_caps": 0, "uc_odp_caps": 0,
                     "ud_odp_caps": 0, "xrc_odp_caps": 0},
        "completion_timestamp_mask": 0,
        "hca_core_clock": 0,
        "device_cap_flags_ex": int(DEVICE_CAP_FLAGS),
        "tso_caps": {"max_tso": 0, "supported_qpts": 0},
        "rss_caps": {"supported_qpts": 0, "max_rwq_indirection_tables": 0,
                     "max_rwq_indirection_table_size": 0, "rx_hash_fields_mask": 0,
                     "rx_hash_function": 0},
        "max_wq_type_rq": 0,
        "packet_pacing_caps": {"qp_rate_limit_min": 0, "qp_rate_limit_max": 0,
                               "supported_qpts": 0},
        "raw_packet_caps": 0,
        "tm_caps": {"max_rndv_hdr_size": 0, "max_num_tags": 0, "flags": 0, "max_ops": 0,
                    "max_sge": 0},
        "cq_mod_caps": {"max_cq_count": 0, "max_cq_period": 0},
        "max_dm_size": 0,
        "pci_atomic_caps": {"fetch_add": 0, "swap": 0, "compare_swap": 0},
        "phys_port_cnt_ex": 1,
    }
