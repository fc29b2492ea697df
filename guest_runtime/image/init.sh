#!/bin/busybox sh
# ProjectVM guest init: PID 1 of every project VM (QEMU microvm and Firecracker).
#
# Loads the virtio modules, finds the disks by label (pvm-root: the shared read-only root,
# pvm-data: the project's workspace), gives the root a tmpfs overlay so /etc, /var and /root
# stay writable (lost at shutdown; the workspace is what persists), starts the guest agent on
# the channel the kernel command line names, reaps orphans, and shuts down cleanly: sync,
# unmount the workspace, sync, reboot (the VMM exits on a guest reset).
#
# The agent runs as root; every command it starts runs as uid/gid 1000 (the image's "pvm"
# user, --run-as), which owns the workspace (the agent hands a disk still owned by root over
# when it starts). So no command can reach the agent's channel or change its code (root's,
# in /run/projectvm, 0755/0644).
#
# Kernel command line keys:
#   pvm.channel=virtio-serial | vsock:PORT   where the host reaches the agent
#   pvm.net=user                             bring up virtio-net (QEMU user networking)
#   pvm.ip=ADDR/LEN,GATEWAY,DNS              static address (default: QEMU's user network)
#   pvm.hostname=NAME
#   pvm.probe=1                              print PVM-PROBE-OK and reset at once (KVM probe)

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) becomes SIGINT to us instead of an instant reset.
echo 0 > /proc/sys/kernel/ctrl-alt-del

say() { echo "pvm-init: $*" > /dev/console; }

CHANNEL=virtio-serial
NET=
IP=10.0.2.15/24,10.0.2.2,10.0.2.3
HOST_NAME=projectvm
PROBE=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        pvm.channel=*) CHANNEL="${arg#pvm.channel=}" ;;
        pvm.net=*) NET="${arg#pvm.net=}" ;;
        pvm.ip=*) IP="${arg#pvm.ip=}" ;;
        pvm.hostname=*) HOST_NAME="${arg#pvm.hostname=}" ;;
        pvm.probe=*) PROBE="${arg#pvm.probe=}" ;;
    esac
done

if [ -n "$PROBE" ]; then
    echo "PVM-PROBE-OK" > /dev/console
    reboot -f
fi

die() {
    say "FATAL: $*"
    sync
    reboot -f
    while :; do sleep 1; done
}

load_modules() {
    for module in $(cat "$1"); do
        insmod "$module" 2>/dev/null || say "could not load $module"
    done
}

find_label() {
    # Devices appear shortly after their driver loads: look for up to ten seconds.
    tries=0
    while [ $tries -lt 200 ]; do
        found=$(findfs "LABEL=$1" 2>/dev/null) && { echo "$found"; return 0; }
        tries=$((tries + 1))
        sleep 0.05
    done
    return 1
}

find_port() {
    tries=0
    while [ $tries -lt 200 ]; do
        for port in /sys/class/virtio-ports/*; do
            if [ "$(cat "$port/name" 2>/dev/null)" = "$1" ]; then
                echo "/dev/${port##*/}"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.05
    done
    return 1
}

load_modules /etc/pvm/modules
ROOT_DEV=$(find_label pvm-root) || die "no disk labelled pvm-root (the shared root image)"
DATA_DEV=$(find_label pvm-data) || die "no disk labelled pvm-data (the project's workspace)"

mount -t ext4 -o ro "$ROOT_DEV" /lower || die "could not mount the root disk $ROOT_DEV"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
if ! mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work \
        overlay /newroot 2>/dev/null; then
    say "no overlayfs: the root stays read-only"
    mount --bind /lower /newroot
    for dir in /var/tmp /root; do
        mount -t tmpfs tmpfs "/newroot$dir" 2>/dev/null
    done
fi
mkdir -p /newroot/workspace
mount -t ext4 -o noatime "$DATA_DEV" /newroot/workspace \
    || die "could not mount the workspace disk $DATA_DEV"
# mkfs makes an empty lost+found; the workspace is the project's own, keep it tidy.
rmdir /newroot/workspace/lost+found 2>/dev/null
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount --bind /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/dev/shm
hostname "$HOST_NAME"
echo "$HOST_NAME" > /newroot/etc/hostname 2>/dev/null
ip link set lo up 2>/dev/null

if [ "$NET" = user ]; then
    load_modules /etc/pvm/modules-net
    address="${IP%%,*}"
    rest="${IP#*,}"
    gateway="${rest%%,*}"
    dns="${rest#*,}"
    tries=0
    while [ ! -e /sys/class/net/eth0 ] && [ $tries -lt 100 ]; do
        tries=$((tries + 1))
        sleep 0.05
    done
    ip link set eth0 up && ip addr add "$address" dev eth0 && ip route add default via "$gateway" \
        || say "could not configure eth0"
    echo "nameserver $dns" > /newroot/etc/resolv.conf
fi

mkdir -p -m 0755 /newroot/run/projectvm
cp /projectvm/agent.pyz /newroot/run/projectvm/agent.pyz || die "no guest agent in the initramfs"
chmod 0644 /newroot/run/projectvm/agent.pyz
case "$CHANNEL" in
    virtio-serial)
        PORT_DEV=$(find_port org.projectvm.agent) || die "no virtio-serial port org.projectvm.agent"
        AGENT_ARGS="--serial $PORT_DEV"
        ;;
    vsock:*)
        AGENT_ARGS="--vsock ${CHANNEL#vsock:}"
        ;;
    *)
        die "unknown pvm.channel=$CHANNEL"
        ;;
esac

AGENT=
start_agent() {
    chroot /newroot /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/workspace LANG=C.UTF-8 TERM=xterm PROJECTVM_VM=1 \
        python3 /run/projectvm/agent.pyz --root /workspace --run-as 1000:1000 $AGENT_ARGS \
        < /dev/null > /dev/console 2>&1 &
    AGENT=$!
}

shutdown_vm() {
    say "shutting down"
    trap '' TERM INT
    [ -n "$AGENT" ] && kill -TERM "$AGENT" 2>/dev/null
    kill -TERM -1 2>/dev/null
    sleep 0.2
    kill -KILL -1 2>/dev/null
    sync
    umount /newroot/workspace 2>/dev/null || mount -o remount,ro /newroot/workspace
    sync
    reboot -f
    while :; do sleep 1; done
}

trap 'STOPPING=1' TERM INT
STOPPING=
RESTARTS=0
start_agent
say "agent started ($AGENT_ARGS)"
while :; do
    # Waiting also reaps every orphan the kernel hands to PID 1.
    wait "$AGENT"
    status=$?
    [ -n "$STOPPING" ] && shutdown_vm
    kill -0 "$AGENT" 2>/dev/null && continue
    # The agent exits 0 when the host asked it to shut the VM down; otherwise it crashed.
    [ "$status" = 0 ] && shutdown_vm
    RESTARTS=$((RESTARTS + 1))
    [ $RESTARTS -gt 5 ] && { say "the agent keeps failing (status $status)"; shutdown_vm; }
    say "the agent exited with status $status; restarting it"
    sleep 1
    start_agent
done
