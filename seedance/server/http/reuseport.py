"""`--workers N`: every worker's listening socket joins one SO_REUSEPORT group, and a classic BPF program on the
group picks the worker by the client's IPv4 source address (modulo N) instead of the kernel's 4-tuple hash.

So every connection from one address reaches the same worker: per-IP connection and rate limits, one-time
tickets (redeemed from the address they were issued to) and a session's resume (the client reconnects from
its address) find their state where it is, with nothing shared between workers. One worker per address is
also the limit of the scheme: many clients behind one NAT or proxy address share a worker.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # BPF loads relative to the network (IP) header
_LD_W_ABS, _ALU_MOD_K, _RET_A = 0x20, 0x94, 0x16


def source_ip_program(workers: int) -> list[tuple[int, int, int, int]]:
    """A = IPv4 source address; A %= workers; return A: a position in the group, which is the order the workers
    bound the port in (so which worker an address reaches is fixed for the group's life, not by its index)."""
    return [(_LD_W_ABS, 0, 0, (_SKF_NET_OFF + 12) & 0xFFFFFFFF), (_ALU_MOD_K, 0, 0, workers), (_RET_A, 0, 0, 0)]


def attach_source_ip_routing(sock: socket.socket, workers: int) -> None:
    """Attach the program to sock's reuseport group (any member will do; a later attach replaces it). A worker
    index past the group's size (a worker not listening yet) falls back to the kernel's own hash."""
    program = source_ip_program(workers)
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *f) for f in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
