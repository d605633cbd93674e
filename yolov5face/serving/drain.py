"""Which HTTP connections of a local server still owe an answer, as the kernel sees them.

TorchServe's frontend closes every connection the moment it starts to shut down (Netty closes
the channels of an event loop as soon as the loop is asked to stop), so `serve` must not signal
it while a request is unanswered. TorchServe does not say how many requests it holds, but the
kernel does, per TCP connection (sock_diag netlink, what `ss -ti` shows): a connection that
received data after it last sent some, or with bytes still unread or unacknowledged, is waiting
for an answer. Standard library only; Linux only (elsewhere `open_requests` answers None).
"""

from __future__ import annotations

import logging
import socket
import struct

logger = logging.getLogger(__name__)

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_INFO = 2  # attribute carrying struct tcp_info
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8
_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_REQUEST = struct.Struct("=BBBBI48s")  # inet_diag_req_v2: family, protocol, ext, pad, states, id
_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # inet_diag_msg
# struct tcp_info: last_data_sent @44, last_data_recv @52 (ms ago), bytes_received @128
_TIMES = struct.Struct("=I4xI")
_BYTES_RECEIVED = struct.Struct("=Q")


def _pending(rqueue: int, wqueue: int, info: bytes) -> bool:
    """One connection owes an answer: unread or unacked bytes, or data in after the last out."""
    if rqueue or wqueue:
        return True
    if len(info) < 136:  # an old kernel's shorter tcp_info: times only
        sent, received = _TIMES.unpack_from(info, 44)
        return received < sent
    sent, received = _TIMES.unpack_from(info, 44)
    (bytes_in,) = _BYTES_RECEIVED.unpack_from(info, 128)
    # Times are milliseconds ago at jiffy resolution: a tie (a request that came in the tick its
    # connection last answered) counts as owed; a connection that never received is idle.
    return bytes_in > 0 and received <= sent


def _dump(family: int, port: int) -> list[tuple[int, int, bytes]]:
    """(rqueue, wqueue, tcp_info) of each established TCP socket with local port `port`."""
    states = (1 << _TCP_ESTABLISHED) | (1 << _TCP_CLOSE_WAIT)
    sockid = struct.pack("!H", port) + bytes(46)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0, states, sockid)
    header = _HEADER.pack(
        _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    )
    found: list[tuple[int, int, bytes]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        sock.send(header + body)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR or length < _HEADER.size:
                    raise OSError("sock_diag refused the request")
                message = data[offset + _HEADER.size : offset + length]
                fields = _MESSAGE.unpack_from(message)
                local_port = struct.unpack("!H", fields[4])[0]
                rqueue, wqueue = fields[11], fields[12]
                info = b""
                attr = _MESSAGE.size
                while attr + 4 <= len(message):
                    attr_len, attr_type = struct.unpack_from("=HH", message, attr)
                    if attr_len < 4:
                        break
                    if attr_type == _INET_DIAG_INFO:
                        info = message[attr + 4 : attr + attr_len]
                    attr += (attr_len + 3) & ~3
                if local_port == port and len(info) >= 56:
                    found.append((rqueue, wqueue, info))
                offset += (length + 3) & ~3


def open_requests(port: int) -> int | None:
    """Connections to local TCP `port` that still owe an answer (None: the kernel won't say)."""
    try:
        connections = _dump(socket.AF_INET, port) + _dump(socket.AF_INET6, port)
    except OSError as exc:
        logger.warning("cannot list the connections of port %d: %s", port, exc)
        return None
    return sum(_pending(*connection) for connection in connections)
