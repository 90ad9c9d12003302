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
"peer" is what getpeername() returns, "source" where recvfrom() says the
reply came from.
"""
import json
import socket
import sys


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


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode in ("udp-twice", "udp-reconnected"):
        targets = [(host, port), (sys.argv[4], int(sys.argv[5]))]
        print(json.dumps(udp_twice(targets, mode == "udp-reconnected")))
        return
    if mode == "tcp-held":
        tcp_held(host, port)
        return
    if mode == "tcp":
        result = tcp(host, port)
    elif mode in ("udp", "udp-connected"):
        result = udp(host, port, mode == "udp-connected")
    else:
        sys.exit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
