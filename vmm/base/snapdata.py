"""Plain-data helpers for snapshots: bytes and counters in a snapshot's JSON.

The floor of akvm.devices.state (the device models' state protocol) and of
akvm.vcpu.state, which may not import each other.
"""
from __future__ import annotations

import base64


def pack(data: bytes | bytearray | memoryview) -> str:
    """Bytes in a snapshot's JSON."""
    return base64.b64encode(bytes(data)).decode()


def unpack(text: str, size: int | None = None) -> bytes:
    """pack()'s inverse; with `size`, the data must be exactly that long (ValueError)."""
    data = base64.b64decode(text, validate=True)
    if size is not None and len(data) != size:
        raise ValueError(f"{len(data)} bytes where {size} were saved")
    return data


def save_counters(obj, names: tuple[str, ...]) -> dict:
    """The integer attributes `names` of obj."""
    return {name: getattr(obj, name) for name in names}


def restore_counters(obj, state: dict, names: tuple[str, ...]) -> None:
    """save_counters()'s inverse."""
    for name in names:
        setattr(obj, name, int(state[name]))
