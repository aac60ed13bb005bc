"""Configuration: embedded defaults, an optional TOML file, then command-line flags."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from rnicd.core.fault import FaultSpec
from rnicd.wire.roce import ROCEV2_PORT


def default_socket_path() -> str:
    """$RNIC_SOCKET, else $XDG_RUNTIME_DIR/rnicd/rnicd.sock, else /run/rnicd/rnicd.sock
    (root) or /tmp/rnicd-UID/rnicd.sock. Clients resolve it the same way."""
    if os.environ.get("RNIC_SOCKET"):
        return os.environ["RNIC_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "rnicd", "rnicd.sock")
    if os.geteuid() == 0:
        return "/run/rnicd/rnicd.sock"
    return f"/tmp/rnicd-{os.geteuid()}/rnicd.sock"


@dataclass
class Config:
    device: str = "rnic0"
    bind: str = "127.0.0.1"
    port: int = ROCEV2_PORT
    ctl_socket: str = field(default_factory=default_socket_path)
    fault: FaultSpec = field(default_factory=FaultSpec)
    log_level: str = "info"
    # engines (docs/engines.md): None is one per CPU the daemon may run on; 0 keeps the
    # data plane inside the daemon's loop
    engines: int | None = None
    engine_spin_us: float = 50.0
    udp_gso: bool = True        # engines: UDP GSO sends, GRO receives (docs/engines.md)

    @classmethod
    def load(cls, path: str | None = None, **overrides) -> "Config":
        cfg = cls()
        if path:
            with open(path, "rb") as f:
                data = tomllib.load(f)
            cfg.apply(data.get("daemon", {}))
            devices = data.get("device", [])
            if devices:
                cfg.apply(devices[0])       # one device per daemon for now
        cfg.apply({k: v for k, v in overrides.items() if v is not None})
        return cfg

    def apply(self, values: dict):
        for key, value in values.items():
            key = key.replace("-", "_")
            if key == "fault":
                self.fault = value if isinstance(value, FaultSpec) else (
                    FaultSpec.parse(value) if isinstance(value, str) else _fault_from(value))
            elif key in ("device", "name"):
                self.device = str(value)
            elif key in ("bind", "ctl_socket", "log_level"):
                setattr(self, key, str(value))
            elif key == "port":
                self.port = int(value)
            elif key == "engines":
                self.engines = None if value in (None, "auto") else int(value)
                if self.engines is not None and not 0 <= self.engines <= 256:
                    raise ValueError(f"engines={value}: need 0..256 (or 'auto')")
            elif key == "engine_spin_us":
                self.engine_spin_us = float(value)
                if not 0 <= self.engine_spin_us <= 1e6:
                    raise ValueError(f"engine_spin_us={value}: need 0..1000000")
            elif key == "udp_gso":
                if value not in (True, False, "on", "off"):
                    raise ValueError(f"udp_gso={value}: need on or off")
                self.udp_gso = value in (True, "on")
            else:
                raise ValueError(f"unknown configuration key '{key}'")


def _fault_from(table: dict) -> FaultSpec:
    spec = FaultSpec()
    for k, v in table.items():
        spec.set(k, v)
    return spec
