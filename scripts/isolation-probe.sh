#!/bin/bash
# Measures the isolation boundaries a CVM could live in on this host (issue 17):
#   A. a system container per CVM: own user/mount/net/pid/ipc/uts/cgroup namespaces,
#      unprivileged on the host (a host uid of its own + a subuid range, via Debian's
#      uidmap/rootlesskit/slirp4netns), its own root file system (the host's /usr
#      read-only + private /etc, /run, /tmp, /dev, disk), its own Docker engine inside;
#   B. a QEMU microVM per CVM (Debian's cloud kernel + a busybox initramfs), KVM and TCG;
#   C. systemd-nspawn, the other Debian package that fits (quick probe).
# Prints a table of numbers and verdicts. Not part of `make test`. Needs root.
# Contacts only loopback and the namespaces it creates (apt-get aside).
# Cleans up on exit: its processes (killed through their cgroups), cgroups, users,
# /etc/subuid|subgid lines, folders, the mode of /dev/net/tun.
#
# Environment: N_MANY="5 20" (fleet sizes), SKIP_VM=1, SKIP_MANY=1, KEEP_CACHE=1 (keep the
# downloaded kernel in /var/cache/berth-isolation), VM_TIMEOUT=20 (seconds before a KVM boot
# is declared hung).
set -u
export LC_ALL=C
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

N_MANY=${N_MANY:-"5 20"}
VM_TIMEOUT=${VM_TIMEOUT:-20}
CACHE=/var/cache/berth-isolation
UID_BASE=61000          # host uid of CVM i is UID_BASE+i
SUBID_BASE=1000000      # its subuid range starts at SUBID_BASE+i*65536
PORT_BASE=18080
W=$(mktemp -d /tmp/berth-iso.XXXXXX)
chmod 0711 "$W"
CG_NAME=berth-iso-$$
RESULTS=$W/results.tsv
: > "$RESULTS"
STARTED_CVMS=""
CREATED_USERS=""
TUN_MODE=""
SUBUID_EXISTED=1; [ -e /etc/subuid ] || SUBUID_EXISTED=0
SUBGID_EXISTED=1; [ -e /etc/subgid ] || SUBGID_EXISTED=0
QEMU_PIDS=""

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc | awk '{printf "%.2f", $1}'; }
row() { local a b; a=$(echo "$2" | tr '\n\t' '  '); b=$(echo "$3" | tr '\n\t' '  ')
  printf '%s\t%s\t%s\n' "$1" "$a" "$b" >> "$RESULTS"; printf '  %-58s %-28s %s\n' "$1" "$a" "$b"; }
log() { echo "== $*"; }

# ---------------------------------------------------------------- cleanup
V1_CONTROLLERS="memory cpu cpuacct cpuset devices freezer blkio pids systemd"
cgroup_pairs() { # cgroup_pairs i -> controller=folder of the CVM's cgroups (v1: one per hierarchy; v2: one)
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo "cgroup2=/sys/fs/cgroup/$CG_NAME/cvm$1"
  else for c in $V1_CONTROLLERS; do
    [ -d "/sys/fs/cgroup/$c" ] && [ ! -L "/sys/fs/cgroup/$c" ] && echo "$c=/sys/fs/cgroup/$c/$CG_NAME/cvm$1"; done
  fi
}
cgroup_dirs() { cgroup_pairs "$1" | cut -d= -f2; }
kill_cvm() { # every process of CVM i, found through its cgroup (what the node would do)
  local i=$1 d p pass
  for pass in 1 2 3 4 5 6 7 8 9 10; do
    local left=0
    for d in $(cgroup_dirs "$i"); do
      [ -f "$d/cgroup.procs" ] || continue
      for p in $(cat "$d/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; left=1; done
    done
    [ $left = 0 ] && break
    sleep 0.2
  done
  for d in $(cgroup_dirs "$i"); do rmdir "$d" 2>/dev/null; done
}
cleanup() {
  trap - EXIT INT TERM
  echo "== cleanup"
  for p in $QEMU_PIDS; do kill -9 "$p" 2>/dev/null; done
  for i in $STARTED_CVMS; do kill_cvm "$i"; done
  for c in /sys/fs/cgroup/*/$CG_NAME /sys/fs/cgroup/$CG_NAME; do [ -d "$c" ] && rmdir "$c" 2>/dev/null; done
  [ -n "${NSPAWN_PID:-}" ] && kill -9 "$NSPAWN_PID" 2>/dev/null
  for u in $CREATED_USERS; do userdel "$u" 2>/dev/null; done
  sed -i '/^berthiso[0-9]*:/d' /etc/subuid /etc/subgid 2>/dev/null
  [ $SUBUID_EXISTED = 0 ] && [ ! -s /etc/subuid ] && rm -f /etc/subuid
  [ $SUBGID_EXISTED = 0 ] && [ ! -s /etc/subgid ] && rm -f /etc/subgid
  [ -n "$TUN_MODE" ] && chmod "$TUN_MODE" /dev/net/tun
  # files of the CVMs belong to subuids; nothing is mounted on the host side
  rm -rf "$W"
  [ "${KEEP_CACHE:-0}" = 1 ] || rm -rf "$CACHE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- packages
log "packages"
PKGS="uidmap rootlesskit slirp4netns fuse-overlayfs qemu-system-x86 systemd-container busybox-static docker.io curl bc"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null || { echo "apt-get failed:$missing"; exit 1; }
fi
DOCKER=$(command -v docker)

# ---------------------------------------------------------------- A. system container
# The CVM's own init, run by rootlesskit's child (root of the CVM's user namespace).
cat > "$W/cvm-init.sh" <<'EOF'
#!/bin/sh
set -eu
R=$CVM_DIR/root
mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=64m cvmroot "$R"
cd "$R"
mkdir -p usr etc var/lib/docker run tmp proc sys dev home root tapp .old
ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64
mount --rbind /usr usr && mount -o remount,bind,ro usr          # the host's programs, read-only
mount --bind "$CVM_DIR/disk" var/lib/docker                     # the CVM's disk
mount --bind -o ro "$CVM_DIR/shared" tapp                       # app-compose, sys-config, sealed env
for f in hosts nsswitch.conf ld.so.cache os-release passwd group services protocols ssl alternatives ca-certificates; do
  cp -a "/etc/$f" etc/ 2>/dev/null || true; done
cp -L /etc/resolv.conf etc/resolv.conf
echo "cvm-$CVM_NAME" > etc/hostname; hostname "cvm-$CVM_NAME"
mount -t tmpfs -o mode=0755 run run; mount -t tmpfs -o mode=1777 tmp tmp
ln -s /run var/run; mkdir run/berth; mount --bind "$CVM_DIR/sock" run/berth
mount -t proc proc proc
if [ "${CVM_SYS:-own}" = own ]; then   # a sysfs of the CVM's own net namespace; of the cgroup trees only its own
  mount -t sysfs sysfs sys; mount -t tmpfs -o mode=0755,size=1m cgroup sys/fs/cgroup
  for cg in $CVM_CGROUPS; do
    c=${cg%%=*}; p=${cg#*=}; mkdir -p "sys/fs/cgroup/$c"
    case $c in cgroup2) o="";; systemd) o="-o none,name=systemd";; *) o="-o $c";; esac
    if mount -t "$( [ "$c" = cgroup2 ] && echo cgroup2 || echo cgroup)" $o cgroup "sys/fs/cgroup/$c" 2>/dev/null; then m=mounted
    else mount --bind "$p" "sys/fs/cgroup/$c"; m=bound; fi
    [ "$c" = cgroup2 ] && { umount "sys/fs/cgroup/$c"; rmdir "sys/fs/cgroup/$c"; mount -t cgroup2 cgroup sys/fs/cgroup 2>/dev/null || mount --bind "$p" sys/fs/cgroup; }
    echo "cgroup $c: $m"
  done
  mount -o remount,ro,bind sys/fs/cgroup 2>/dev/null || true
else mount --rbind /sys sys; fi
mount -t tmpfs -o mode=0755,size=1m dev dev
for d in null zero full random urandom tty net; do
  if [ -d "/dev/$d" ]; then mkdir "dev/$d"; mount --rbind "/dev/$d" "dev/$d"; else touch "dev/$d"; mount --bind "/dev/$d" "dev/$d"; fi
done
mkdir dev/pts dev/shm dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts dev/pts; ln -s pts/ptmx dev/ptmx
mount -t tmpfs -o mode=1777 shm dev/shm; mount -t mqueue mqueue dev/mqueue
ln -s /proc/self/fd dev/fd
mkdir -p run/rootlesskit
if [ "${CVM_PORTS:-node}" = engine ]; then   # the inner engine publishes host ports itself through rootlesskit's API
  mount --bind "$ROOTLESSKIT_STATE_DIR" run/rootlesskit; PROXY=/usr/bin/rootlesskit-docker-proxy
else PROXY=/usr/sbin/docker-proxy; fi       # only the node (outside) may add host ports: rootlessctl add-ports
pivot_root . .old; cd /; umount -l /.old; rmdir /.old
export HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin XDG_RUNTIME_DIR=/run ROOTLESSKIT_STATE_DIR=/run/rootlesskit
echo "cvm-$CVM_NAME: root file system ready, starting dockerd"
exec dockerd --host unix:///var/run/docker.sock --host unix:///run/berth/docker.sock --data-root /var/lib/docker \
  --exec-root /run/docker --pidfile /run/docker.pid --userland-proxy-path="$PROXY" \
  --storage-driver=overlay2 --log-level=warn
EOF
chmod 0755 "$W/cvm-init.sh"

mkcvm() { # mkcvm i: host user, subuid range, folders, cgroups
  local i=$1 u=berthiso$1 uid=$((UID_BASE+$1)) D=$W/cvm$1 d
  if ! getent passwd "$u" >/dev/null; then
    useradd --system --no-create-home --home-dir "$D" --shell /usr/sbin/nologin -u "$uid" "$u" 2>/dev/null || return 1
    CREATED_USERS="$CREATED_USERS $u"
  fi
  echo "$u:$((SUBID_BASE+i*65536)):65536" >> /etc/subuid
  echo "$u:$((SUBID_BASE+i*65536)):65536" >> /etc/subgid
  mkdir -p "$D/disk" "$D/shared" "$D/root" "$D/sock"
  echo '{"app":"probe"}' > "$D/shared/app-compose.json"
  chown -R "$u:$u" "$D"; chmod 0700 "$D"
  for d in $(cgroup_dirs "$i"); do mkdir -p "$d"; done
  local cs=/sys/fs/cgroup/cpuset
  if [ -d "$cs/$CG_NAME/cvm$i" ]; then   # v1 cpuset: a new cgroup has no cpus until told
    cat "$cs/cpuset.cpus" > "$cs/$CG_NAME/cpuset.cpus"; cat "$cs/cpuset.mems" > "$cs/$CG_NAME/cpuset.mems"
    cat "$cs/cpuset.cpus" > "$cs/$CG_NAME/cvm$i/cpuset.cpus"; cat "$cs/cpuset.mems" > "$cs/$CG_NAME/cvm$i/cpuset.mems"
  fi
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo "+memory +cpu +pids" > "/sys/fs/cgroup/$CG_NAME/cgroup.subtree_control" 2>/dev/null
  fi
}
cg_file() { # cg_file i controller file
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo "/sys/fs/cgroup/$CG_NAME/cvm$1/$3"
  else for c in "$2" cpu,cpuacct; do [ -e "/sys/fs/cgroup/$c/$CG_NAME/cvm$1/$3" ] && { echo "/sys/fs/cgroup/$c/$CG_NAME/cvm$1/$3"; return; }; done
       echo "/sys/fs/cgroup/$2/$CG_NAME/cvm$1/$3"; fi
}
startcvm() { # startcvm i: the node's "start": into the cgroups, drop to the CVM's host uid, rootlesskit
  local i=$1 u=berthiso$1 D=$W/cvm$1
  STARTED_CVMS="$STARTED_CVMS $i"
  local procs=""; for d in $(cgroup_dirs "$i"); do procs="$procs $d/cgroup.procs"; done
  setsid sh -c 'for f in '"$procs"'; do echo $$ > $f; done; exec "$@"' sh \
    setpriv --reuid="$u" --regid="$u" --init-groups \
    env -i HOME="$D" XDG_RUNTIME_DIR="$D" PATH=/usr/sbin:/usr/bin:/sbin:/bin CVM_DIR="$D" CVM_NAME="$i" CVM_SYS="${CVM_SYS:-own}" CVM_PORTS="${CVM_PORTS:-node}" CVM_CGROUPS="$(cgroup_pairs "$i" | tr '\n' ' ')" \
    rootlesskit --state-dir="$D/rk" --net=slirp4netns --mtu=65520 --disable-host-loopback --port-driver=builtin \
      --slirp4netns-sandbox=auto --slirp4netns-seccomp=auto --pidns --ipcns --utsns --cgroupns \
      "$W/cvm-init.sh" > "$D/serial.log" 2>&1 < /dev/null &
  disown
}
waitping() { # waitping i t0 -> seconds until the inner engine answers /_ping (through the CVM's socket folder)
  local D=$W/cvm$1 n
  for n in $(seq 1 "${PING_TRIES:-600}"); do
    if curl -s -m 1 --unix-socket "$D/sock/docker.sock" http://cvm/_ping 2>/dev/null | grep -q OK; then since "$2"; return 0; fi
    sleep 0.05
  done
  echo FAIL; return 1
}
dk() { local i=$1; shift; DOCKER_HOST=unix://$W/cvm$i/sock/docker.sock "$DOCKER" "$@"; }
cvm_mem() { # cvm_mem i -> "rss_mib pss_mib nprocs cgroup_usage_mib"
  local i=$1 p rss=0 pss=0 n=0 f
  f=$(cg_file "$i" memory cgroup.procs)
  for p in $(cat "$f"); do
    [ -r "/proc/$p/smaps_rollup" ] || continue
    read -r r s < <(awk '/^Rss:/{r=$2} /^Pss:/{s=$2} END{print r+0, s+0}' "/proc/$p/smaps_rollup")
    rss=$((rss+r)); pss=$((pss+s)); n=$((n+1))
  done
  local use; use=$(cat "$(cg_file "$i" memory memory.usage_in_bytes)" 2>/dev/null || cat "$(cg_file "$i" memory memory.current)")
  echo "$((rss/1024)) $((pss/1024)) $n $((use/1048576))"
}

log "A. system container per CVM (rootlesskit + slirp4netns + own root fs + dockerd inside)"
if [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  TUN_MODE=$(stat -c %a /dev/net/tun); chmod 0666 /dev/net/tun   # Debian's udev default; restored on exit
  row "host: /dev/net/tun mode" "$TUN_MODE -> 666 (restored)" "slirp4netns opens it from inside the CVM's user namespace"
fi

# a busybox root file system to import as an image; the host's static docker CLI for the docker.sock test
BB=$W/bbroot; mkdir -p "$BB/bin" "$BB/tmp" "$BB/etc" "$BB/mnt"
cp /bin/busybox "$BB/bin/busybox"
for a in sh ls cat ps id nc sleep echo mount hostname ip httpd head grep true chroot mknod od dmesg wc tail; do ln -sf busybox "$BB/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$BB/etc/passwd"
BBCLI=$W/bbcli; cp -a "$BB" "$BBCLI"; cp "$DOCKER" "$BBCLI/bin/docker"

mkcvm 1 || { echo "cannot create user berthiso1"; exit 1; }
t0=$(now); startcvm 1; s=$(waitping 1 "$t0")
row "A start -> inner engine /_ping (1st CVM, cold)" "$s s" "startcvm 1; curl --unix-socket CVM/sock/docker.sock /_ping"
if [ "$s" = FAIL ]; then cat "$W/cvm1/serial.log"; exit 1; fi
sleep 3
read -r rss pss n use < <(cvm_mem 1)
row "A idle CVM, engine only: RSS / PSS / procs / cgroup" "${rss} / ${pss} MiB, $n procs, cg ${use} MiB" "sum of smaps_rollup over the CVM's cgroup.procs"

t0=$(now); tar -C "$BB" -c . | dk 1 import - bb:1 >/dev/null; s=$(since "$t0")
row "A docker import busybox (1.1 MB)" "$s s" "tar -C bbroot -c . | docker import - bb:1"
tar -C "$BBCLI" -c . | dk 1 import - bbcli:1 >/dev/null
t0=$(now); out=$(dk 1 run --rm bb:1 echo hi 2>&1); s=$(since "$t0")
row "A docker run --rm bb:1 echo (first)" "$s s" "$out"
t0=$(now); out=$(dk 1 run --rm bb:1 echo hi 2>&1); s=$(since "$t0")
row "A docker run --rm bb:1 echo (second)" "$s s" "$out"
dk 1 run -d --name idle bb:1 sleep 100000 >/dev/null; sleep 2
read -r rss pss n use < <(cvm_mem 1)
row "A idle CVM + 1 sleeping container: RSS / PSS" "${rss} / ${pss} MiB, $n procs, cg ${use} MiB" "same, after docker run -d bb:1 sleep"

# what works inside
out=$(dk 1 run --rm --privileged bb:1 sh -c 'grep CapEff /proc/self/status; mount -t tmpfs x /mnt && echo mounted' 2>&1 | tr '\n' ' ')
row "A --privileged" "$(echo "$out" | grep -q mounted && echo works || echo FAILS)" "$out"
out=$(dk 1 run --rm -v /var/run/docker.sock:/var/run/docker.sock bbcli:1 sh -c 'docker run --rm --name sibling bb:1 echo sibling-ran' 2>&1 | tr '\n' ' ')
row "A docker.sock bind, sibling container" "$(echo "$out" | grep -q sibling-ran && echo works || echo FAILS)" "$out"
out=$(dk 1 run --rm -v /:/host bb:1 sh -c 'ls /host | tr "\n" " "; ls /host/work 2>&1' 2>&1 | tr '\n' ' ')
row "A bind of / (= the CVM's root)" "works" "ls /host: $out"
t0=$(now); out=$(printf 'FROM bb:1\nRUN echo built-inside > /built\nCMD ["cat","/built"]\n' | DOCKER_BUILDKIT=0 dk 1 build -q -t app:1 - 2>&1 | tail -1; dk 1 run --rm app:1 2>&1); s=$(since "$t0")
row "A docker build, inline Dockerfile FROM bb:1" "$(echo "$out" | grep -q built-inside && echo "works, $s s" || echo FAILS)" "classic builder; $(echo "$out" | tail -1)"
t0=$(now); out=$(printf 'FROM bb:1\nRUN echo bk > /bk\n' | DOCKER_BUILDKIT=1 DOCKER_HOST=unix://$W/cvm1/sock/docker.sock /usr/bin/docker build -q - 2>&1 | tail -1); s=$(since "$t0")
row "A docker build with BuildKit (Debian's docker CLI)" "$(echo "$out" | grep -q sha256 && echo "works, $s s" || echo FAILS)" "DOCKER_BUILDKIT=1 /usr/bin/docker build -; $out"

# escapes: a privileged container with / of the CVM, --pid=host, tries the host
echo "berth-iso host secret" > "$W/host-secret"; chmod 0644 "$W/host-secret"
python3 - "$W/host.sock" > /dev/null 2>&1 <<'EOF' &
import socket, sys, time
a = socket.socket(socket.AF_UNIX); a.bind("\0berth-iso-abstract-%d" % 0); a.listen()
p = socket.socket(socket.AF_UNIX); p.bind(sys.argv[1]); p.listen()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("127.0.0.1", 47011)); t.listen()
time.sleep(60)
EOF
LISTENER=$!
sleep 0.5
esc=$(dk 1 run --rm --privileged --pid=host --net=host -v /:/host bb:1 sh -c '
  echo "pids: $(ls /proc | grep -c "^[0-9]")"
  echo "proc1root: $(ls /proc/1/root/ | tr "\n" " ")"
  echo "host-tmp-secret: $(cat /host'"$W"'/host-secret 2>&1 | head -1)"
  echo "host-loopback: $(nc -w 2 10.0.2.2 47011 </dev/null 2>&1 | head -1)"
  echo "mknod: $(mknod /tmp/b b 8 0 2>&1)"
  echo "dmesg: $(dmesg 2>&1 | head -1)"
  echo "cgroupfs: $(ls /sys/fs/cgroup 2>&1 | tr "\n" " ")"
  echo "abstract-unix: $(chroot /host python3 -c "import socket;s=socket.socket(socket.AF_UNIX);s.connect(\"\0berth-iso-abstract-0\");print(\"CONNECTED\")" 2>&1 | tail -1)"
  echo "path-unix: $(ls '"$W"'/host.sock /host'"$W"'/host.sock 2>&1 | tr "\n" " ")"
' 2>&1)
kill "$LISTENER" 2>/dev/null
echo "$esc" | sed 's/^/    /'
row "A escape: processes seen by --pid=host" "$(echo "$esc" | sed -n 's/^pids: //p') pids" "all the CVM's own (ps shows rootlesskit child, dockerd, containerd, shims)"
row "A escape: host file ($W/host-secret)" "$(echo "$esc" | grep -q 'berth-iso host secret' && echo READ || echo 'not visible')" "$(echo "$esc" | sed -n 's/^host-tmp-secret: //p')"
row "A escape: host loopback 10.0.2.2:47011" "$(echo "$esc" | sed -n 's/^host-loopback: //p' | grep -qi unreachable && echo unreachable || echo "$(echo "$esc" | sed -n 's/^host-loopback: //p')")" "slirp4netns --disable-host-loopback"
row "A escape: host abstract unix socket" "$(echo "$esc" | grep -q CONNECTED && echo CONNECTED || echo refused)" "$(echo "$esc" | sed -n 's/^abstract-unix: //p')"
row "A escape: host unix socket by path" "$(echo "$esc" | sed -n 's/^path-unix: //p' | grep -q 'No such file' && echo 'not visible' || echo VISIBLE)" "$(echo "$esc" | sed -n 's/^path-unix: //p')"
out=$(dk 1 run --rm -v /var/run/docker.sock:/var/run/docker.sock bbcli:1 docker run --rm --privileged -v /:/h bb:1 sh -c "cat /h$W/host-secret 2>&1; ls /h/var/lib/docker | head -3 | tr '\n' ' '" 2>&1 | tr '\n' ' ')
row "A escape: via docker.sock, sibling binds / and looks for the host's folder" "$(echo "$out" | grep -q 'No such file' && echo 'not visible' || echo VISIBLE)" "$out"
row "A escape: mknod block device" "$(echo "$esc" | sed -n 's/^mknod: //p' | grep -q 'not permitted' && echo refused || echo ALLOWED)" "$(echo "$esc" | sed -n 's/^mknod: //p')"
row "A escape: dmesg" "$(echo "$esc" | sed -n 's/^dmesg: //p' | grep -q 'not permitted' && echo refused || echo ALLOWED)" "$(echo "$esc" | sed -n 's/^dmesg: //p')"

# a second CVM: same container_name, the other's files and processes, ports and their clash
mkcvm 2; t0=$(now); startcvm 2; s=$(waitping 2 "$t0")
row "A start -> /_ping (2nd CVM, warm cache)" "$s s" "startcvm 2"
tar -C "$BB" -c . | dk 2 import - bb:1 >/dev/null
dk 2 run -d --name idle bb:1 sleep 100000 >/dev/null 2>&1
row "A container_name 'idle' in two CVMs at once" "$(dk 2 ps --format '{{.Names}}' | grep -qx idle && dk 1 ps --format '{{.Names}}' | grep -qx idle && echo works || echo FAILS)" "docker run -d --name idle in each"
other=$(dk 1 run --rm --privileged --pid=host -v /:/host bb:1 sh -c "ls /host$W/cvm2 2>&1; ps -o comm | sort | uniq -c | tr '\n' ' '" 2>&1 | tr '\n' ' ')
row "A escape: other CVM's folder and processes" "$(echo "$other" | grep -q 'No such file' && echo 'not visible' || echo VISIBLE)" "$other"
P=$PORT_BASE
if [ "${CVM_PORTS:-node}" = engine ]; then
  out1=$(dk 1 run -d --name web -p 127.0.0.1:$P:80 bb:1 sh -c 'echo served-by-cvm1 > /tmp/index.html; httpd -f -p 80 -h /tmp' 2>&1 | grep -m1 -i error)
  how="inner docker run -p 127.0.0.1:$P:80 (rootlesskit-docker-proxy -> rootlesskit API)"
  out2c="dk 2 run -d --name web -p 127.0.0.1:$P:80 bb:1 httpd -f -p 80"
else
  # the CVM publishes inside its own network namespace; the node maps the compose port onto the host
  dk 1 run -d --name web -p 8080:80 bb:1 sh -c 'echo served-by-cvm1 > /tmp/index.html; httpd -f -p 80 -h /tmp' >/dev/null 2>&1
  dk 2 run -d --name web -p 8080:80 bb:1 httpd -f -p 80 >/dev/null 2>&1
  out1=$(setpriv --reuid=berthiso1 --regid=berthiso1 --init-groups rootlessctl --socket "$W/cvm1/rk/api.sock" add-ports "127.0.0.1:$P:8080/tcp" 2>&1)
  how="inner -p 8080:80, then the node: rootlessctl --socket CVM/rk/api.sock add-ports 127.0.0.1:$P:8080/tcp"
fi
sleep 0.5
got=$(curl -s -m 3 "http://127.0.0.1:$P/index.html")
row "A port 127.0.0.1:$P published from CVM 1" "$( [ "$got" = served-by-cvm1 ] && echo works || echo FAILS)" "$how; curl -> '$got' $out1"
got=$(curl -s -m 3 -o /dev/null -w '%{time_total}' "http://127.0.0.1:$P/index.html")
row "A published port, one request (curl time_total)" "$got s" "through rootlesskit's builtin port driver"
if [ "${CVM_PORTS:-node}" = engine ]; then
  out2=$(dk 2 run -d --name web -p 127.0.0.1:$P:80 bb:1 sh -c 'httpd -f -p 80' 2>&1 | grep -m1 -i error)
else
  out2=$(setpriv --reuid=berthiso2 --regid=berthiso2 --init-groups rootlessctl --socket "$W/cvm2/rk/api.sock" add-ports "127.0.0.1:$P:8080/tcp" 2>&1)
fi
row "A same host port from CVM 2 (clash)" "$(echo "$out2" | grep -qi 'address already in use' && echo 'refused: EADDRINUSE' || echo "$out2")" "$out2"
row "A who listens on the host" "$(ss -Hltnp "sport = :$P" | grep -o 'users:(("[^"]*"' | head -1 | cut -d'"' -f2) as $(ss -Hltnpe "sport = :$P" | grep -o 'uid:[0-9]*' | head -1)" "ss -ltnpe: the CVM's rootlesskit parent, as the CVM's host uid"
out=$(dk 1 run --rm --net=host bb:1 sh -c "ls /run/rootlesskit 2>&1 | tr '\n' ' '" 2>&1)
row "A can the CVM add host ports itself" "$( [ "${CVM_PORTS:-node}" = engine ] && echo 'yes (api.sock inside)' || echo 'no: no api.sock inside')" "CVM_PORTS=${CVM_PORTS:-node}"
kill_cvm 2

# resources bounded for the whole CVM (cgroup v1: memory.limit_in_bytes, cpu.cfs_quota_us)
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  echo $((256*1048576)) > "$(cg_file 1 memory memory.max)"; echo "100000 100000" > "$(cg_file 1 cpu cpu.max)"
else
  echo $((256*1048576)) > "$(cg_file 1 memory memory.limit_in_bytes)"
  echo 100000 > "$(cg_file 1 cpu cpu.cfs_period_us)"; echo 100000 > "$(cg_file 1 cpu cpu.cfs_quota_us)"
fi
out=$(dk 1 run --rm bb:1 sh -c 'dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null; echo "dd exit=$?"' 2>&1 | tail -1)
row "A memory bound 256 MiB; a container takes 400 MB" "$out" "inner process OOM-killed inside the CVM's cgroup (exit 137)"
u0=$(cat "$(cg_file 1 cpuacct cpuacct.usage)" 2>/dev/null || echo 0); t0=$(now)
dk 1 run --rm bb:1 sh -c '(while :; do :; done) & (while :; do :; done) & sleep 3; kill %1 %2' >/dev/null 2>&1
u1=$(cat "$(cg_file 1 cpuacct cpuacct.usage)" 2>/dev/null || echo 0)
row "A cpu bound 1 vCPU; 2 busy loops for 3 s" "$(echo "($u1 - $u0)/1000000000" | bc -l | awk '{printf "%.2f", $1}') CPU-s in $(since "$t0") s" "cpuacct.usage of the CVM's cgroup (unbounded: ~2 CPU-s per wall second on this 2-core host)"
kill_cvm 1

# many at once
if [ "${SKIP_MANY:-0}" != 1 ]; then
  k=0
  for N in $N_MANY; do
    k=$((k+1)); base=$((100*k))   # fresh CVMs for each fleet
    log "A. $N CVMs at once"
    for i in $(seq 1 "$N"); do mkcvm $((base+i)) >/dev/null 2>&1 || true; done
    sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
    free0=$(awk '/MemAvailable/{print $2}' /proc/meminfo)
    t0=$(now)
    for i in $(seq 1 "$N"); do startcvm $((base+i)); done
    fails=0; for i in $(seq 1 "$N"); do s=$(waitping $((base+i)) "$t0")
      if [ "$s" = FAIL ]; then fails=$((fails+1)); echo "  CVM $((base+i)) did not answer; its serial log ends:"; tail -3 "$W/cvm$((base+i))/serial.log" | sed 's/^/    /'; fi; done
    s=$(since "$t0")
    sleep 3
    trss=0; tpss=0; tuse=0
    for i in $(seq 1 "$N"); do read -r rss pss n use < <(cvm_mem $((base+i))); trss=$((trss+rss)); tpss=$((tpss+pss)); tuse=$((tuse+use)); done
    free1=$(awk '/MemAvailable/{print $2}' /proc/meminfo)
    row "A $N CVMs started together: all /_ping" "$s s ($fails failed)" "startcvm x$N in parallel, waitping each"
    row "A $N idle CVMs: RSS / PSS total (per CVM)" "$trss / $tpss MiB ($((tpss/N)) MiB PSS each)" "sum over cgroups (memory.usage_in_bytes: $tuse MiB); MemAvailable drop $(( (free0-free1)/1024 )) MiB"
    for i in $(seq 1 "$N"); do kill_cvm $((base+i)); done
  done
fi

# ---------------------------------------------------------------- B. microVM
if [ "${SKIP_VM:-0}" != 1 ]; then
  log "B. QEMU microVM (Debian cloud kernel + busybox initramfs)"
  mkdir -p "$CACHE"
  kver=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ ! -f "$CACHE/vmlinuz" ]; then
    (cd "$CACHE" && apt-get download "$kver" >/dev/null 2>&1) && dpkg-deb -x "$CACHE"/linux-image-*.deb "$CACHE/x" && cp "$CACHE"/x/boot/vmlinuz-* "$CACHE/vmlinuz" && rm -rf "$CACHE/x"
  fi
  IR=$W/initramfs; mkdir -p "$IR/bin" "$IR/proc" "$IR/sys" "$IR/dev"; cp /bin/busybox "$IR/bin/"
  cat > "$IR/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
echo "BERTH-INIT $(cut -d' ' -f1 /proc/uptime)"
echo "BERTH-SHELL-READY"
exec setsid cttyhack sh
EOF
  chmod +x "$IR/init"; (cd "$IR" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$W/initrd.gz"
  qboot() { # qboot kvm|tcg timeout -> "shell_s rss_mib" or "HUNG <last line>"
    local accel="-accel tcg" out=$W/q-$1.out fifo=$W/q-$1.fifo t0 qp ready="" rss=0
    [ "$1" = kvm ] && accel="-enable-kvm"
    mkfifo "$fifo"; t0=$(now)
    qemu-system-x86_64 $accel -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
      -kernel "$CACHE/vmlinuz" -initrd "$W/initrd.gz" -append "console=ttyS0 earlyprintk=ttyS0 panic=-1 quiet" < "$fifo" > "$out" 2>&1 &
    qp=$!; QEMU_PIDS="$QEMU_PIDS $qp"; exec 9> "$fifo"
    while kill -0 $qp 2>/dev/null; do
      if [ -z "$ready" ] && grep -q BERTH-SHELL-READY "$out"; then
        ready=$(since "$t0"); rss=$(awk '/VmRSS/{print int($2/1024)}' /proc/$qp/status)
        echo 'echo BERTH-ECHO-$((6*7)); poweroff -f' >&9
      fi
      if [ "$(echo "$(now) - $t0 > $2" | bc)" = 1 ]; then kill -9 $qp; break; fi
      sleep 0.05
    done
    wait $qp 2>/dev/null; exec 9>&-
    local init; init=$(sed -n 's/.*BERTH-INIT \([0-9.]*\).*/\1/p' "$out" | head -1)
    if [ -n "$ready" ] && grep -q BERTH-ECHO-42 "$out"; then echo "$ready $rss ${init:-?}"
    else echo "HUNG $(tr -d '\033' < "$out" | tr '\r' '\n' | grep -v '^\s*$' | tail -2 | tr '\n' '|' | cut -c1-160)"; fi
  }
  r=$(qboot tcg 60)
  row "B TCG: start -> busybox shell (guest /init at)" "$(echo "$r" | awk '{print $1" s (init at "$3" s guest time)"}')" "qemu-system-x86_64 -accel tcg -m 256 -kernel vmlinuz(cloud) -initrd busybox"
  row "B TCG: RSS of the QEMU process at the shell" "$(echo "$r" | awk '{print $2" MiB"}')" "VmRSS, -m 256"
  r=$(qboot kvm "$VM_TIMEOUT")
  row "B KVM: start -> shell" "$(echo "$r" | cut -c1-60)" "-enable-kvm, given up after ${VM_TIMEOUT}s; kvm module here: $(ls /sys/module | grep -E '^kvm_' | tr '\n' ' ')"
  # Debian's docker.io engine inside the TCG guest (initramfs root: runc needs DOCKER_RAMDISK, no pivot_root)
  ER=$W/vmroot; mkdir -p "$ER/bin" "$ER/usr/bin" "$ER/usr/sbin" "$ER/lib/x86_64-linux-gnu" "$ER/lib64" "$ER/proc" "$ER/sys" "$ER/dev" "$ER/run" "$ER/tmp" "$ER/var/lib/docker" "$ER/etc"
  cp /bin/busybox "$ER/bin/"
  for b in /usr/sbin/dockerd /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc; do
    cp "$b" "$ER$b"; ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do cp -L "$l" "$ER$l"; done; done
  cp "$DOCKER" "$ER/usr/bin/docker"; echo 'root:x:0:0:root:/root:/bin/sh' > "$ER/etc/passwd"; echo 'root:x:0:' > "$ER/etc/group"
  tar -C "$BB" -c . > "$ER/bb.tar"
  cat > "$ER/init" <<'EOF2'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
up() { cut -d' ' -f1 /proc/uptime; }
echo "BERTH-INIT $(up)"
DOCKER_RAMDISK=true dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs --log-level=error >/tmp/dockerd.log 2>&1 &
until docker version >/dev/null 2>&1; do sleep 0.2; done
echo "BERTH-ENGINE-UP $(up)"
docker import - bb:1 < /bb.tar >/dev/null; echo "BERTH-IMPORTED $(up)"
docker run --rm --net=none bb:1 echo BERTH-INNER-RAN; echo "BERTH-RUN-DONE $(up)"
docker run --rm --net=none bb:1 echo BERTH-INNER-RAN2; echo "BERTH-RUN2-DONE $(up)"
poweroff -f
EOF2
  chmod +x "$ER/init"; (cd "$ER" && find . | busybox cpio -o -H newc 2>/dev/null) > "$W/vmroot.cpio"
  out=$W/q-engine.out; t0=$(now); eu=""; rss=0; peak=0
  qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$W/vmroot.cpio" -append "console=ttyS0 panic=-1 quiet" < /dev/null > "$out" 2>&1 &
  qp=$!; QEMU_PIDS="$QEMU_PIDS $qp"
  while kill -0 $qp 2>/dev/null; do
    r=$(awk '/VmRSS/{print int($2/1024)}' /proc/$qp/status 2>/dev/null); [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
    if [ -z "$eu" ] && grep -q BERTH-ENGINE-UP "$out"; then eu=$(since "$t0"); rss=$r; fi
    [ "$(echo "$(now) - $t0 > 180" | bc)" = 1 ] && kill -9 $qp
    sleep 0.25
  done
  g() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p" "$out" | head -1; }
  row "B TCG + dockerd (initramfs, vfs): start -> engine up" "${eu:-FAIL} s (guest: init $(g BERTH-INIT), engine $(g BERTH-ENGINE-UP))" "qemu -accel tcg -m 1024 -smp 2; 'until docker version' inside"
  row "B TCG + dockerd: docker run --rm bb echo, 1st / 2nd" "$(echo "$(g BERTH-RUN-DONE) - $(g BERTH-IMPORTED)" | bc) s / $(echo "$(g BERTH-RUN2-DONE) - $(g BERTH-RUN-DONE)" | bc) s" "guest uptime deltas; $(grep -c BERTH-INNER-RAN "$out") of 2 ran"
  row "B TCG + dockerd: QEMU RSS at engine up / peak" "$rss / $peak MiB" "200 MB initramfs in a 1 GiB guest"
  r=$(qemu-system-x86_64 -enable-kvm -cpu host -m 64 -nodefaults -nographic -no-reboot -kernel "$CACHE/vmlinuz" -append console=ttyS0 -serial none -monitor none 2>&1 < /dev/null | grep -m1 -i error & sleep 3; kill %1 2>/dev/null)
  row "B KVM -cpu host" "${r:-no error in 3 s}" "qemu-system-x86_64 -enable-kvm -cpu host"
fi

# ---------------------------------------------------------------- C. systemd-nspawn
log "C. systemd-nspawn"
NR=$W/nspawn-root; mkdir -p "$NR"; tar -C "$BB" -c . | tar -C "$NR" -x; mkdir -p "$NR/usr" "$NR/proc" "$NR/sys" "$NR/dev" "$NR/run"; touch "$NR/etc/os-release"
t0=$(now); out=$(timeout 20 systemd-nspawn --quiet --register=no --keep-unit --private-users=pick --private-users-ownership=chown \
  --private-network --as-pid2 -D "$NR" /bin/sh -c 'id; hostname; ls /sys/class/net | tr "\n" " "' 2>&1 | tr '\n' ' '); s=$(since "$t0")
row "C systemd-nspawn -U --private-network, run sh" "$s s" "$(echo "$out" | cut -c1-150)"

# ---------------------------------------------------------------- table
echo
echo "| measurement | result | how / evidence |"
echo "| --- | --- | --- |"
awk -F'\t' '{gsub(/\|/,"\\|"); printf "| %s | %s | %s |\n", $1, $2, substr($3,1,200)}' "$RESULTS"
