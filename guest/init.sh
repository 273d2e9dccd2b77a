#!/bin/busybox sh
# cs guest init: runs as PID 1 from the initramfs, never from the user's image.
#
# It loads the virtio modules, finds the disks by their serial numbers
# (cs-lower0 is the top snapshot image, cs-lowerN the ones below it, cs-disk
# the workspace's own ext4 disk), stacks the read-only snapshot images under
# the disk's writable layer with overlayfs, writes the host identity files,
# brings up the network of QEMU's user mode, and hands PID 1 to the cs agent
# inside the new root. Settings come from the kernel command line (cs.*=).
#
# Any failure prints "cs-init: FATAL: ..." on the console and powers off, so
# the host sees a clean exit with the reason in the console log instead of a
# hung VM.

# busybox's applet links are made when the archive is built (see initramfs.ts).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /lower /disk

# Console lines carry the kernel's uptime so the host can time each phase.
say() {
  { read -r up _ </proc/uptime || read -r up _ </sysroot/proc/uptime || up=?; } 2>/dev/null
  echo "cs-init[$up]: $*" >/dev/console
}

fatal() {
  say "FATAL: $*"
  sync
  poweroff -f
  exit 1
}

mount -t proc proc /proc || fatal "cannot mount /proc"
mount -t sysfs sysfs /sys || fatal "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fatal "cannot mount /dev"

CMDLINE="$(cat /proc/cmdline)"
arg() {
  for word in $CMDLINE; do
    case "$word" in
      "$1="*) echo "${word#*=}"; return 0 ;;
    esac
  done
  return 1
}

say "start"
for module in /modules/*.ko; do
  [ -e "$module" ] || continue
  insmod "$module" 2>/dev/console || fatal "cannot load module ${module##*/}"
done

if [ "$(arg cs.probe)" = "1" ]; then
  say "probe ok"
  poweroff -f
fi

# Time: the RTC gives whole seconds; the host's clock at boot is as good.
now="$(arg cs.time)" && date -s "@$now" >/dev/null 2>&1

# Disks, by serial number (device names depend on probe order).
disk_by_serial() {
  for dev in /sys/block/vd*; do
    [ -e "$dev/serial" ] || continue
    if [ "$(cat "$dev/serial")" = "$1" ]; then
      echo "/dev/${dev##*/}"
      return 0
    fi
  done
  return 1
}

tries=0
until disk_by_serial cs-disk >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -gt 100 ] && fatal "the workspace disk (serial cs-disk) did not appear"
  sleep 0.05
done

lowers=""
n=0
while dev="$(disk_by_serial "cs-lower$n")"; do
  mkdir -p "/lower/$n"
  mount -t erofs -o ro "$dev" "/lower/$n" || fatal "cannot mount snapshot image $n ($dev)"
  lowers="${lowers:+$lowers:}/lower/$n"
  n=$((n + 1))
done
[ -n "$lowers" ] || fatal "no snapshot image attached"

disk="$(disk_by_serial cs-disk)"
mount -t ext4 -o noatime "$disk" /disk || fatal "cannot mount the workspace disk ($disk)"
mkdir -p /disk/upper /disk/work || fatal "cannot prepare the workspace disk"

# A refreshed root (cs apply after base_snapshot changed): the host raised
# cs.root. The disk's changes outside /home belonged to the old base and
# would shadow the new one, so they go; /home and cs's own state
# (/var/lib/cs: whether on_create ran) stay. The host took a restore point
# of the disk first. The number is written last: a crash in the middle
# redoes the whole step on the next boot.
generation="$(arg cs.root)" || generation=0
if [ "$generation" != "$(cat /disk/root-generation 2>/dev/null || echo 0)" ]; then
  say "new root (generation $generation): keeping /home and /var/lib/cs of this disk"
  if [ -d /disk/upper/var/lib/cs ] && [ ! -e /disk/refresh-keep ]; then
    mv /disk/upper/var/lib/cs /disk/refresh-keep || fatal "cannot set /var/lib/cs aside"
  fi
  for entry in /disk/upper/* /disk/upper/.[!.]* /disk/upper/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    [ "${entry##*/}" = home ] && continue
    rm -rf "$entry" || fatal "cannot drop $entry from the old root"
  done
  if [ -e /disk/refresh-keep ]; then
    { mkdir -p /disk/upper/var/lib && mv /disk/refresh-keep /disk/upper/var/lib/cs; } || fatal "cannot put /var/lib/cs back"
  fi
  rm -rf /disk/work/* 2>/dev/null
  echo "$generation" >/disk/root-generation.new && mv /disk/root-generation.new /disk/root-generation || fatal "cannot record the root generation"
  sync
fi
# redirect_dir, index and metacopy off: the upper stays plain files and
# whiteouts, which is what a snapshot of the workspace converts into a layer.
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=/disk/upper,workdir=/disk/work,redirect_dir=off,index=off,metacopy=off" /sysroot ||
  fatal "cannot stack the snapshots with overlayfs"

# cs workspaces need a glibc userland (Debian family), as Crafting's do.
if [ -e /sysroot/etc/alpine-release ] || ls /sysroot/lib/ld-musl-* >/dev/null 2>&1; then
  fatal "this image uses musl libc (Alpine); cs workspaces need a glibc (Debian-family) base image"
fi
say "root ready"

# Identity files. A symlink left by the image is replaced by a file: writes
# from here never follow a link out of the guest's root.
replace_file() {
  rm -f "/sysroot$1"
  cat >"/sysroot$1"
}
mkdir -p /sysroot/etc

# QEMU user networking: fixed addresses, DNS on the gateway's neighbour.
# The NIC is probed asynchronously after its module loads: wait for it briefly.
ip link set lo up
tries=0
while [ ! -e /sys/class/net/eth0 ] && [ "$tries" -lt 40 ]; do
  tries=$((tries + 1))
  sleep 0.05
done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" | replace_file /etc/resolv.conf
else
  say "no network device; the workspace has no network"
fi

# Kernel and runtime filesystems inside the new root.
for d in proc sys dev run tmp; do
  [ -d "/sysroot/$d" ] || { rm -f "/sysroot/$d"; mkdir -p "/sysroot/$d"; }
done
mount -t tmpfs -o mode=0755,nosuid,nodev run /sysroot/run || fatal "cannot mount /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /sysroot/tmp || fatal "cannot mount /tmp"
mkdir -p /sysroot/run/cs
# `cs` inside the workspace: a script that asks the host's cs, through the
# virtio-serial port named cs.host, to run snapshot commands for this
# workspace. Linked from /usr/local/bin only where nothing else is.
tries=0
while ! grep -qx cs.host /sys/class/virtio-ports/*/name 2>/dev/null && [ "$tries" -lt 40 ]; do
  tries=$((tries + 1))
  sleep 0.05
done
for f in /sys/class/virtio-ports/*/name; do
  [ "$(cat "$f" 2>/dev/null)" = cs.host ] || continue
  port="/dev/${f#/sys/class/virtio-ports/}"
  port="${port%/name}"
  # root's until the owner account exists (the account step gives it to the owner): not every guest user's.
  [ -c "$port" ] && chmod 0600 "$port" && ln -sf "$port" /sysroot/run/cs/host-port
done
# A read-only view of the workspace disk, for snapshots: the host reads the
# disk image while the agent holds the file system frozen (FIFREEZE).
mkdir -p /sysroot/run/cs/disk
{ mount --bind /disk /sysroot/run/cs/disk && mount -o remount,bind,ro /sysroot/run/cs/disk; } ||
  say "no read-only view of the workspace disk: snapshots of the running workspace will not work"
mount --move /proc /sysroot/proc
mount --move /sys /sysroot/sys
mount --move /dev /sysroot/dev
mkdir -p /sysroot/dev/pts /sysroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /sysroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /sysroot/dev/shm
[ -e /sysroot/dev/ptmx ] || ln -s pts/ptmx /sysroot/dev/ptmx

mkdir -p /sysroot/run/cs
cp /cs/agent /sysroot/run/cs/agent || fatal "cannot install the agent"
cp /bin/busybox /sysroot/run/cs/busybox
chmod 0755 /sysroot/run/cs/agent /sysroot/run/cs/busybox
mkdir -p /sysroot/run/cs/bin
cp /cs/cs-client.sh /sysroot/run/cs/bin/cs && chmod 0755 /sysroot/run/cs/bin/cs
if [ -d /sysroot/usr/local/bin ] && [ ! -L /sysroot/usr ] && [ ! -L /sysroot/usr/local ] && [ ! -L /sysroot/usr/local/bin ]; then
  if [ ! -e /sysroot/usr/local/bin/cs ] && [ ! -L /sysroot/usr/local/bin/cs ]; then
    ln -s /run/cs/bin/cs /sysroot/usr/local/bin/cs
  fi
fi

name="$(arg cs.hostname)" || name=workspace
hostname "$name"
echo "$name" | replace_file /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$name" | replace_file /etc/hosts


say "starting the agent"
exec switch_root /sysroot /run/cs/agent
fatal "switch_root failed"
