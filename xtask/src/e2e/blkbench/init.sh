#!/bin/sh
# The guest's /init for the block benchmark of `cargo xtask bench` (xtask/src/e2e/blkbench.rs):
# runs /bin/blkbench (O_DIRECT, queue depth 1: 4 KiB random reads, then 1 MiB sequential reads)
# on every virtio disk, round after round, the order of the disks reversed every other round.
# Prints what it saw between `=== BEGIN name ===` / `=== END name ===` markers; the host decides.
# Parameters come from the kernel command line (blkbench.*=).
. /lib/e2e.sh

rounds=9 rand=1 seq=0.5 disks=2
for arg in $(cat /proc/cmdline); do
    case $arg in
        blkbench.rounds=*) rounds=${arg#*=} ;;
        blkbench.rand=*) rand=${arg#*=} ;;
        blkbench.seq=*) seq=${arg#*=} ;;
        blkbench.disks=*) disks=${arg#*=} ;;
    esac
done

load-modules
n=0
while [ "$(ls /sys/block | grep -c '^vd')" -lt "$disks" ] && [ $n -lt 100 ]; do
    sleep 0.1
    n=$((n + 1))
done

# The PCI function behind a disk.
pci() { basename "$(dirname "$(readlink -f "/sys/block/$1/device")")"; }

begin disks
disks=
for b in /sys/block/vd*; do
    [ -e "$b" ] || continue
    name=$(basename "$b")
    disks="$disks $name"
    q=$b/queue
    echo "$name pci=$(pci "$name") sectors=$(cat "$b/size") max_segments=$(cat "$q/max_segments")" \
        "max_sectors_kb=$(cat "$q/max_sectors_kb") features=$(cat "$b/device/features")"
done
end disks

r=1
while [ "$r" -le "$rounds" ]; do
    order=$disks
    if [ $((r % 2)) = 0 ]; then
        order=
        for d in $disks; do order="$d $order"; done
    fi
    for d in $order; do
        begin "bench-$r-$d"
        echo "pci=$(pci "$d")"
        blkbench --rand-seconds "$rand" --seq-seconds "$seq" "/dev/$d" 2>&1
        echo "status=$?"
        end "bench-$r-$d"
    done
    r=$((r + 1))
done

# For whoever reads the console: how each disk's interrupts arrived (MSI-X or INTx).
begin interrupts
grep -i virtio /proc/interrupts
end interrupts

begin done
end done
poweroff -f
