#!/usr/bin/env python3
"""One TCP connection or one UDP exchange, reported as JSON on stdout.

Used by netbpf's tests as the application inside a container:
  probe.py tcp HOST PORT            connect, read until the server closes
  probe.py udp HOST PORT            sendto() a datagram, recvfrom() the reply
  probe.py udp-connected HOST PORT  connect(), send(), recvfrom()
  probe.py udp-twice HOST PORT HOST2 PORT2
                                    one socket: sendto() each, recvfrom() each reply
  probe.py udp-reconnected HOST PORT HOST2 PORT2
                                    one socket: connect() to each in turn, send(),
                                    getpeername(), recvfrom()
  probe.py tcp-held HOST PORT       connect, then report getpeername() once now
                                    and once for each line read on stdin
  probe.py http HOST PORT           GET / over HTTP/1.0: the body
  probe.py dns-udp HOST PORT NAME   a DNS query for NAME's IPv4 address, over UDP
  probe.py dns-tcp HOST PORT NAME   the same over TCP
  probe.py dns-loop HOST PORT NAME PROTO
                                    one socket (udp: connected; tcp: one connection)
                                    queried every 100 ms until stdin closes, replaced
                                    by a new one when a call on it fails; reports
                                    the first outcome at once, then the answers and
                                    errors in runs, [what, how many in a row]
"peer" is what getpeername() returns, "source" where recvfrom() says the
reply came from.
"""
import errno
import json
import random
import select
import socket
import struct
import sys
import time


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        peer = sock.getpeername()[:2]
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return {"peer": list(peer), "data": data.decode().strip()}


def tcp_held(host, port):
    """One connection kept open: its peer, reported again on each line of
    stdin until stdin closes."""
    with socket.create_connection((host, port), timeout=5) as sock:
        print(json.dumps({"peer": list(sock.getpeername()[:2])}), flush=True)
        for _ in sys.stdin:
            print(json.dumps({"peer": list(sock.getpeername()[:2])}), flush=True)


def udp(host, port, connected):
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        peer = None
        if connected:
            sock.connect((host, port))
            peer = list(sock.getpeername()[:2])
            sock.send(b"ping")
        else:
            sock.sendto(b"ping", (host, port))
        data, source = sock.recvfrom(4096)
    return {"peer": peer, "source": list(source[:2]), "data": data.decode().strip()}


def udp_twice(targets, connected):
    """One socket, one exchange with each of `targets` in turn."""
    with socket.socket(family(targets[0][0]), socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        peers, sources = [], []
        for target in targets:
            if connected:
                sock.connect(target)
                peers.append(list(sock.getpeername()[:2]))
                sock.send(b"ping")
            else:
                sock.sendto(b"ping", target)
            _, source = sock.recvfrom(4096)
            sources.append(list(source[:2]))
    return {"peers": peers, "sources": sources}


def http(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        peer = sock.getpeername()[:2]
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    _, _, body = data.partition(b"\r\n\r\n")
    return {"peer": list(peer), "data": body.decode().strip()}


def dns_query(name):
    """A recursive query for NAME's A record, and its id."""
    ident = random.randrange(1 << 16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    return ident, struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + b"\0" + struct.pack("!HH", 1, 1)


def dns_answer(ident, reply):
    """The first IPv4 address a reply to query IDENT answers."""
    got, flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    if got != ident:
        raise ValueError(f"a reply to query {got}, not {ident}")
    at = 12
    for _ in range(questions):
        while reply[at] != 0:
            at += 1 + reply[at]
        at += 5
    for _ in range(answers):
        at += 2 if reply[at] & 0xC0 == 0xC0 else reply.index(b"\0", at) + 1 - at
        kind, _, _, length = struct.unpack("!HHIH", reply[at:at + 10])
        at += 10
        if kind == 1 and length == 4:
            return socket.inet_ntoa(reply[at:at + 4])
        at += length
    return f"no address (rcode {flags & 0xF})"


def dns_udp(host, port, name):
    ident, query = dns_query(name)
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (host, port))
        reply, source = sock.recvfrom(4096)
    return {"source": list(source[:2]), "data": dns_answer(ident, reply)}


def dns_over_tcp(sock, query):
    """One query over a TCP connection: the reply, without its length."""
    sock.sendall(struct.pack("!H", len(query)) + query)
    reply = b""
    while len(reply) < 2 or len(reply) < 2 + struct.unpack("!H", reply[:2])[0]:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(errno.ECONNRESET, "closed by the server")
        reply += chunk
    return reply[2:]


def dns_tcp(host, port, name):
    ident, query = dns_query(name)
    with socket.create_connection((host, port), timeout=5) as sock:
        peer = sock.getpeername()[:2]
        reply = dns_over_tcp(sock, query)
    return {"peer": list(peer), "data": dns_answer(ident, reply)}


def dns_loop(host, port, name, proto):
    """A resolver's socket in a loop: a connected UDP socket or one TCP
    connection, queried every 100 ms until stdin closes and replaced when a
    call on it fails. (dnsmasq closes a TCP connection after 100 queries.)"""
    runs = []

    def note(what):
        if runs and runs[-1][0] == what:
            runs[-1][1] += 1
        else:
            runs.append([what, 1])

    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = None
    while not select.select([sys.stdin], [], [], 0)[0] or sys.stdin.read(1):
        try:
            if sock is None:
                sock = socket.socket(family(host), kind)
                sock.settimeout(1)
                sock.connect((host, port))
            ident, query = dns_query(name)
            if proto == "udp":
                sock.send(query)
                reply = sock.recv(4096)
            else:
                reply = dns_over_tcp(sock, query)
            note(dns_answer(ident, reply))
        except OSError as error:
            note(errno.errorcode.get(error.errno, type(error).__name__))
            if sock is not None:
                sock.close()
            sock = None
        if len(runs) == 1 and runs[0][1] == 1:
            print(json.dumps({"first": runs[0][0]}), flush=True)
        time.sleep(0.1)
    return {"runs": runs}


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "dns-loop":
        print(json.dumps(dns_loop(host, port, sys.argv[4], sys.argv[5])))
        return
    if mode in ("dns-udp", "dns-tcp"):
        print(json.dumps((dns_udp if mode == "dns-udp" else dns_tcp)(host, port, sys.argv[4])))
        return
    if mode in ("udp-twice", "udp-reconnected"):
        targets = [(host, port), (sys.argv[4], int(sys.argv[5]))]
        print(json.dumps(udp_twice(targets, mode == "udp-reconnected")))
        return
    if mode == "tcp-held":
        tcp_held(host, port)
        return
    if mode == "tcp":
        result = tcp(host, port)
    elif mode == "http":
        result = http(host, port)
    elif mode in ("udp", "udp-connected"):
        result = udp(host, port, mode == "udp-connected")
    else:
        sys.exit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
