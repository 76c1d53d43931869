#!/bin/sh
# The init of a CVM in a system container: run by rootlesskit's child as
# root of the CVM's user namespace (the slot's uid on the host), in the
# CVM's own mount, network, PID, IPC, UTS and cgroup namespaces. It builds
# the CVM's root file system, pivots into it and becomes its Docker engine.
# Standard input is the engine's listening socket, bound by the node in a
# folder the CVM cannot write (socket activation), so the host never
# connects to a path the CVM controls.
# Environment (set by the node): CVM_DIR, CVM_NAME, CVM_CGROUPS
# ("controller=path ..."), CVM_COMPOSE_DIR (visible inside at the same path).
set -eu
R=$CVM_DIR/root
say() { echo "cvm-init: $*"; }
mount --make-rprivate /
mkdir -p "$R"
mount -t tmpfs -o mode=0755,size=64m cvmroot "$R"
cd "$R"
mkdir -p usr etc var/lib/docker run tmp proc sys dev home root tapp .old
ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64
mount --rbind /usr usr && mount -o remount,bind,ro usr
mount --bind "$CVM_DIR/disk" var/lib/docker
mount --bind -o ro "$CVM_DIR/shared" tapp
for f in hosts nsswitch.conf ld.so.cache os-release passwd group services protocols ssl alternatives ca-certificates; do
  cp -a "/etc/$f" etc/ 2>/dev/null || true
done
cp -L /etc/resolv.conf etc/resolv.conf 2>/dev/null || : > etc/resolv.conf
echo "$CVM_NAME" > etc/hostname; hostname "$CVM_NAME"
mount -t tmpfs -o mode=0755 run run; mount -t tmpfs -o mode=1777 tmp tmp
ln -s /run var/run
mkdir -p run/berth/agent
mount --bind "$CVM_DIR/agent" run/berth/agent
ln -s /run/berth/agent/dstack.sock run/dstack.sock
ln -s /run/berth/agent/tappd.sock run/tappd.sock
# The boot agent's compose folder, at the path the agent names it by.
if [ -n "${CVM_COMPOSE_DIR:-}" ]; then
  mkdir -p ".$CVM_COMPOSE_DIR"; mount --bind "$CVM_DIR/state/compose" ".$CVM_COMPOSE_DIR"
fi
mount -t proc proc proc
mount -t sysfs sysfs sys
mount -t tmpfs -o mode=0755,size=1m cgroup sys/fs/cgroup
for cg in ${CVM_CGROUPS:-}; do
  c=${cg%%=*}; p=${cg#*=}
  if [ "$c" = cgroup2 ]; then
    mount -t cgroup2 cgroup sys/fs/cgroup/unified 2>/dev/null || true
    continue
  fi
  # Not the named systemd hierarchy: with it, rootless runc takes the
  # cgroups for delegated and fails on their freezer.
  [ "$c" = systemd ] && continue
  mkdir -p "sys/fs/cgroup/$c"
  o=$c
  mount -t cgroup -o "$o" cgroup "sys/fs/cgroup/$c" 2>/dev/null || mount --bind "$p" "sys/fs/cgroup/$c"
  # cpu,cpuacct is also reachable as cpu and cpuacct, as on the host.
  case $c in *,*) for part in $(echo "$c" | tr , ' '); do ln -s "$c" "sys/fs/cgroup/$part"; done;; esac
done
mount -t tmpfs -o mode=0755,size=1m dev dev
for d in null zero full random urandom tty net; do
  if [ -d "/dev/$d" ]; then mkdir "dev/$d"; mount --rbind "/dev/$d" "dev/$d"
  else touch "dev/$d"; mount --bind "/dev/$d" "dev/$d"; fi
done
mkdir dev/pts dev/shm dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts dev/pts; ln -s pts/ptmx dev/ptmx
mount -t tmpfs -o mode=1777 shm dev/shm; mount -t mqueue mqueue dev/mqueue
ln -s /proc/self/fd dev/fd
pivot_root . .old; cd /; umount -l /.old; rmdir /.old
export HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin XDG_RUNTIME_DIR=/run ROOTLESSKIT_STATE_DIR=/run/rootlesskit
mkdir -p /run/rootlesskit
say "root file system ready; starting the CVM's Docker engine"
# fd 3: the listening socket the node bound (socket activation).
exec 3<&0 </dev/null
export LISTEN_FDS=1 LISTEN_PID=$$
exec dockerd --host fd:// --host unix:///run/docker.sock --data-root /var/lib/docker \
  --exec-root /run/docker --pidfile /run/docker.pid --userland-proxy-path=/usr/sbin/docker-proxy \
  --storage-driver=overlay2 --log-level=error
