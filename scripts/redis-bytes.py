#!/usr/bin/env python3
"""Redis bytes per message by key kind (BENCHMARKS.md, "Seq buckets at production rates").

    python3 scripts/redis-bytes.py PORT

Sums `MEMORY USAGE key SAMPLES 0` over every key of the Redis on 127.0.0.1:PORT, by the key's
last part (`rc:{C}:sb` counts as `sb`; the id index `rc:{iS.N}` as "id index"), and divides by
the messages held: the records of the seq indexes (33-byte records of `sb`, one per member of a
short one; `ZCARD` of an older `sq`). Meant for a Redis that holds one benchmark's data (run after
FLUSHALL and the load tool). Speaks RESP itself: nothing to install beyond python3.
"""
import collections
import re
import socket
import sys

RECORD = 33  # seq mod 64 ‖ id ‖ sender (41 in a thread: counted as one)

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
reader = sock.makefile("rb")


def encode(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def reply():
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else reader.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [reply() for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def call(*args):
    sock.sendall(encode(*args))
    return reply()


keys, cursor = [], b"0"
while True:
    cursor, page = call("SCAN", cursor, "COUNT", 1000)
    keys += page
    if cursor == b"0":
        break
sock.sendall(b"".join(encode("MEMORY", "USAGE", k, "SAMPLES", 0) for k in keys))
sizes = [reply() or 0 for _ in keys]


def kind(key):
    if re.fullmatch(rb".*:\{i[0-9]+\.[0-9]+\}", key):
        return "id index"
    return key.rsplit(b":", 1)[-1].decode(errors="replace")


total, count = collections.Counter(), collections.Counter()
for key, size in zip(keys, sizes):
    total[kind(key)] += size
    count[kind(key)] += 1
messages = 0
for key in keys:
    if key.endswith(b":sb"):
        messages += sum(max(1, len(m) // RECORD) for m in call("ZRANGE", key, 0, -1))
    elif key.endswith(b":sq"):
        messages += call("ZCARD", key)
if not messages:
    sys.exit("no seq index: no messages to divide by")
print(f"messages {messages}  keys {len(keys)}  bytes {sum(total.values())}")
for k, v in total.most_common():
    print(f"{k:12} {count[k]:7} keys {v:13} B {v / messages:8.1f} B/msg")
