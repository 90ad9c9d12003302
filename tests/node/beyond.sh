#!/bin/sh
# The networks beyond the node, for `tests/node/node.sh`: each a network
# namespace of the guest, reached through a veth pair, as the users of the
# four problems reach machines beyond theirs. Run at every boot by
# beyond.service, before the services that live there (sshd, the GPU box's
# service, maindb, the far web server) start in them.
#
#   gpubox  10.98.0.2   sshd; the GPU service on its own 127.0.0.1:8188 (seed 000)
#   maindb  10.97.0.2   the database, port 6379 (seed 002)
#   wgpeer  10.95.0.2   the WireGuard end of the node's wg0 (MTU 1380), routing
#   far     10.96.1.2     to the web server behind it, which drops ICMP (seed 003)
set -eu

# A namespace NAME joined to the node by a veth pair: the node's end is
# nb-NAME with NODE_ADDRESS, the namespace's is eth0 with ADDRESS.
beyond() { # NAME NODE_ADDRESS ADDRESS
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip link add "nb-$1" type veth peer name eth0 netns "$1"
    ip addr add "$2/30" dev "nb-$1"
    ip link set "nb-$1" up
    ip -n "$1" addr add "$3/30" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" route add default via "$2"
}

beyond gpubox 10.98.0.1 10.98.0.2
beyond maindb 10.97.0.1 10.97.0.2
beyond wgpeer 10.95.0.1 10.95.0.2
# The node's uplink, as a node has one (pasta, for rootless Podman, wants
# a default route to copy).
ip route add default via 10.95.0.2
# sshd's privilege separation directory, for the one in gpubox.
mkdir -p /run/sshd

# far sits behind wgpeer, on a link of its own; it drops every ICMP
# packet, as the firewall of seed 003's black hole does, so it never
# learns that its segments do not fit the tunnel.
ip netns add far
ip -n far link set lo up
ip -n wgpeer link add lan type veth peer name eth0 netns far
ip -n wgpeer addr add 10.96.1.1/24 dev lan
ip -n wgpeer link set lan up
ip -n far addr add 10.96.1.2/24 dev eth0
ip -n far link set eth0 up
ip -n far route add default via 10.96.1.1
ip netns exec far iptables -A INPUT -p icmp -j DROP
ip netns exec wgpeer sysctl -q net.ipv4.ip_forward=1

# wgpeer's end of the tunnel; the node's is wg-quick@wg0 (keys made by
# node.sh at the first boot).
ip -n wgpeer link add wg1 type wireguard
ip netns exec wgpeer wg set wg1 listen-port 51820 private-key /etc/wireguard/wgpeer.key \
    peer "$(cat /etc/wireguard/node.pub)" allowed-ips 10.94.0.1/32,10.89.0.0/24
ip -n wgpeer addr add 10.94.0.2/24 dev wg1
ip -n wgpeer link set wg1 mtu 1380 up
ip -n wgpeer route add 10.89.0.0/24 dev wg1
