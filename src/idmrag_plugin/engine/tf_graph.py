"""Read the constant tensors of a frozen TensorFlow GraphDef without TensorFlow.

Only the protobuf wire format is needed: a GraphDef is a list of NodeDefs, and a
frozen graph keeps every weight as the ``value`` attribute of a ``Const`` node.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}


@dataclass
class GraphNode:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    value: np.ndarray | None = None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """Yield (field number, wire type, payload) for one protobuf message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _tensor(buf: bytes) -> np.ndarray:
    dtype = np.float32
    shape: list[int] = []
    content = b""
    floats: list[float] = []
    ints: list[int] = []
    for number, wire, payload in _fields(buf):
        if number == 1:
            dtype = _DTYPES.get(int(payload), np.float32)  # type: ignore[arg-type]
        elif number == 2:
            for dim_no, _, dim in _fields(payload):  # type: ignore[arg-type]
                if dim_no == 2:
                    for size_no, _, size in _fields(dim):  # type: ignore[arg-type]
                        if size_no == 1:
                            shape.append(int(size))  # type: ignore[arg-type]
        elif number == 4:
            content = payload  # type: ignore[assignment]
        elif number == 5:
            if wire == 2:
                floats.extend(np.frombuffer(payload, dtype="<f4").tolist())  # type: ignore[arg-type]
            else:
                floats.append(float(np.frombuffer(payload, dtype="<f4")[0]))  # type: ignore[arg-type]
        elif number == 7:
            if wire == 2:
                pos, data = 0, payload
                while pos < len(data):  # type: ignore[arg-type]
                    value, pos = _varint(data, pos)  # type: ignore[arg-type]
                    ints.append(value)
            else:
                ints.append(int(payload))  # type: ignore[arg-type]
    count = int(np.prod(shape)) if shape else 1
    if content:
        array = np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<")).copy()
    elif floats:
        array = np.array(floats, dtype=dtype)
    elif ints:
        array = np.array(ints, dtype=dtype)
    else:
        array = np.zeros(count, dtype=dtype)
    if array.size == 1 and count > 1:  # protobuf repeats a splatted scalar once
        array = np.full(count, array[0], dtype=dtype)
    return array.reshape(shape) if shape else array.reshape(())


def read_graph(path: str) -> dict[str, GraphNode]:
    """Parse a frozen GraphDef file into nodes keyed by name."""
    with open(path, "rb") as handle:
        data = handle.read()
    nodes: dict[str, GraphNode] = {}
    for number, _, payload in _fields(data):
        if number != 1:
            continue
        node = GraphNode(name="", op="")
        for field_no, _, value in _fields(payload):  # type: ignore[arg-type]
            if field_no == 1:
                node.name = value.decode()  # type: ignore[union-attr]
            elif field_no == 2:
                node.op = value.decode()  # type: ignore[union-attr]
            elif field_no == 3:
                node.inputs.append(value.decode())  # type: ignore[union-attr]
            elif field_no == 5:
                key, attr = "", b""
                for entry_no, _, entry in _fields(value):  # type: ignore[arg-type]
                    if entry_no == 1:
                        key = entry.decode()  # type: ignore[union-attr]
                    elif entry_no == 2:
                        attr = entry  # type: ignore[assignment]
                if key == "value":
                    for attr_no, _, tensor in _fields(attr):
                        if attr_no == 8:
                            node.value = _tensor(tensor)  # type: ignore[arg-type]
        nodes[node.name] = node
    return nodes
