#!/usr/bin/env python3
"""The far end of fieldgate's CAN tests, written with tools nobody here wrote.

python-can plays the SLCAN host on a pseudo-terminal (`slcan`), a TCP server speaks SLCAN
(`tcp`), python-can's `can.Logger` writes a candump log (`log`); every frame is encoded by
cantools from the test DBC, and what cantools decodes from those bytes is printed as one
JSON line per frame: the expected values fieldgate must match. Requests come as JSON lines
on stdin (`slcan`), or the frame count as an argument.
"""
import json
import random
import socket
import sys

import can
import cantools
from cantools.database.namedsignalvalue import NamedSignalValue

GARBAGE = [b"xyz\r", b"t12\r", b"t1238AABB\r", b"\x00\xff\xfe\r", b"T1FFFFFFF9\r", b"#!"]


def plain(v):
    if isinstance(v, NamedSignalValue):
        return v.name
    return float(v) if isinstance(v, (int, float)) else v


def random_message(db, rng):
    """A random message of the DBC, encoded and decoded back by cantools."""
    m = rng.choice(db.messages)
    values = {}
    mux = {}
    for s in m.signals:
        if s.is_multiplexer:
            mux[s.name] = rng.randint(0, 1)
    for s in m.signals:
        if s.name in mux:
            values[s.name] = mux[s.name]
            continue
        if s.multiplexer_ids is not None and mux.get(s.multiplexer_signal) not in s.multiplexer_ids:
            continue
        if s.choices:
            values[s.name] = rng.choice(list(s.choices.keys()))
        elif s.is_float:
            values[s.name] = rng.uniform(s.minimum, s.maximum)
        else:
            raw = rng.randint(round((s.minimum - s.offset) / s.scale), round((s.maximum - s.offset) / s.scale))
            values[s.name] = raw * s.scale + s.offset
    data = m.encode(values, strict=False)
    decoded = {k: plain(v) for k, v in m.decode(data, decode_choices=True).items()}
    return m, data, decoded


def line(m, data):
    """The SLCAN line of a frame (what an adapter sends)."""
    if m.is_extended_frame:
        return b"T%08X%d%s\r" % (m.frame_id, len(data), data.hex().upper().encode())
    return b"t%03X%d%s\r" % (m.frame_id, len(data), data.hex().upper().encode())


def emit(obj):
    print(json.dumps(obj), flush=True)


def slcan(dbc, channel, seed):
    db, rng = cantools.database.load_file(dbc), random.Random(seed)
    bus = can.Bus(interface="slcan", channel=channel, bitrate=500000, sleep_after_open=0)
    emit({"ready": True})
    for req in sys.stdin:
        req = json.loads(req)
        if req["op"] == "send":
            for i in range(req["count"]):
                if req.get("garbage_every") and i % req["garbage_every"] == req["garbage_every"] - 1:
                    bus.serialPortOrig.write(GARBAGE[(i // req["garbage_every"]) % len(GARBAGE)])
                m, data, decoded = random_message(db, rng)
                bus.send(can.Message(arbitration_id=m.frame_id, is_extended_id=m.is_extended_frame, data=data))
                emit({"message": m.name, "id": m.frame_id, "signals": decoded})
            emit({"done": True})
        elif req["op"] == "recv":
            msg = bus.recv(timeout=req.get("timeout", 10))
            while msg is not None and msg.arbitration_id == 0 and not msg.data:
                msg = bus.recv(timeout=req.get("timeout", 10))
            emit({"recv": None if msg is None else {"id": msg.arbitration_id, "ext": msg.is_extended_id, "data": msg.data.hex()}})
        elif req["op"] == "close":
            bus.shutdown()
            emit({"closed": True})
            return


def tcp(dbc, port, count, cut, seed):
    """Serves `count` frames to the first connection, closing it after `cut`, and the rest
    to the next one."""
    db, rng = cantools.database.load_file(dbc), random.Random(seed)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    emit({"ready": True})
    frames = [random_message(db, rng) for _ in range(count)]
    for half, part in enumerate((frames[:cut], frames[cut:])):
        conn, _ = srv.accept()
        conn.settimeout(10)
        opened = b""
        while b"L\r" not in opened and b"O\r" not in opened:
            opened += conn.recv(64)
        for m, data, decoded in part:
            conn.sendall(line(m, data))
            emit({"message": m.name, "id": m.frame_id, "signals": decoded})
        # The second half ends with a line cut off mid-frame by the disconnect.
        if half == 1:
            conn.sendall(b"t123")
        conn.close()
        emit({"closed": True})
    srv.close()


def log(dbc, path, count, seed):
    db, rng = cantools.database.load_file(dbc), random.Random(seed)
    with can.Logger(path) as logger:
        for i in range(count):
            m, data, decoded = random_message(db, rng)
            logger.on_message_received(can.Message(
                timestamp=1_700_000_000.0 + i * 0.01, arbitration_id=m.frame_id,
                is_extended_id=m.is_extended_frame, data=data, channel="can0"))
            emit({"message": m.name, "id": m.frame_id, "signals": decoded})


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "slcan":
        slcan(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "tcp":
        tcp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif mode == "log":
        log(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
