"""pyverbs.device's module-level translators (value -> text), with pyverbs 44's texts:
``phys_state_to_str``, ``port_state_to_str``, ``translate_mtu``, ``width_to_str``,
``speed_to_str``, ``translate_link_layer``, ``translate_node_type``,
``translate_transport_type``, ``translate_event_type``, ``guid_format``, ``guid_to_hex``,
``str_from_flags``, ``translate_device_caps``, ``translate_port_cap_flags``. Unknown values
read "Invalid ..." as pyverbs' do (rdma-core's tests check for that word)."""
from rnicd.wire.abi import EventType

_PHYS_STATE = {1: "Sleep", 2: "Polling", 3: "Disabled", 4: "Port configuration training",
               5: "Link up", 6: "Link error recovery", 7: "Phy test"}
_PORT_STATE = {0: "NOP", 1: "Down", 2: "Init", 3: "Armed", 4: "Active", 5: "Defer"}
_WIDTH = {1: "1X", 2: "4X", 4: "8X", 8: "12X", 16: "2X"}
_SPEED = {0: 0.0, 1: 2.5, 2: 5.0, 4: 5.0, 8: 10.0, 16: 14.0, 32: 25.0, 64: 50.0, 128: 100.0}
_LINK_LAYER = {0: "Unspecified", 1: "InfiniBand", 2: "Ethernet"}
_NODE_TYPE = {-1: "UNKNOWN", 0: "UNSPECIFIED", 1: "CA", 2: "SWITCH", 3: "ROUTER", 4: "RNIC",
              5: "USNIC", 6: "USNIC UDP"}
_TRANSPORT = {-1: "UNKNOWN", 0: "IB", 1: "IWARP", 2: "USNIC", 3: "USNIC UDP",
              4: "UNSPECIFIED"}
# ibv_device_cap_flags and ibv_port_cap_flags (verbs.h), for the flag translators
_DEVICE_CAPS = {1 << i: n for i, n in enumerate((
    "IBV_DEVICE_RESIZE_MAX_WR", "IBV_DEVICE_BAD_PKEY_CNTR", "IBV_DEVICE_BAD_QKEY_CNTR",
    "IBV_DEVICE_RAW_MULTI", "IBV_DEVICE_AUTO_PATH_MIG", "IBV_DEVICE_CHANGE_PHY_PORT",
    "IBV_DEVICE_UD_AV_PORT_ENFORCE", "IBV_DEVICE_CURR_QP_STATE_MOD",
    "IBV_DEVICE_SHUTDOWN_PORT", "IBV_DEVICE_INIT_TYPE", "IBV_DEVICE_PORT_ACTIVE_EVENT",
    "IBV_DEVICE_SYS_IMAGE_GUID", "IBV_DEVICE_RC_RNR_NAK_GEN", "IBV_DEVICE_SRQ_RESIZE",
    "IBV_DEVICE_N_NOTIFY_CQ"))} | {
    1 << 17: "IBV_DEVICE_MEM_WINDOW", 1 << 18: "IBV_DEVICE_UD_IP_CSUM",
    1 << 19: "IBV_DEVICE_XRC", 1 << 20: "IBV_DEVICE_MEM_MGT_EXTENSIONS",
    1 << 23: "IBV_DEVICE_MEM_WINDOW_TYPE_2A", 1 << 24: "IBV_DEVICE_MEM_WINDOW_TYPE_2B",
    1 << 25: "IBV_DEVICE_RC_IP_CSUM", 1 << 26: "IBV_DEVICE_RAW_IP_CSUM",
    1 << 29: "IBV_DEVICE_MANAGED_FLOW_STEERING"}
_PORT_CAPS = {
    1 << 1: "IBV_PORT_SM", 1 << 2: "IBV_PORT_NOTICE_SUP", 1 << 3: "IBV_PORT_TRAP_SUP",
    1 << 4: "IBV_PORT_OPT_IPD_SUP", 1 << 5: "IBV_PORT_AUTO_MIGR_SUP",
    1 << 6: "IBV_PORT_SL_MAP_SUP", 1 << 7: "IBV_PORT_MKEY_NVRAM", 1 << 8: "IBV_PORT_PKEY_NVRAM",
    1 << 9: "IBV_PORT_LED_INFO_SUP", 1 << 11: "IBV_PORT_SYS_IMAGE_GUID_SUP",
    1 << 12: "IBV_PORT_PKEY_SW_EXT_PORT_TRAP_SUP", 1 << 14: "IBV_PORT_EXTENDED_SPEEDS_SUP",
    1 << 15: "IBV_PORT_CAP_MASK2_SUP", 1 << 16: "IBV_PORT_CM_SUP",
    1 << 17: "IBV_PORT_SNMP_TUNNEL_SUP", 1 << 18: "IBV_PORT_REINIT_SUP",
    1 << 19: "IBV_PORT_DEVICE_MGMT_SUP", 1 << 20: "IBV_PORT_VENDOR_CLASS_SUP",
    1 << 21: "IBV_PORT_DR_NOTICE_SUP", 1 << 22: "IBV_PORT_CAP_MASK_NOTICE_SUP",
    1 << 23: "IBV_PORT_BOOT_MGMT_SUP", 1 << 24: "IBV_PORT_LINK_LATENCY_SUP",
    1 << 25: "IBV_PORT_CLIENT_REG_SUP", 1 << 26: "IBV_PORT_IP_BASED_GIDS"}


def phys_state_to_str(phys) -> str:
    return f"{_PHYS_STATE[phys]} ({phys})" if phys in _PHYS_STATE else "Invalid physical state"


def port_state_to_str(state) -> str:
    return f"{_PORT_STATE[state]} ({state})" if state in _PORT_STATE else \
        f"Invalid state ({state})"


def translate_mtu(mtu) -> str:
    return f"{128 << mtu} ({mtu})" if 1 <= mtu <= 5 else f"Invalid MTU ({mtu})"


def width_to_str(width) -> str:
    return f"{_WIDTH[width]} ({width})" if width in _WIDTH else "Invalid width"


def speed_to_str(active_speed, ext_active_speed=0) -> str:
    if active_speed not in _SPEED:
        return "Invalid speed"
    return f"{_SPEED[active_speed]} Gbps ({active_speed})"


def translate_link_layer(link_layer) -> str:
    return _LINK_LAYER.get(link_layer, f"Invalid link layer ({link_layer})")


def translate_node_type(node_type) -> str:
    return _NODE_TYPE.get(node_type, f"Invalid node type ({node_type})")


def translate_transport_type(transport) -> str:
    return _TRANSPORT.get(transport, f"Invalid transport type ({transport})")


def translate_event_type(event) -> str:
    try:
        return EventType(event).name
    except ValueError:
        return f"Unknown event_type ({event})"


def guid_format(num: int) -> str:
    """A GUID as ibv_devinfo prints it: four groups of four hex digits, in wire order."""
    text = num.to_bytes(8, "little").hex()
    return ":".join(text[i:i + 4] for i in range(0, 16, 4))


def guid_to_hex(node_guid: int) -> str:
    return f"{node_guid:x}"


def str_from_flags(flags: int, dictionary: dict) -> str:
    return "\n  " + "".join(f"{name}\n  " for bit, name in dictionary.items() if flags & bit)


def translate_device_caps(caps: int) -> str:
    return str_from_flags(caps, _DEVICE_CAPS)


def translate_port_cap_flags(flags: int) -> str:
    return str_from_flags(flags, _PORT_CAPS)
