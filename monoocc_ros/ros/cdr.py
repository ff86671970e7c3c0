"""CDR serialization of ROS 2 messages with numpy arrays in place of Python object lists.

Why: the RViz outputs carry up to 20,000 cube centres (MarkerArray) and a PointCloud2 of every
occupied voxel. Building them as rclpy messages means one `geometry_msgs/Point` Python object
per cube (56 ms median for the markers, 18 ms for the points on 2 cores), longer than the network's
budget allows. rclpy publishes already-serialized bytes (`Publisher.publish(bytes)`), so the node
writes the bytes itself: the message structure comes from rosidl's own introspection
(`get_fields_and_field_types`, so a field added in another ROS release is followed, not
guessed), scalars with `struct`, and the big sequences straight from numpy arrays. Tests check
the bytes are exactly what `rclpy.serialization.serialize_message` gives for the message built
the slow way.

Format: the 4-byte encapsulation header (CDR little-endian), then each field in order, every
primitive aligned to its own size (at most 8) relative to the start of the payload; strings as
uint32 length (with the terminating NUL) + bytes + NUL; sequences as uint32 count + elements.
Only what ROS 2's default (XCDR1, plain) serialization of these message types uses is written.
"""

from __future__ import annotations

import importlib
import struct
from functools import cache
from typing import Any

import numpy as np

ENCAPSULATION = b"\x00\x01\x00\x00"  # CDR_LE, no options
_PRIMITIVES = {
    "boolean": ("<?", 1), "octet": ("<B", 1), "uint8": ("<B", 1), "char": ("<B", 1), "int8": ("<b", 1),
    "int16": ("<h", 2), "uint16": ("<H", 2), "int32": ("<i", 4), "uint32": ("<I", 4),
    "int64": ("<q", 8), "uint64": ("<Q", 8), "float": ("<f", 4), "double": ("<d", 8),
}  # fmt: skip


@cache
def message_class(type_name: str):
    """'geometry_msgs/Point' -> the rclpy message class."""
    pkg, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


class Writer:
    """Appends CDR fields to a bytearray, keeping the alignment relative to the payload start."""

    def __init__(self) -> None:
        self.buf = bytearray(ENCAPSULATION)

    def align(self, n: int) -> None:
        pad = (-(len(self.buf) - 4)) % n
        if pad:
            self.buf += b"\x00" * pad

    def primitive(self, kind: str, value: Any) -> None:
        fmt, size = _PRIMITIVES[kind]
        self.align(size)
        if isinstance(value, bytes):  # rclpy holds `byte`/`char` fields as one-byte bytes
            value = value[0]
        self.buf += struct.pack(fmt, value)

    def string(self, value: str) -> None:
        data = value.encode()
        self.primitive("uint32", len(data) + 1)
        self.buf += data + b"\x00"

    def array(self, kind: str, values: np.ndarray, count: bool = True) -> None:
        """A sequence (with its count) or fixed array of primitives, from a numpy array."""
        fmt, size = _PRIMITIVES[kind]
        values = np.ascontiguousarray(values, dtype=np.dtype(fmt))
        if count:
            self.primitive("uint32", values.size)
        if values.size:
            self.align(size)
            self.buf += values.tobytes()

    def struct_rows(self, rows: np.ndarray, align: int) -> None:
        """A sequence of flat structs given as the rows of a numpy array whose rows are laid out
        exactly as CDR lays out the struct (e.g. (N, 3) float64 for geometry_msgs/Point)."""
        self.primitive("uint32", len(rows))
        if len(rows):
            self.align(align)
            self.buf += np.ascontiguousarray(rows).tobytes()


def serialize(msg: Any, fast: dict[str, tuple[np.ndarray, int]] | None = None) -> bytes:
    """CDR bytes of `msg`. `fast` maps a field path of `msg` ("points", "data") to (numpy rows,
    alignment): that sequence is written from the array (as `Writer.struct_rows`, or for a
    primitive sequence as `Writer.array`), whatever the message object holds there."""
    w = Writer()
    _fields(w, msg, type(msg), fast or {}, "")
    return bytes(w.buf)


def _fields(w: Writer, msg: Any, cls: type[Any], fast: dict, prefix: str) -> None:
    for name, kind in cls.get_fields_and_field_types().items():
        path = f"{prefix}{name}"
        value = getattr(msg, name) if msg is not None else None
        if path in fast:
            rows, align = fast[path]
            base = kind[len("sequence<") : -1] if kind.startswith("sequence<") else kind
            if base in _PRIMITIVES:
                w.array(base, rows)
            else:
                w.struct_rows(rows, align)
        else:
            _value(w, value, kind)


def serialize_items(items: list[Any], cls: type, fasts: list[dict]) -> bytes:
    """CDR bytes of a message whose only field is a sequence of `cls` messages (e.g.
    MarkerArray), each item with its own `fast` fields (see `serialize`)."""
    w = Writer()
    w.primitive("uint32", len(items))
    for item, fast in zip(items, fasts, strict=True):
        _fields(w, item, cls, fast, "")
    return bytes(w.buf)


def _numbers(value: Any, kind: str) -> np.ndarray:
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(value, dtype=np.uint8)
    return np.asarray(value, dtype=np.dtype(_PRIMITIVES[kind][0]))


def _value(w: Writer, value: Any, kind: str) -> None:
    if kind in _PRIMITIVES:
        w.primitive(kind, value)
    elif (kind == "string" or kind.startswith("string<")) and not kind.endswith("]"):
        w.string(value)
    elif kind.startswith("sequence<"):
        inner = kind[len("sequence<") : -1].split(",")[0]
        if inner in _PRIMITIVES:
            w.array(inner, _numbers(value, inner))
        else:
            w.primitive("uint32", len(value))
            for item in value:
                _value(w, item, inner)
    elif kind.endswith("]"):  # fixed array, e.g. double[9], string<8>[3]
        inner = kind[: kind.rindex("[")]
        if inner in _PRIMITIVES:
            w.array(inner, _numbers(value, inner), count=False)
        else:
            for item in value:
                _value(w, item, inner)
    else:
        cls = message_class(kind)
        _fields(w, value, cls, {}, "")
