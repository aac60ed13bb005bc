"""Where a lab lives: its run directory (state file, control sockets, logs, pid files), its
tag (in every namespace and interface name, so labs coexist and leftovers are found by name
alone) and its state file."""
from __future__ import annotations

import hashlib
import json
import os
import re

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
STATE = "lab.json"


class LabError(Exception):
    """A lab cannot be made, found or used; the message says what to do."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise LabError(f"bad lab name {name!r}: 1-32 of letters, digits, '_', '-', '.', "
                       "starting with a letter or digit")
    return name


def run_root() -> str:
    """$RNIC_LAB_DIR, else /run/rnic-lab (root), else $XDG_RUNTIME_DIR/rnic-lab, else
    /tmp/rnic-lab-UID."""
    if os.environ.get("RNIC_LAB_DIR"):
        return os.environ["RNIC_LAB_DIR"]
    if os.geteuid() == 0:
        return "/run/rnic-lab"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "rnic-lab")
    return f"/tmp/rnic-lab-{os.geteuid()}"


def lab_dir(name: str, root: str | None = None) -> str:
    return os.path.join(root or run_root(), check_name(name))


def tag(name: str) -> str:
    """Six hex digits from the name: `rnl-<tag>-h1` and so on (namespace names), `l<tag>h1`
    (switch-side veths, within IFNAMSIZ: 1 + 6 + 1 + up to 4 digits + NUL)."""
    return hashlib.sha256(check_name(name).encode()).hexdigest()[:6]


def load_state(name: str, root: str | None = None) -> dict | None:
    try:
        with open(os.path.join(lab_dir(name, root), STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_state(state: dict) -> None:
    path = os.path.join(state["run_dir"], STATE)
    with open(path + ".tmp", "w") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def list_labs(root: str | None = None) -> list[str]:
    root = root or run_root()
    try:
        return sorted(d for d in os.listdir(root)
                      if NAME_RE.match(d) and os.path.isdir(os.path.join(root, d)))
    except OSError:
        return []
