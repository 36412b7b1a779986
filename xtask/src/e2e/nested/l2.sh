#!/bin/sh
# L2's /init for the nested part of `cargo xtask e2e`: the unmodified nvme driver on the function
# L1 passes through (QEMU's vfio-pci or vfio-user-pci). Reads the disk's first MiB and writes one
# MiB at slot `e2e.slot` (in MiB), both with O_DIRECT, and prints `key=value` lines. With
# `e2e.bench=1` it then runs /bin/blkbench (`cargo xtask bench`) on the disk.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
/bin/load-modules

param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^e2e\.$1=//p"; }
slot=$(param slot)
irqs() { grep nvme /proc/interrupts | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i } END { print s + 0 }'; }

dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x0010 ]; then
        dev=$d
    fi
done
echo "l2_device=$(basename "$dev")"
echo "config=$(hexdump -v -e '1/1 "%02x"' "$dev/config")"
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "driver=$(basename "$(readlink "$dev/driver")")"
echo "irq_before=$(irqs)"
echo "uptime_io_start=$(cut -d' ' -f1 /proc/uptime)"
echo "read_md5=$(dd if=/dev/nvme0n1 iflag=direct bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/w bs=1M count=1 2>/dev/null
echo "written_md5=$(md5sum < /tmp/w | cut -d' ' -f1)"
dd if=/tmp/w of=/dev/nvme0n1 oflag=direct bs=1M seek="$slot" count=1 2>/dev/null
echo "write_status=$?"
echo "readback_md5=$(dd if=/dev/nvme0n1 iflag=direct bs=1M skip="$slot" count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "irq_after=$(irqs)"
echo "uptime_io_end=$(cut -d' ' -f1 /proc/uptime)"
grep nvme /proc/interrupts | sed 's/^/interrupts: /'
# An igb VF (8086:10ca), when this L2 has one: the MAC its unmodified igbvf driver reports.
if grep -q 0x10ca /sys/bus/pci/devices/*/device 2>/dev/null; then
    i=0
    mac=
    while [ -z "$mac" ] && [ $i -lt 100 ]; do
        for n in /sys/class/net/*; do
            if [ "$(basename "$(readlink "$n/device/driver" 2>/dev/null)")" = igbvf ]; then
                mac=$(cat "$n/address")
            fi
        done
        [ -z "$mac" ] && sleep 0.1
        i=$((i + 1))
    done
    echo "vf_mac=$mac"
    # Packets with L1's PF through the VF: the VF's VLAN (5) is added and taken off by the
    # device, so L2 sends untagged frames and L1 answers on its VLAN 5 interface.
    vfnet=
    for n in /sys/class/net/*; do
        [ "$(cat "$n/address" 2>/dev/null)" = "$mac" ] && vfnet=$(basename "$n")
    done
    ip addr add 10.5.0.2/24 dev "$vfnet"
    ip link set "$vfnet" up
    i=0
    while [ "$(cat "/sys/class/net/$vfnet/carrier" 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    ping -c 4 -W 3 10.5.0.1 > /tmp/ping.out 2>&1
    sed 's/^/ping: /' /tmp/ping.out
    echo "vf_ping_replies=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)"
fi
if [ "$(param bench)" = 1 ]; then
    echo "bench_start"
    sleep 2
    blkbench --rand-seconds 3 --seq-seconds 2 /dev/nvme0n1
    # L1 samples CPU times once a second: stay up until it has seen the figures.
    sleep 2
fi
echo "l2_done=1"
poweroff -f
