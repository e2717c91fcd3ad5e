#!/usr/bin/env bash
# testnet.sh - throw-away "test hosts" for Gatehouse end-to-end tests and molecule.
#
# A test host = a network namespace "gh-NAME" on a test bridge (default ghbr0,
# 198.18.X.1/24) + a private mount namespace and a UTS namespace (hostname NAME),
# held open by a tiny "anchor" process, in which host directories are
# bind-mounted over /etc/gatehouse, /var/lib/gatehouse and /run/gatehouse
# + optionally an OpenSSH sshd started inside them.
# This script is the ONLY implementation of that logic; tests/netns/testnet.py
# calls it.  See tests/netns/README.md.
#
# Usage:
#   testnet.sh up NAME IP [--firewall-inbound-drop] [--sshd PORT]
#                         [--authorized-keys FILE] [--default-route]
#                         [--state-root DIR] [--bridge BR] [--fresh]
#   testnet.sh exec NAME [--] [cmd ...]     (no cmd: interactive shell)
#   testnet.sh killall NAME                 (kill every process in the host
#                                            except the anchor and sshd)
#   testnet.sh down NAME [--purge]
#   testnet.sh down-all [--bridge BR] [--purge]
#   testnet.sh status [NAME]
#
# Environment: GATEHOUSE_TESTNET_RUN (runtime dir, default /run/gatehouse-testnet),
# GATEHOUSE_TESTNET_STATE_ROOT (default /tmp/gatehouse-testnet),
# GATEHOUSE_TESTNET_BRIDGE (default ghbr0), GATEHOUSE_TESTNET_GRACE (seconds
# between SIGTERM and SIGKILL on teardown, default 3).
set -euo pipefail

RUN_ROOT=${GATEHOUSE_TESTNET_RUN:-/run/gatehouse-testnet}
DEFAULT_STATE_ROOT=${GATEHOUSE_TESTNET_STATE_ROOT:-/tmp/gatehouse-testnet}
DEFAULT_BRIDGE=${GATEHOUSE_TESTNET_BRIDGE:-ghbr0}
GRACE=${GATEHOUSE_TESTNET_GRACE:-3}
SAFETY_NET=198.18.0.0/15        # blackholed in the root namespace, always
NS_PREFIX=gh-                   # network namespace = gh-NAME
SSHD=/usr/sbin/sshd
# Paths that every host gets its own copy of (bind source = STATE/NAME/<key>).
MOUNT_KEYS=(etc lib run)
MOUNT_TARGETS=(/etc/gatehouse /var/lib/gatehouse /run/gatehouse)
PROG=${0##*/}

die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }
usage() { sed -n '/^# Usage:/,/^# Environment/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (network and mount namespaces)"
    command -v ip >/dev/null || die "iproute2 ('ip') is not installed"
    command -v nsenter >/dev/null && command -v unshare >/dev/null \
        || die "util-linux nsenter/unshare are not installed"
}

valid_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$ ]] \
        || die "bad host name '$1' (letters, digits, _ . -; at most 40 characters)"
}

# Host-side veth name: readable when short enough (IFNAMSIZ is 16), else hashed.
veth_name() {
    if (( ${#1} <= 11 )); then echo "ghv-$1"
    else local h; h=$(printf %s "$1" | sha1sum); echo "ghh${h:0:12}"; fi
}

hostdir() { echo "$RUN_ROOT/$1"; }
# get NAME KEY [DEFAULT]: one recorded fact about a host
get() { local f="$RUN_ROOT/$1/$2"; if [[ -r $f ]]; then echo "$(<"$f")"; else echo "${3-}"; fi; }

lock() {
    mkdir -p "$RUN_ROOT"
    exec 9>"$RUN_ROOT/.lock"
    flock -w 120 9 || die "timed out waiting for $RUN_ROOT/.lock"
}

link_exists() { [[ -e /sys/class/net/$1 ]]; }
netns_exists() { [[ -e /run/netns/$1 ]]; }

# alive PID: exists and is not a zombie (zombies have left all namespaces)
alive() {
    local stat
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    { read -r stat </proc/"$1"/stat; } 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# anchor_ok NAME: the anchor process lives and sits in the host's netns
anchor_ok() {
    local pid ns
    pid=$(get "$1" anchor.pid) ns=$NS_PREFIX$1
    alive "$pid" && netns_exists "$ns" && [[ /proc/$pid/ns/net -ef /run/netns/$ns ]]
}

# ---------------------------------------------------------------- safety, bridge

ensure_blackhole() {
    # Before anything else: whatever happens to the bridge, 198.18/15 never leaves.
    ip route replace blackhole "$SAFETY_NET" || die "cannot install blackhole route for $SAFETY_NET"
}

# parse_ip IP -> sets IP, GW (X.Y.Z.1), SUBNET (X.Y.Z.0/24)
parse_ip() {
    local a b c d
    [[ $1 =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "bad IPv4 address '$1'"
    a=${BASH_REMATCH[1]} b=${BASH_REMATCH[2]} c=${BASH_REMATCH[3]} d=${BASH_REMATCH[4]}
    (( 10#$a <= 255 && 10#$b <= 255 && 10#$c <= 255 && 10#$d <= 255 )) || die "bad IPv4 address '$1'"
    (( 10#$a == 198 && (10#$b == 18 || 10#$b == 19) && 10#$c <= 255 )) \
        || die "address $1 is outside $SAFETY_NET (the only range test hosts may use)"
    (( 10#$d >= 2 && 10#$d <= 254 )) || die "address $1: last octet must be 2..254 (.1 is the bridge)"
    IP="$((10#$a)).$((10#$b)).$((10#$c)).$((10#$d))"
    GW="$((10#$a)).$((10#$b)).$((10#$c)).1"
    SUBNET="$((10#$a)).$((10#$b)).$((10#$c)).0/24"
}

forward_guard() {  # forward_guard -I|-D BRIDGE: root ns never forwards test traffic off the bridge
    command -v iptables >/dev/null || return 0
    local op=$1 br=$2 spec
    for spec in "-i $br ! -o $br" "! -i $br -o $br"; do
        # shellcheck disable=SC2086
        if iptables -w -C FORWARD $spec -j DROP 2>/dev/null; then
            [[ $op == -D ]] && iptables -w -D FORWARD $spec -j DROP
        elif [[ $op == -I ]]; then
            iptables -w -I FORWARD $spec -j DROP || warn "could not add FORWARD guard for $br"
        fi
    done
    return 0
}

ensure_bridge() {  # ensure_bridge BR GW
    local br=$1 gw=$2 cur holder
    if ! link_exists "$br"; then
        holder=$(ip -o -4 addr show to "$gw/32" | awk '{print $2; exit}')
        [[ -z $holder ]] || die "$gw is already on interface $holder; one test subnet per bridge (use other addresses or --bridge $holder)"
        ip link add name "$br" type bridge forward_delay 0 stp_state 0
        ip link set "$br" addrgenmode none 2>/dev/null || true   # no IPv6 chatter
        mkdir -p "$RUN_ROOT/.bridges"
        echo "$gw/24" >"$RUN_ROOT/.bridges/$br"
        forward_guard -I "$br"
    fi
    [[ -e /sys/class/net/$br/bridge ]] || die "interface $br exists but is not a bridge"
    cur=$(ip -o -4 addr show dev "$br" | awk '{print $4}')
    if [[ -z $cur ]]; then
        ip addr add "$gw/24" dev "$br"
    elif ! grep -qx "$gw/24" <<<"$cur"; then
        die "bridge $br has address $(echo $cur), not $gw/24: host addresses must be in its /24"
    fi
    ip link set "$br" up
}

maybe_remove_bridge() {  # remove a bridge we created once nothing uses it
    local br=$1 d
    [[ -n $br && -f $RUN_ROOT/.bridges/$br ]] || return 0
    for d in "$RUN_ROOT"/*/; do
        [[ -f ${d}bridge && $(<"${d}bridge") == "$br" ]] && return 0
    done
    if link_exists "$br"; then
        [[ -z $(ls -A "/sys/class/net/$br/brif" 2>/dev/null) ]] || return 0
        ip link del "$br" 2>/dev/null || true
    fi
    forward_guard -D "$br"
    rm -f "$RUN_ROOT/.bridges/$br"
}

# ---------------------------------------------------------------- processes

# host_pids NAME: every live process in the host's netns or in its mount namespace
host_pids() {
    local name=$1 ns=$NS_PREFIX$1 anchor mnt p
    local -A seen=()
    if netns_exists "$ns"; then
        for p in $(ip netns pids "$ns" 2>/dev/null); do seen[$p]=1; done
    fi
    anchor=$(get "$name" anchor.pid)
    if alive "$anchor"; then
        mnt=$(readlink "/proc/$anchor/ns/mnt" 2>/dev/null || true)
        # never match our own or init's mount namespace (that would be everything)
        if [[ -n $mnt && $mnt != "$(readlink /proc/self/ns/mnt)" && $mnt != "$(readlink /proc/1/ns/mnt)" ]]; then
            for p in $(stat -c '%N' /proc/[0-9]*/ns/mnt 2>/dev/null | awk -v m="'$mnt'" '$3 == m {split($1, a, "/"); print a[3]}'); do
                seen[$p]=1
            done
        fi
    fi
    unset "seen[$$]" "seen[$BASHPID]"
    for p in "${!seen[@]}"; do alive "$p" && echo "$p"; done
    return 0
}

# kill_pids PID...: SIGTERM, wait up to GRACE seconds, SIGKILL the rest, wait for them
kill_pids() {
    (( $# )) || return 0
    local pids=("$@") left p i
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < GRACE * 50 + 100; i++)); do
        left=()
        for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
        (( ${#left[@]} )) || return 0
        if (( i == GRACE * 50 )); then kill -KILL "${left[@]}" 2>/dev/null || true; fi
        pids=("${left[@]}")
        sleep 0.02
    done
    warn "processes did not die: ${pids[*]}"
}

# wait_spawn PID FILE LOG: wait (max 5 s) until background PID has written FILE;
# fail early, showing LOG, if PID exits with an error.
wait_spawn() {
    local pid=$1 file=$2 log=$3 i rc
    for ((i = 0; i < 1000; i++)); do
        [[ -s $file ]] && return 0
        if [[ -n $pid ]] && ! alive "$pid"; then
            rc=0; wait "$pid" || rc=$?
            pid=""          # exit 0: setsid forked; keep waiting for the file
            if (( rc )); then break; fi
        fi
        sleep 0.005
    done
    [[ -s $file ]] && return 0
    tail -n 20 "$log" >&2 || true
    return 1
}

# ---------------------------------------------------------------- down

host_down() {  # host_down NAME PURGE   (lock held)
    local name=$1 purge=${2:-0} ns=$NS_PREFIX$1 hd veth br sdir pids
    hd=$(hostdir "$name")
    veth=$(get "$name" veth "$(veth_name "$name")")
    br=$(get "$name" bridge)
    sdir=$(get "$name" state_dir)
    mapfile -t pids < <(host_pids "$name")
    kill_pids "${pids[@]}"
    # anything that sneaked in between (a fork racing the kill)
    mapfile -t pids < <(host_pids "$name")
    kill_pids "${pids[@]}"
    if link_exists "$veth"; then ip link del "$veth" 2>/dev/null || true; fi
    if netns_exists "$ns"; then ip netns del "$ns" 2>/dev/null || warn "could not delete netns $ns"; fi
    rm -rf "$hd"
    if [[ $purge == 1 && -n $sdir && ${sdir##*/} == "$name" && $sdir == /?*/* ]]; then
        rm -rf "$sdir"
    fi
    maybe_remove_bridge "$br"
}

cmd_down() {
    local name="" purge=0
    while (( $# )); do
        case $1 in
            --purge) purge=1 ;;
            -*) die "down: unknown option $1" ;;
            *) [[ -z $name ]] || die "down: one NAME only"; name=$1 ;;
        esac
        shift
    done
    [[ -n $name ]] || usage
    valid_name "$name"; need_root; lock
    if [[ ! -d $(hostdir "$name") ]] && ! netns_exists "$NS_PREFIX$name" && ! link_exists "$(veth_name "$name")"; then
        echo "$name: not up"; return 0
    fi
    host_down "$name" "$purge"
    echo "$name: down"
}

cmd_down_all() {
    local only_br="" purge=0 d name n=0 br
    while (( $# )); do
        case $1 in
            --bridge) only_br=${2:?--bridge needs a value}; shift ;;
            --purge) purge=1 ;;
            *) die "down-all: unknown argument $1" ;;
        esac
        shift
    done
    need_root; lock
    for d in "$RUN_ROOT"/*/; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        [[ -z $only_br || $(get "$name" bridge) == "$only_br" ]] || continue
        host_down "$name" "$purge"; echo "$name: down"; n=$((n + 1))
    done
    if [[ -z $only_br ]]; then
        # strays of a run whose runtime dir vanished: namespaces named gh-*
        for name in $(ip netns list 2>/dev/null | awk '{print $1}'); do
            [[ $name == "$NS_PREFIX"* ]] || continue
            name=${name#"$NS_PREFIX"}
            host_down "$name" 0; echo "$name: down (stray)"; n=$((n + 1))
        done
        for br in "$RUN_ROOT"/.bridges/*; do [[ -f $br ]] && maybe_remove_bridge "${br##*/}"; done
    else
        maybe_remove_bridge "$only_br"
    fi
    (( n )) || echo "no test hosts"
}

# ---------------------------------------------------------------- up

host_healthy() {  # host_healthy NAME: everything that `up` built is still there
    local name=$1 veth br port spid sdir
    [[ -f $(hostdir "$name")/complete ]] || return 1
    anchor_ok "$name" || return 1
    veth=$(get "$name" veth) br=$(get "$name" bridge)
    link_exists "$veth" && [[ $(readlink "/sys/class/net/$veth/master" 2>/dev/null) == */"$br" ]] || return 1
    port=$(get "$name" sshd_port)
    if [[ -n $port ]]; then
        sdir=$(get "$name" state_dir)
        spid=$(cat "$sdir/sshd/sshd.pid" 2>/dev/null || true)
        alive "$spid" && [[ /proc/$spid/ns/net -ef /run/netns/$NS_PREFIX$name ]] || return 1
    fi
}

firewall_rules() {  # firewall_rules GW SSHD_PORT -> iptables-restore input
    echo '*filter'
    echo ':INPUT DROP [0:0]'
    echo ':FORWARD DROP [0:0]'
    echo ':OUTPUT ACCEPT [0:0]'
    echo '-A INPUT -i lo -j ACCEPT'
    echo '-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT'
    # management access for molecule/Ansible from the root namespace only
    [[ -z $2 ]] || echo "-A INPUT -s $1/32 -p tcp --dport $2 -j ACCEPT"
    echo 'COMMIT'
}

write_sshd_config() {  # write_sshd_config SSHD_DIR PORT
    local sd=$1 port=$2
    cat >"$sd/sshd_config" <<EOF
# generated by testnet.sh - test host sshd, runs inside the host's namespaces
Port $port
ListenAddress 0.0.0.0
HostKey $sd/ssh_host_ed25519_key
PidFile $sd/sshd.pid
AuthorizedKeysFile $sd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the state root usually lives under /tmp (mode 1777), which StrictModes rejects
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
MaxStartups 64:30:128
MaxSessions 64
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
LogLevel INFO
EOF
}

start_sshd() {  # start_sshd NAME PORT KEYFILE
    local name=$1 port=$2 keys=$3 sdir sd anchor pid i
    sdir=$(get "$name" state_dir) sd=$(get "$name" state_dir)/sshd
    anchor=$(get "$name" anchor.pid)
    [[ -x $SSHD ]] || die "$SSHD not found (apt-get install -y openssh-server)"
    mkdir -p "$sd"; chmod 700 "$sd"
    [[ -f $sd/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "testnet-$name" -f "$sd/ssh_host_ed25519_key"
    write_sshd_config "$sd" "$port"
    touch "$sd/authorized_keys"; chmod 600 "$sd/authorized_keys"
    mkdir -p /run/sshd; chmod 755 /run/sshd     # sshd's privilege-separation dir
    if grep -q '^root:!' /etc/shadow 2>/dev/null; then
        warn "root's password is locked ('!'); sshd with UsePAM no will refuse root logins"
    fi
    "$SSHD" -t -f "$sd/sshd_config" || die "sshd_config test failed ($sd/sshd_config)"
    rm -f "$sd/sshd.pid"
    # started through the anchor: sessions land in the host's mount + net namespaces
    setsid nsenter --target "$anchor" --mount --uts --net -- "$SSHD" -D -f "$sd/sshd_config" -E "$sd/sshd.log" \
        </dev/null >>"$sd/sshd.log" 2>&1 9>&- &
    # sshd writes its pidfile once it listens
    wait_spawn $! "$sd/sshd.pid" "$sd/sshd.log" || die "sshd for $name did not start (log: $sd/sshd.log)"
}

cmd_up() {
    local name="" ip_arg="" fw=0 sshd_port="" keys="" defroute=0 state_root=$DEFAULT_STATE_ROOT
    local br=$DEFAULT_BRIDGE fresh=0
    while (( $# )); do
        case $1 in
            --firewall-inbound-drop) fw=1 ;;
            --sshd) sshd_port=${2:?--sshd needs a PORT}; shift ;;
            --authorized-keys) keys=${2:?--authorized-keys needs a FILE}; shift ;;
            --default-route) defroute=1 ;;
            --state-root) state_root=${2:?--state-root needs a DIR}; shift ;;
            --bridge) br=${2:?--bridge needs a name}; shift ;;
            --fresh) fresh=1 ;;
            -*) die "up: unknown option $1" ;;
            *) if [[ -z $name ]]; then name=$1; elif [[ -z $ip_arg ]]; then ip_arg=$1; else die "up: extra argument $1"; fi ;;
        esac
        shift
    done
    [[ -n $name && -n $ip_arg ]] || usage
    valid_name "$name"
    parse_ip "$ip_arg"
    [[ -z $sshd_port || ( $sshd_port =~ ^[0-9]+$ && $sshd_port -ge 1 && $sshd_port -le 65535 ) ]] || die "bad sshd port '$sshd_port'"
    [[ -z $keys || -r $keys ]] || die "cannot read authorized keys file $keys"
    [[ ${#br} -le 15 && $br =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad bridge name '$br'"
    need_root
    mkdir -p "$state_root"
    state_root=$(cd "$state_root" && pwd -P)
    lock
    ensure_blackhole

    local ns=$NS_PREFIX$name veth hd sdir spec d other
    veth=$(veth_name "$name") hd=$(hostdir "$name") sdir=$state_root/$name
    spec="ip=$IP bridge=$br fw=$fw sshd=$sshd_port defroute=$defroute state=$sdir"

    if [[ -d $hd ]] && (( ! fresh )) && [[ $(get "$name" spec) == "$spec" ]] && host_healthy "$name"; then
        [[ -z $keys ]] || { mkdir -p "$sdir/sshd"; cp "$keys" "$sdir/sshd/authorized_keys"; }
        echo "$name: already up ip=$IP netns=$ns anchor=$(get "$name" anchor.pid)"
        return 0
    fi
    if [[ -d $hd ]] || netns_exists "$ns" || link_exists "$veth"; then
        host_down "$name" 0        # stale, broken, changed or --fresh: rebuild from scratch
    fi
    for d in "$RUN_ROOT"/*/; do
        [[ -f ${d}ip ]] || continue
        other=$(basename "$d")
        [[ $(<"${d}ip") != "$IP" ]] || die "$IP is already used by test host $other"
    done

    # from here on, any failure rolls the host back
    ROLLBACK=$name
    trap 'rc=$?; if (( rc )); then echo "$PROG: up $ROLLBACK failed, rolling back" >&2; host_down "$ROLLBACK" 0 || true; fi' EXIT
    mkdir -p "$hd"
    echo "$ns" >"$hd/netns"; echo "$veth" >"$hd/veth"; echo "$IP" >"$hd/ip"; echo "$br" >"$hd/bridge"
    echo "$sdir" >"$hd/state_dir"; echo "$spec" >"$hd/spec"; echo "$fw" >"$hd/firewall"
    echo "$sshd_port" >"$hd/sshd_port"

    for d in "${MOUNT_KEYS[@]}"; do mkdir -p "$sdir/$d"; done
    find "$sdir/run" -mindepth 1 -delete       # a fresh host boots with an empty /run/gatehouse
    for d in "${MOUNT_TARGETS[@]}"; do mkdir -p "$d"; done   # mount points (stay empty in the root ns)

    ensure_bridge "$br" "$GW"
    ip netns add "$ns"
    ip link add name "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" addrgenmode none 2>/dev/null || true
    ip link set "$veth" master "$br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 addrgenmode none 2>/dev/null || true
    ip -n "$ns" addr add "$IP/24" dev eth0
    ip -n "$ns" link set eth0 up
    (( ! defroute )) || ip -n "$ns" route add default via "$GW"
    if (( fw )); then
        command -v iptables-restore >/dev/null || die "--firewall-inbound-drop needs iptables"
        firewall_rules "$GW" "$sshd_port" | ip netns exec "$ns" iptables-restore -w
        if command -v ip6tables-restore >/dev/null; then
            firewall_rules "" "" | ip netns exec "$ns" ip6tables-restore -w
        fi
    fi

    # The anchor: private mount namespace inside the netns, mounts done, then it
    # writes its pid (= readiness) and turns into `sleep infinity`.
    local pidf=$hd/anchor.pid i
    # shellcheck disable=SC2016
    setsid ip netns exec "$ns" unshare --mount --uts --propagation private -- bash -c '
        set -e
        pidf=$1; name=$2; shift 2
        echo "$name" >/proc/sys/kernel/hostname
        while (( $# )); do mount --bind "$1" "$2"; shift 2; done
        echo $$ >"$pidf.tmp"; mv "$pidf.tmp" "$pidf"
        exec -a "gatehouse-testnet-anchor:$name" sleep infinity' anchor "$pidf" "$name" \
        "$sdir/etc" /etc/gatehouse "$sdir/lib" /var/lib/gatehouse "$sdir/run" /run/gatehouse \
        </dev/null >"$hd/anchor.log" 2>&1 9>&- &
    wait_spawn $! "$pidf" "$hd/anchor.log"
    anchor_ok "$name" || { cat "$hd/anchor.log" >&2; echo "$PROG: anchor of $name did not come up" >&2; false; }

    [[ -z $sshd_port ]] || start_sshd "$name" "$sshd_port" "$keys"
    [[ -z $keys ]] || { mkdir -p "$sdir/sshd"; cp "$keys" "$sdir/sshd/authorized_keys"; }
    touch "$hd/complete"
    trap - EXIT
    echo "$name: created ip=$IP netns=$ns anchor=$(get "$name" anchor.pid)"
}

# ---------------------------------------------------------------- exec, killall, status

cmd_exec() {
    local name=${1:-}
    [[ -n $name ]] || usage
    shift
    [[ ${1:-} != -- ]] || shift
    valid_name "$name"
    [[ $EUID -eq 0 ]] || die "must run as root"
    [[ -d $(hostdir "$name") ]] || die "test host $name is not up"
    anchor_ok "$name" || die "test host $name is broken (anchor gone); run: $PROG up ... --fresh"
    (( $# )) || set -- "${SHELL:-/bin/bash}"
    # keep the caller's working directory (opened before entering the namespaces)
    exec nsenter --target "$(get "$name" anchor.pid)" --mount --uts --net --wd="$PWD" -- "$@"
}

cmd_killall() {
    local name=${1:-} anchor sshd_pid p keep=()
    [[ -n $name ]] || usage
    valid_name "$name"; need_root
    [[ -d $(hostdir "$name") ]] || die "test host $name is not up"
    anchor=$(get "$name" anchor.pid)
    sshd_pid=$(cat "$(get "$name" state_dir)/sshd/sshd.pid" 2>/dev/null || true)
    for p in $(host_pids "$name"); do
        [[ $p == "$anchor" || $p == "$sshd_pid" ]] || keep+=("$p")
    done
    kill_pids "${keep[@]}"
    echo "$name: killed ${#keep[@]} process(es)"
}

cmd_status() {
    local want=${1:-} d name state rc=0 n=0
    printf '%-16s %-15s %-8s %-7s %-6s %-4s %-4s %s\n' NAME IP BRIDGE ANCHOR STATE SSHD FW STATE_DIR
    for d in "$RUN_ROOT"/*/; do
        [[ -d $d ]] || continue
        name=$(basename "$d")
        [[ -z $want || $want == "$name" ]] || continue
        n=$((n + 1))
        if host_healthy "$name"; then state=up; else state=BROKEN; [[ -z $want ]] || rc=1; fi
        printf '%-16s %-15s %-8s %-7s %-6s %-4s %-4s %s\n' "$name" "$(get "$name" ip)" "$(get "$name" bridge)" \
            "$(get "$name" anchor.pid -)" "$state" "$(get "$name" sshd_port)" "$( (( $(get "$name" firewall 0) )) && echo drop || echo -)" \
            "$(get "$name" state_dir)"
    done
    if [[ -n $want ]] && (( n == 0 )); then echo "$want: not up" >&2; return 1; fi
    return $rc
}

main() {
    local cmd=${1:-}
    (( $# )) && shift
    case $cmd in
        up) cmd_up "$@" ;;
        exec) cmd_exec "$@" ;;
        killall) cmd_killall "$@" ;;
        down) cmd_down "$@" ;;
        down-all) cmd_down_all "$@" ;;
        status) cmd_status "$@" ;;
        -h|--help|help|"") usage ;;
        *) echo "$PROG: unknown command '$cmd'" >&2; usage ;;
    esac
}

main "$@"
