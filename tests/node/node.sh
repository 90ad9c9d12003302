#!/bin/sh
# netbpf on a real node: run by `cargo xtask node` inside a VM booted with
# systemd as PID 1 on a Debian bookworm root file system. It installs the
# package as a user does, then checks what users of the node expect. Each
# check writes a line "NAME<TAB>ok|FAIL<TAB>WHAT" to /root/node/results.tsv,
# and what a user would look at (status, journal) to /root/node/.
set -u
out=/root/node
mkdir -p "$out"
: > "$out/results.tsv"

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

echo "the guest's uptime when this script started: $(cut -d' ' -f1 /proc/uptime) s (software emulation)" > "$out/boot.txt"

# The package, installed as users install it: enabled and started.
started=$(now)
check install "dpkg -i of the package" dpkg -i /root/netbpf.deb
if wait_for 120 netbpf status; then
    result agent-ready ok "netbpf status answers $(since "$started") s after dpkg -i began"
else
    result agent-ready FAIL "netbpf status never answered"
fi
check enabled "systemctl is-enabled netbpf" systemctl is-enabled netbpf
netbpf status > "$out/status-installed.txt" 2>&1

# A desktop container on the node's Docker reaches, at localhost:8082, a
# service published on the docker0 bridge's gateway (seed 001).
if wait_for 180 docker info; then
    result docker ok "docker.service answers, cgroup driver $(docker info -f '{{.CgroupDriver}}')"
else
    result docker FAIL "docker.service does not answer"
fi
journalctl -u docker -u containerd --no-pager > "$out/docker-journal.txt" 2>&1
mkdir -p /root/image/bin
cp /bin/busybox /root/image/bin/busybox
for tool in sh wget sleep; do ln -sf busybox "/root/image/bin/$tool"; done
tar -C /root/image -c . | docker import - node/busybox > /dev/null
mkdir -p /root/www && echo published > /root/www/hello.txt
(cd /root/www && exec python3 -m http.server --bind 172.17.0.1 8082) > "$out/http.log" 2>&1 &
wait_for 30 sh -c 'echo | busybox nc 172.17.0.1 8082'
cat > /etc/netbpf/policy.d/50-desktop.toml <<'POLICY'
version = 1
[[scope]]
name = "desktop"
match = { container = "desktop*" }
forward = [{ from = "localhost:8082", to = "172.17.0.1:8082" }]
POLICY
wait_for 30 sh -c 'journalctl -u netbpf --no-pager | grep -q "policy reloaded"'
got=$(docker run --rm --name desktop-1 node/busybox wget -qO- http://localhost:8082/hello.txt 2>> "$out/desktop.log")
if [ "$got" = published ]; then
    result forward ok "a container's localhost:8082 reached the service on the docker0 gateway"
else
    result forward FAIL "a container's localhost:8082 gave '$got'"
fi

# A client loops through the forward while the agent restarts, and again
# while a newer package is installed: no connection fails (the datapath
# is pinned; the new agent adopts it).
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
loop_through restart "systemctl restart netbpf" systemctl restart netbpf
loop_through upgrade "dpkg -i of a newer package" dpkg -i /root/netbpf-newer.deb
check upgraded "the newer package is installed and its agent runs" \
    sh -c 'dpkg-query -W -f="\${Version}" netbpf | grep -q -- "-2$" && systemctl is-active netbpf'

# The node's boot, again: a container Docker brings back (restart:
# unless-stopped) dials the forward as the first thing it does. Every
# service stops, the datapath goes as at a reboot (bpffs is in memory,
# /run is emptied), and netbpf and Docker start in one transaction, in
# the order their units give. Its first connection must succeed.
docker run -d --restart unless-stopped --name desktop-boot node/busybox sh -c \
    'if wget -qO- http://localhost:8082/hello.txt > /dev/null 2>&1; then echo first-ok; else echo first-failed; fi; exec sleep 3600' > /dev/null
wait_for 60 sh -c 'docker logs desktop-boot 2>&1 | grep -q first-'
systemctl stop docker.socket docker.service containerd.service netbpf.service
netbpf uninstall >> "$out/boot-order.log" 2>&1
rm -rf /run/netbpf
started=$(now)
systemctl start netbpf.service docker.service
if wait_for 180 sh -c 'test "$(docker logs desktop-boot 2>&1 | grep -c first-)" = 2'; then
    first=$(docker logs desktop-boot 2>&1 | grep first- | tail -1)
    if [ "$first" = first-ok ]; then
        result boot-order ok "a container Docker brought back with netbpf and Docker started in boot order: its first connection went through, $(since "$started") s after the start"
    else
        result boot-order FAIL "a container Docker brought back with netbpf and Docker started in boot order: its first connection failed. Docker restarts its containers before its API answers, and the agent knows a Docker container by name only from the API: its policy came when the API answered"
    fi
else
    result boot-order FAIL "the container did not come back within 180 s"
fi
systemctl show -p ActiveEnterTimestampMonotonic netbpf.service docker.service >> "$out/boot-order.log"
docker rm -f desktop-boot > /dev/null 2>&1 || true

netbpf status > "$out/status.txt" 2>&1
journalctl -u netbpf --no-pager -o short-precise > "$out/journal.txt" 2>&1
if grep -E ' (ERROR|WARN) ' "$out/journal.txt" > "$out/journal-errors.txt"; then
    result journal FAIL "the agent's journal has warnings or errors"
else
    result journal ok "the agent's journal has no warning or error"
fi

# Purge: nothing of netbpf is left.
docker rm -f $(docker ps -aq) > /dev/null 2>&1 || true
check purge "apt-get purge netbpf" apt-get purge -y netbpf
check no-pins "nothing pinned at /sys/fs/bpf/netbpf" sh -c '! test -e /sys/fs/bpf/netbpf'
check no-programs "no netbpf program in the kernel" sh -c '! bpftool prog show | grep -q netbpf_'
# /etc/netbpf is a tmpfs mount point here (see xtask/src/node.rs): emptied.
check no-files "nothing in /etc/netbpf, no /usr/bin/netbpf, no unit" \
    sh -c 'test -z "$(ls -A /etc/netbpf)" && ! test -e /usr/bin/netbpf && ! test -e /lib/systemd/system/netbpf.service'
echo done > "$out/finished"
