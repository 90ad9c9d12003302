#!/bin/sh
# netbpf on a real node: run by `cargo xtask node` inside a VM booted with
# systemd as PID 1 on a Debian root file system, twice: `node.sh first`
# installs the package as a user does and sets up the four problems the
# way their users have them; the machine is powered off and booted again
# (the runtimes' state is on a disk of its own, which survives), and
# `node.sh second CHURN` checks that everything came back, churns CHURN
# containers, and purges the package. Each check writes a line
# "NAME<TAB>ok|FAIL<TAB>WHAT" to /root/node/results.tsv, and what a user
# would look at (status, journal) to /root/node/.
set -u
phase=$1
churn=${2:-0}
out=/root/node
mkdir -p "$out"
[ "$phase" = second ] || : > "$out/results.tsv"

result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/results.tsv"; }
check() { # NAME WHAT COMMAND...: ok when COMMAND succeeds
    name=$1 what=$2
    shift 2
    if "$@" >> "$out/$name.log" 2>&1; then result "$name" ok "$what"; else result "$name" FAIL "$what"; fi
}
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{ printf "%.1f", $1 - $2 }'; }
# Polls COMMAND every 0.2 s for at most SECONDS; fails when it never succeeds.
wait_for() {
    seconds=$1
    shift
    end=$(( $(date +%s) + seconds ))
    until "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}
# When UNIT became active, in seconds since the kernel started.
active_at() {
    systemctl show -P ActiveEnterTimestampMonotonic "$1" | awk '{ printf "%.1f", $1 / 1000000 }'
}
reloads() { journalctl -u netbpf -b --no-pager | grep -c 'policy reloaded'; }
more_reloads_than() { [ "$(reloads)" -gt "$1" ]; }
# Writes standard input to /etc/netbpf/policy.d/FILE, as a user does, and
# waits (at most 60 s) until the agent has reloaded the policy.
write_policy() { # FILE
    count=$(reloads)
    cat > "/etc/netbpf/policy.d/$1"
    wait_for 60 more_reloads_than "$count"
}
# The agent's journal of this boot has no error; its warnings are counted
# (and shown in docs/node.md).
journal_clean() { # BOOT
    journalctl -u netbpf -b --no-pager -o short-precise > "$out/journal-$1.txt" 2>&1
    grep ' WARN ' "$out/journal-$1.txt" > "$out/journal-$1-warnings.txt"
    warnings=$(grep -c . "$out/journal-$1-warnings.txt")
    if grep ' ERROR ' "$out/journal-$1.txt" > "$out/journal-$1-errors.txt"; then
        result "journal-$1" FAIL "the agent's journal of the $1 boot has errors ($warnings warnings)"
    else
        result "journal-$1" ok "the agent's journal of the $1 boot has no error, $warnings warnings"
    fi
}

compose() { # PROJECT SUBNET: the seed-000 project PROJECT, on a bridge of its own
    mkdir -p "/root/$1"
    cat > "/root/$1/compose.yaml" <<COMPOSE
services:
  backend:
    image: node/busybox
    restart: unless-stopped
    extra_hosts: ["host.docker.internal:host-gateway"]
    command: ["sleep", "86400"]
    networks: [backend]
networks:
  backend:
    ipam:
      config: [{ subnet: "$2" }]
COMPOSE
    docker-compose -p "$1" -f "/root/$1/compose.yaml" up -d
}
# What CONTAINER of Docker (or Podman, with podman as $2) gets from URL.
fetch() { # CONTAINER URL [RUNTIME]
    ${3:-docker} exec "$1" wget -qO- -T 5 "$2" 2>&1
}

# The package, installed as users install it (enabled and started), and
# Docker with the test image.
install_and_docker() {
    started=$(now)
    check install "dpkg -i of the package" dpkg -i /root/netbpf.deb
    if wait_for 120 netbpf status; then
        result agent-ready ok "netbpf status answers $(since "$started") s after dpkg -i began"
    else
        result agent-ready FAIL "netbpf status never answered"
    fi
    check enabled "systemctl is-enabled netbpf" systemctl is-enabled netbpf
    netbpf status > "$out/status-installed.txt" 2>&1

    if wait_for 180 docker info; then
        result docker ok "docker.service answers, cgroup driver $(docker info -f '{{.CgroupDriver}}')"
    else
        result docker FAIL "docker.service does not answer"
        { systemctl status docker containerd; journalctl -b -u docker -u containerd --no-pager; } >> "$out/docker.log" 2>&1
    fi
    mkdir -p /root/image/bin /root/image/tmp
    cp /bin/busybox /root/image/bin/busybox
    for tool in sh wget sleep httpd nc wc; do ln -sf busybox "/root/image/bin/$tool"; done
    tar -C /root/image -c . | podman import - node/busybox > /dev/null
}

# Seed 001: a desktop container's localhost:8084 reaches a port published
# on another bridge's gateway.
seed_001() {
    mkdir -p /root/image/www
    echo published > /root/image/www/hello.txt
    tar -C /root/image -c . | docker import - node/busybox > /dev/null
    docker network create --subnet 172.30.0.0/24 --gateway 172.30.0.1 published > /dev/null
    docker run -d --restart unless-stopped --network published -p 172.30.0.1:8084:8084 \
        --name published node/busybox httpd -f -p 8084 -h /www > /dev/null
    # The desktop's service on the docker0 gateway, for the loops and the
    # boot below: a unit that Docker starts after (a drop-in says so), so
    # that a failed first connection at boot is netbpf's.
    mkdir -p /srv/www /etc/systemd/system/docker.service.d
    echo published > /srv/www/hello.txt
    cat > /etc/systemd/system/desktop-www.service <<'UNIT'
[Unit]
Description=The desktop's service (the node test)
[Service]
ExecStart=/usr/bin/python3 -m http.server --directory /srv/www 8082
[Install]
WantedBy=multi-user.target
UNIT
    printf '[Unit]\nAfter=desktop-www.service\n' > /etc/systemd/system/docker.service.d/after-desktop-www.conf
    systemctl daemon-reload
    systemctl enable --now desktop-www.service > /dev/null 2>&1
    write_policy 50-desktop.toml <<'POLICY'
version = 1
[[scope]]
name = "desktop"
match = { container = "desktop*" }
forward = [
  { from = "localhost:8082", to = "172.17.0.1:8082" },
  { from = "localhost:8084", to = "172.30.0.1:8084" },
]
POLICY
    got=$(docker run --rm --name desktop-1 node/busybox wget -qO- http://localhost:8084/hello.txt 2>> "$out/desktop.log")
    if [ "$got" = published ]; then
        result seed-001 ok "a desktop container's localhost:8084 reached a port published on another bridge's gateway (172.30.0.1:8084)"
    else
        result seed-001 FAIL "a desktop container's localhost:8084 gave '$got'"
    fi
}

first() {
    echo "the guest's uptime when this script started: $(cut -d' ' -f1 /proc/uptime) s (software emulation)" > "$out/boot-first.txt"
    install_and_docker
    seed_001

    # The networks beyond the node, and their services, at every boot.
    install -m 0755 /root/beyond.sh /usr/local/sbin/beyond.sh
    mkdir -p /etc/wireguard /srv/gpu /srv/maindb /srv/far
    wg genkey | tee /etc/wireguard/node.key | wg pubkey > /etc/wireguard/node.pub
    wg genkey | tee /etc/wireguard/wgpeer.key | wg pubkey > /etc/wireguard/wgpeer.pub
    echo "gpu ready" > /srv/gpu/index.html
    echo maindb > /srv/maindb/index.html
    head -c 4000000 /dev/urandom > /srv/far/big
    echo small > /srv/far/small
    cat > /etc/systemd/system/beyond.service <<'UNIT'
[Unit]
Description=The networks beyond the node (the node test)
Before=network-online.target wg-quick@wg0.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/beyond.sh
[Install]
WantedBy=multi-user.target
UNIT
    beyond_service() { # NAME NETNS TYPE COMMAND...
        name=$1 netns=$2 type=$3
        shift 3
        cat > "/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=$name, beyond the node (the node test)
Requires=beyond.service
After=beyond.service
[Service]
Type=$type
NetworkNamespacePath=/run/netns/$netns
RuntimeDirectory=$name
ExecStart=$*
[Install]
WantedBy=multi-user.target
UNIT
    }
    # sshd tells systemd when it listens: the tunnel starts after.
    beyond_service gpubox-sshd gpubox notify /usr/sbin/sshd -D -o ListenAddress=10.98.0.2 -o PidFile=none
    beyond_service gpubox-gpu gpubox simple /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory /srv/gpu 8188
    beyond_service maindb maindb simple /usr/bin/python3 -m http.server --bind 10.97.0.2 --directory /srv/maindb 6379
    beyond_service far-www far simple /usr/bin/python3 -m http.server --bind 10.96.1.2 --directory /srv/far 8080
    systemctl daemon-reload
    systemctl enable --now beyond.service gpubox-sshd gpubox-gpu maindb far-www > "$out/beyond.log" 2>&1

    # Seed 000: an ssh -L tunnel kept up by a unit; a compose project,
    # restart: unless-stopped, host.docker.internal:host-gateway, on a
    # bridge of its own, granted the tunnel by its compose label.
    mkdir -p /root/.ssh
    ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
    cp /root/.ssh/id_ed25519.pub /root/.ssh/authorized_keys
    cat > /etc/systemd/system/gpu-tunnel.service <<'UNIT'
[Unit]
Description=The tunnel to the GPU box (seed 000)
After=network-online.target gpubox-sshd.service
Wants=network-online.target
[Service]
ExecStart=/usr/bin/ssh -N -o StrictHostKeyChecking=accept-new -o ExitOnForwardFailure=yes -o ServerAliveInterval=5 -L 127.0.0.1:18188:127.0.0.1:8188 root@10.98.0.2
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now gpu-tunnel.service > "$out/seed-000.log" 2>&1
    wait_for 60 curl -sf http://127.0.0.1:18188/
    write_policy 50-gpu-tunnel.toml <<'POLICY'
version = 1
[[host_service]]
name = "gpu-tunnel"
listen = "127.0.0.1:18188"
owner = { unit = "gpu-tunnel.service" }
[[scope]]
name = "backend"
match = { label = { "com.docker.compose.project" = "llamasketch" } }
host_services = [{ service = "gpu-tunnel", dial = "172.17.0.1:18188" }]
POLICY
    compose llamasketch 10.210.1.0/24 >> "$out/seed-000.log" 2>&1
    compose other 10.210.2.0/24 >> "$out/seed-000.log" 2>&1
    wait_for 60 sh -c 'docker exec llamasketch-backend-1 wget -qO- -T 5 http://host.docker.internal:18188/ | grep -q "gpu ready"'
    granted=$(fetch llamasketch-backend-1 http://host.docker.internal:18188/)
    other=$(fetch other-backend-1 http://host.docker.internal:18188/)
    if [ "$granted" = "gpu ready" ] && [ "$other" != "gpu ready" ]; then
        result seed-000 ok "the compose project's container reached the ssh tunnel at host.docker.internal:18188; another project's container did not ('$other')"
    else
        result seed-000 FAIL "granted: '$granted', another project: '$other'"
    fi

    # Seed 002: Quadlet instances of onetime@.container, Network=host,
    # each binding :3000 and given its own port; maindb by its alias.
    mkdir -p /etc/containers/systemd
    cat > /etc/containers/systemd/onetime@.container <<'UNIT'
[Unit]
Description=onetime worker %i (seed 002)
[Container]
Image=localhost/node/busybox
Network=host
Exec=sh -c "echo onetime-%i > /tmp/index.html; exec httpd -f -p 3000 -h /tmp"
[Install]
WantedBy=multi-user.target
UNIT
    for port in 7043 7044 7045; do
        ln -sf onetime@.container "/etc/containers/systemd/onetime@$port.container"
    done
    write_policy 50-onetime.toml <<'POLICY'
version = 1
[[scope]]
name = "onetime"
match = { container = "systemd-onetime_{port}" }
bind = [{ port = 3000, to = "{port}" }]
alias = [{ from = "10.99.99.99:6379", to = "10.97.0.2:6379" }]
POLICY
    systemctl daemon-reload
    systemctl start onetime@7043 onetime@7044 onetime@7045 > "$out/seed-002.log" 2>&1
    seed_002 first
    systemctl status 'onetime@*' >> "$out/seed-002.log" 2>&1

    # Seed 003: wg-quick with MTU 1380 toward wgpeer, behind which the
    # far web server drops ICMP. A container on a Podman bridge downloads
    # through it: without a clamp the download stalls, with it it ends.
    cat > /etc/wireguard/wg0.conf <<CONF
[Interface]
Address = 10.94.0.1/24
PrivateKey = $(cat /etc/wireguard/node.key)
MTU = 1380
[Peer]
PublicKey = $(cat /etc/wireguard/wgpeer.pub)
Endpoint = 10.95.0.2:51820
AllowedIPs = 10.94.0.2/32, 10.96.1.0/24
CONF
    systemctl enable --now wg-quick@wg0 > "$out/seed-003.log" 2>&1
    # Docker's FORWARD policy is DROP; netavark's iptables rules accept its
    # own bridge's traffic before it (Podman and Docker on one node).
    mkdir -p /etc/containers/containers.conf.d
    printf '[network]\nfirewall_driver = "iptables"\n' > /etc/containers/containers.conf.d/node.conf
    podman network create --subnet 10.89.0.0/24 podbridge >> "$out/seed-003.log" 2>&1
    podman run -d --name downloader --network podbridge localhost/node/busybox sleep 86400 >> "$out/seed-003.log" 2>&1
    # Small answers pass (the path works); big ones never arrive.
    small=$(podman exec downloader wget -qO- -T 15 http://10.96.1.2:8080/small 2>> "$out/seed-003.log")
    if podman exec downloader wget -q -T 15 -O /dev/null http://10.96.1.2:8080/big >> "$out/seed-003.log" 2>&1; then
        result seed-003-problem FAIL "without a clamp the download completed: the set-up has no black hole"
    elif [ "$small" != small ]; then
        result seed-003-problem FAIL "without a clamp even a small answer did not come ('$small'): the path is broken"
    else
        result seed-003-problem ok "without a clamp the container on the Podman bridge gets small answers through wg0 (MTU 1380, ICMP dropped beyond), and its 4 MB download stalls"
    fi
    write_policy 50-vpn.toml <<'POLICY'
version = 1
[[mss_clamp]]
interface = "wg*"
mss = "pmtu"
POLICY
    seed_003 first

    # A client loops through the forward while the agent restarts, and
    # again while a newer package is installed: no connection fails (the
    # datapath is pinned; the new agent adopts it).
    loop_through restart "systemctl restart netbpf" systemctl restart netbpf
    loop_through upgrade "dpkg -i of a newer package" dpkg -i /root/netbpf-newer.deb
    check upgraded "the newer package is installed and its agent runs" \
        sh -c 'dpkg-query -W -f="\${Version}" netbpf | grep -q -- "-2$" && systemctl is-active netbpf'

    # A container Docker brings back at boot (restart: unless-stopped)
    # dials the forward as the first thing it does.
    docker run -d --restart unless-stopped --name desktop-boot node/busybox sh -c \
        'if wget -qO- http://localhost:8082/hello.txt > /dev/null 2>&1; then echo first-ok; else echo first-failed; fi; exec sleep 86400' > /dev/null
    wait_for 60 sh -c 'docker logs desktop-boot 2>&1 | grep -q first-'

    rootless
    netbpf status > "$out/status-first.txt" 2>&1
    journal_clean first
}

# Each onetime instance serves on its own port, and reaches maindb by
# its alias.
seed_002() { # BOOT
    served=""
    for port in 7043 7044 7045; do
        # Each instance says who it is: port N is instance N's own.
        wait_for 60 sh -c "curl -sf http://127.0.0.1:$port/ | grep -qx onetime-$port" && served="$served $port"
    done
    # Quadlet names them systemd-%N with the @ made a _.
    db=$(fetch systemd-onetime_7043 http://10.99.99.99:6379/ podman)
    if [ "$served" = " 7043 7044 7045" ] && [ "$db" = maindb ]; then
        result "seed-002-$1" ok "onetime@7043..7045 (Quadlet, Network=host, each binding :3000) served on 7043, 7044, 7045, each port its own instance; maindb answered at its alias"
    else
        result "seed-002-$1" FAIL "served on:$served; maindb by alias: '$db'"
    fi
}

seed_003() { # BOOT
    started=$(now)
    size=$(podman exec downloader sh -c 'wget -q -T 60 -O /tmp/big http://10.96.1.2:8080/big && wc -c < /tmp/big' 2>> "$out/seed-003.log")
    if [ "$size" = 4000000 ]; then
        result "seed-003-$1" ok "with the clamp the container downloaded 4 MB through wg0 in $(since "$started") s"
    else
        result "seed-003-$1" FAIL "with the clamp the download did not complete ('$size')"
    fi
}

loop_through() { # NAME WHAT COMMAND...
    name=$1 what=$2
    shift 2
    docker run -d --name "desktop-$name" node/busybox sh -c \
        'while true; do if wget -qO- http://localhost:8082/hello.txt > /dev/null 2>&1; then echo ok; else echo failed; fi; sleep 0.1; done' > /dev/null
    wait_for 60 sh -c "docker logs desktop-$name 2>&1 | grep -q ok"
    "$@" >> "$out/$name.log" 2>&1
    wait_for 60 netbpf status
    sleep 3
    docker logs "desktop-$name" > "$out/$name-client.log" 2>&1
    docker rm -f "desktop-$name" > /dev/null 2>&1 || true
    ok=$(grep -c '^ok' "$out/$name-client.log")
    failed=$(grep -c '^failed' "$out/$name-client.log")
    if [ "$failed" = 0 ] && [ "$ok" -ge 10 ]; then
        result "$name" ok "a client looping through the forward during $what: $ok connections, none failed"
    else
        result "$name" FAIL "during $what: $ok connections, $failed failed"
    fi
}

# A rootless Podman user: the agent follows root's Podman, not theirs, so
# their containers are matched by cgroup (below their user@.service),
# not by name; the forward then works in their own network namespace.
rootless() {
    # The user dev comes with the root file system (xtask/src/node.rs); its
    # home is on the node's disk.
    mkdir -p /home/dev
    chown dev:dev /home/dev
    loginctl enable-linger dev
    uid=$(id -u dev)
    wait_for 60 test -S "/run/user/$uid/bus"
    as_dev() { runuser -u dev -- env XDG_RUNTIME_DIR="/run/user/$uid" "$@"; }
    tar -C /root/image -c . | as_dev podman import - node/busybox > /dev/null 2>> "$out/rootless.log"
    write_policy 50-rootless.toml <<POLICY
version = 1
[[scope]]
name = "rootless"
match = { cgroup = "user.slice/user-$uid.slice/user@$uid.service/user.slice/libpod-*.scope" }
forward = [{ from = "localhost:8082", to = "172.17.0.1:8082" }]
POLICY
    got=$(as_dev podman run --rm localhost/node/busybox wget -qO- -T 5 http://localhost:8082/hello.txt 2>> "$out/rootless.log")
    if [ "$got" = published ]; then
        result rootless ok "a rootless Podman container, matched by its cgroup, reached the forward from its own network namespace (pasta)"
    else
        result rootless FAIL "a rootless Podman container, matched by its cgroup, got '$got'"
    fi
    as_dev podman ps -a >> "$out/rootless.log" 2>&1
    find /sys/fs/cgroup/user.slice -name 'libpod*' >> "$out/rootless.log" 2>&1
}

second() {
    echo "the guest's uptime when this script started: $(cut -d' ' -f1 /proc/uptime) s (software emulation)" > "$out/boot-second.txt"
    systemd-analyze critical-chain netbpf.service docker.service >> "$out/boot-second.txt" 2>&1

    # The boot: netbpf before Docker and the Quadlet units, each container
    # that came back in force before it served.
    wait_for 180 docker info
    wait_for 180 sh -c 'docker logs desktop-boot 2>&1 | grep -c first- | grep -q 2'
    agent=$(active_at netbpf.service)
    dockerd=$(active_at docker.service)
    onetime=$(active_at onetime@7043.service)
    if awk "BEGIN { exit !($agent > 0 && $agent <= $dockerd && $agent <= $onetime) }"; then
        result boot-order ok "netbpf.service ready at $agent s after the kernel started, docker.service at $dockerd s, onetime@7043 at $onetime s"
    else
        result boot-order FAIL "netbpf.service at $agent s, docker.service at $dockerd s, onetime@7043 at $onetime s"
    fi
    first=$(docker logs desktop-boot 2>&1 | grep first- | tail -1)
    if [ "$first" = first-ok ]; then
        result first-connection ok "the desktop container Docker brought back made its first connection through the forward"
    else
        result first-connection FAIL "the desktop container Docker brought back: $first"
    fi
    wait_for 120 sh -c 'docker exec llamasketch-backend-1 wget -qO- -T 5 http://host.docker.internal:18188/ | grep -q "gpu ready"'
    granted=$(fetch llamasketch-backend-1 http://host.docker.internal:18188/)
    other=$(fetch other-backend-1 http://host.docker.internal:18188/)
    if [ "$granted" = "gpu ready" ] && [ "$other" != "gpu ready" ]; then
        result seed-000-second ok "after the boot the compose project and the tunnel came back; the grant holds, another project is refused"
    else
        result seed-000-second FAIL "after the boot: granted '$granted', another project '$other'"
    fi
    seed_002 second
    podman start downloader >> "$out/seed-003.log" 2>&1
    seed_003 second

    churn_containers
    netbpf status > "$out/status.txt" 2>&1
    journal_clean second

    purge
}

purge() {
    docker rm -f $(docker ps -aq) > /dev/null 2>&1 || true
    check purge "apt-get purge netbpf" apt-get purge -y netbpf
    check no-pins "nothing pinned at /sys/fs/bpf/netbpf" sh -c '! test -e /sys/fs/bpf/netbpf'
    check no-programs "no netbpf program in the kernel" sh -c '! bpftool prog show | grep -q netbpf_'
    check no-files "nothing in /etc/netbpf, no /usr/bin/netbpf, no unit" \
        sh -c 'test -z "$(ls -A /etc/netbpf 2> /dev/null)" && ! test -e /usr/bin/netbpf && ! test -e /lib/systemd/system/netbpf.service'
}

# What CI runs (`cargo xtask node --quick`): one boot, the package
# installed, seed 001, a restart without a failed connection, the purge.
quick() {
    echo "the guest's uptime when this script started: $(cut -d' ' -f1 /proc/uptime) s (software emulation)" > "$out/boot-first.txt"
    install_and_docker
    seed_001
    loop_through restart "systemctl restart netbpf" systemctl restart netbpf
    journal_clean quick
    purge
}

# The entries of every map netbpf pinned: "NAME COUNT" lines.
map_entries() {
    for map in /sys/fs/bpf/netbpf/maps-v*/*; do
        printf '%s %s\n' "${map##*/}" "$(bpftool -j map dump pinned "$map" 2> /dev/null | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')"
    done
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$(systemctl show -P MainPID netbpf)/status"; }

# CHURN containers made and removed through Docker while the agent runs,
# each given a scope (the desktop's): afterwards every map is back to its
# baseline, the agent's memory has grown at most 10%.
churn_containers() {
    [ "$churn" -gt 0 ] || return 0
    map_entries > "$out/maps-before.txt"
    before=$(rss_kib)
    started=$(now)
    seq "$churn" | xargs -P 4 -I N sh -c 'docker run -d --network none --name desktop-churn-N node/busybox sleep 600 > /dev/null && docker rm -f desktop-churn-N > /dev/null' 2>> "$out/churn.log"
    took=$(since "$started")
    # The agent settles: no container of the churn is left in its maps.
    end=$(( $(date +%s) + 120 ))
    until map_entries > "$out/maps-after.txt" && cmp -s "$out/maps-before.txt" "$out/maps-after.txt"; do
        [ "$(date +%s)" -ge "$end" ] && break
        sleep 2
    done
    after=$(rss_kib)
    growth=$(awk "BEGIN { printf \"%.1f\", ($after - $before) * 100 / $before }")
    if cmp -s "$out/maps-before.txt" "$out/maps-after.txt" && awk "BEGIN { exit !($growth <= 10) }"; then
        result churn ok "$churn containers made and removed through Docker in $took s: every map back to its baseline ($(awk '{ s += $2 } END { print s }' "$out/maps-after.txt") entries), the agent's RSS $before → $after KiB ($growth%)"
    else
        result churn FAIL "$churn containers: maps $(diff "$out/maps-before.txt" "$out/maps-after.txt" | grep '^[<>]' | tr '\n' ' '), RSS $before → $after KiB ($growth%)"
    fi
}

"$phase"
echo done > "$out/finished-$phase"
