"""pyverbs.device's module-level translators (value -> text), with pyverbs 44's texts:
``phys_state_to_str``, ``port_state_to_str``, ``translate_mtu``, ``width_to_str``,
``speed_to_str``, ``translate_link_layer``, ``translate_node_type``,
``translate_transport_type``, ``translate_event_type``, ``guid_format``, ``guid_to_hex``,
``str_from_flags``, ``translate_device_caps``, ``translate_port_cap_flags``. Unknown values
read "Invalid ..." as pyverbs' do (rdma-core's tests check for that word)."""
from rnicd.wire.abi import DeviceCapFlags, EventType, PortCapFlags

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
# the flag translators name the bits of verbs.h's enums
_DEVICE_CAPS = {int(f): f.name for f in DeviceCapFlags}
_PORT_CAPS = {int(f): f.name for f in PortCapFlags}


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
