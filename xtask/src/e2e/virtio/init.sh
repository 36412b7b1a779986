#!/bin/sh
# The guest's /init for the virtio part of `cargo xtask e2e` (xtask/src/e2e/virtio.rs): probes
# the transitional virtio-blk and virtio-net VFs of the vfio-user server (and dumps the config
# space of its mlx-style VF, which no driver binds) with the kernel's
# virtio_pci (legacy path when `virtio_pci.force_legacy=1` is on the command line),
# virtio_blk and virtio_net; writes a pattern to /dev/vda with dd, reads it back and reads
# what the host wrote; pings the host over the net VF; prints what it saw between
# `=== BEGIN name ===` / `=== END name ===` markers. It never stops on a failed step: the host
# decides what passed, and a device that is missing (no function, no driver bound, no /dev/vda,
# no eth0) is reported as such, never used in its stead. Parameters come from the kernel command
# line (e2e.*=).
. /lib/e2e.sh

for arg in $(cat /proc/cmdline); do
    case $arg in
        e2e.boot=*) boot=${arg#*=} ;;
        e2e.write=*) write=${arg#*=} ;;
        e2e.host=*) host=${arg#*=} ;;
    esac
done

load-modules
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done

begin info
echo "kernel=$(uname -r)"
end info

begin function
dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1001 ]; then dev=$d; fi
done
if [ -n "$dev" ]; then
    echo "boot=$boot"
    echo "id=$(cat $dev/vendor):$(cat $dev/device)"
    echo "revision=$(cat $dev/revision)"
    echo "bar0=$(head -n 1 $dev/resource)"
    if [ -e $dev/driver ]; then
        echo "driver=$(basename $(readlink -f $dev/driver))"
    else
        echo "driver=none"
    fi
    for v in $dev/virtio*; do
        [ -e $v/features ] && echo "features=$(cat $v/features)"
    done
else
    echo "error=no PCI function 1af4:1001"
fi
if [ -b /dev/vda ]; then
    echo "disk=$(cat /sys/block/vda/size)"
else
    echo "error=no block device /dev/vda"
fi
end function

begin config
[ -n "$dev" ] && hexdump -v -e '32/1 "%02x" "\n"' $dev/config
end config

begin mlx-config
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor):$(cat $d/device)" = 0x15b3:0x101e ]; then
        hexdump -v -e '32/1 "%02x" "\n"' $d/config
    fi
done
end mlx-config

# The guest's pattern: 8 KiB of a line naming the boot, at 4 KiB block $write.
line="vfio-variant e2e guest pattern boot $boot"
i=0
: > /tmp/pattern
while [ $i -lt 8192 ]; do echo "$line" >> /tmp/pattern; i=$((i + ${#line} + 1)); done
dd if=/tmp/pattern of=/tmp/block bs=8192 count=1 2>/dev/null

# Without the block device, dd would write a plain file in /dev: never touch /dev/vda then.
begin write
echo "line=$line"
echo "sum=$(sha256sum < /tmp/block | cut -d' ' -f1)"
if [ -b /dev/vda ]; then
    out=$(dd if=/tmp/block of=/dev/vda bs=4096 seek=$write count=2 conv=fsync 2>&1)
    echo "status=$?"
    echo "$out" | tail -n 1
else
    echo "error=no block device /dev/vda"
fi
end write

sync
echo 3 > /proc/sys/vm/drop_caches
begin readback
[ -b /dev/vda ] && echo "sum=$(dd if=/dev/vda bs=4096 skip=$write count=2 2>/dev/null | sha256sum | cut -d' ' -f1)"
end readback

begin host
if [ -b /dev/vda ]; then
    echo "first=$(dd if=/dev/vda bs=4096 skip=$host count=1 2>/dev/null | head -n 1)"
    echo "sum=$(dd if=/dev/vda bs=4096 skip=$host count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
fi
end host

# The net VF: the host answers ARP and ping for 10.0.2.2 on the VF's socket.
begin net
net=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1000 ]; then net=$d; fi
done
if [ -z "$net" ]; then
    echo "error=no PCI function 1af4:1000"
elif [ ! -e $net/driver ]; then
    echo "error=no driver bound to the net function"
elif [ ! -e /sys/class/net/eth0 ]; then
    echo "driver=$(basename $(readlink -f $net/driver))"
    echo "error=no network interface eth0"
else
    echo "driver=$(basename $(readlink -f $net/driver))"
    for v in $net/virtio*; do
        [ -e $v/features ] && echo "features=$(cat $v/features)"
    done
    echo "mac=$(cat /sys/class/net/eth0/address)"
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ping -c 3 -W 5 10.0.2.2 > /tmp/ping 2>&1
    echo "ping=$?"
    grep -E "transmitted|bytes from" /tmp/ping
fi
end net

begin done
end done
poweroff -f
