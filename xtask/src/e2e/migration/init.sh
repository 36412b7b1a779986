#!/bin/sh
# The guest's /init for the QEMU live-migration part of `cargo xtask e2e`
# (xtask/src/e2e/qemu_migration.rs). Binds the transitional virtio-blk function (1af4:1001)
# with the kernel's virtio_pci (legacy path: `virtio_pci.force_legacy=1`) and virtio_blk, then
# writes generation after generation of e2e.blocks 4 KiB blocks to /dev/vda (O_DIRECT, so every
# write reaches the device), each block naming its generation and number, until it reads
# `MIGRATED` in block e2e.marker: the host writes that into the disk once the migration has
# completed, so the guest runs on the destination from then on. It then writes two more
# generations, and reads every block back. It prints the device's config space and its
# interrupt counts at the start, when it saw the marker and at the end, between
# `=== BEGIN name ===` / `=== END name ===` markers; the host decides what passed.
. /lib/e2e.sh

for arg in $(cat /proc/cmdline); do
    case $arg in
        e2e.blocks=*) blocks=${arg#*=} ;;
        e2e.marker=*) marker=${arg#*=} ;;
        e2e.max=*) max=${arg#*=} ;;
    esac
done

load-modules
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done

dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1001 ]; then dev=$d; fi
done

# The device's state: its driver, its config space (256 bytes) and its interrupt lines.
state() {
    begin "$1"
    if [ -z "$dev" ]; then
        echo "error=no PCI function 1af4:1001"
    else
        [ -e $dev/driver ] && echo "driver=$(basename $(readlink -f $dev/driver))"
        dd if=$dev/config bs=256 count=1 2>/dev/null | hexdump -v -e '32/1 "%02x" "\n"' |
            sed 's/^/config=/'
    fi
    grep virtio /proc/interrupts | sed 's/^/irq=/'
    end "$1"
}

# Writes generation $1 to every block.
write_generation() {
    b=0
    while [ $b -lt $blocks ]; do
        printf 'vfio-variant migration generation %d block %d\n' $1 $b |
            dd of=/dev/vda bs=4096 seek=$b count=1 conv=sync oflag=direct 2>/dev/null ||
            echo "error=writing generation $1 block $b failed"
        b=$((b + 1))
    done
}

migrated() {
    [ "$(dd if=/dev/vda bs=4096 skip=$marker count=1 iflag=direct 2>/dev/null | head -c 8)" = MIGRATED ]
}

if [ ! -b /dev/vda ]; then
    echo "error=no block device /dev/vda"
    poweroff -f
fi

state before
gen=0
while [ $gen -lt $max ] && ! migrated; do
    gen=$((gen + 1))
    write_generation $gen
    echo "written=$gen"
done
seen=$gen
state migrated
write_generation $((gen + 1))
write_generation $((gen + 2))
gen=$((gen + 2))
state end

begin verify
echo "seen=$seen"
echo "last=$gen"
bad=0
b=0
while [ $b -lt $blocks ]; do
    want="vfio-variant migration generation $gen block $b"
    got=$(dd if=/dev/vda bs=4096 skip=$b count=1 iflag=direct 2>/dev/null | head -n 1)
    if [ "$got" != "$want" ]; then
        bad=$((bad + 1))
        echo "mismatch=$b:$got"
    fi
    b=$((b + 1))
done
echo "bad=$bad"
end verify
poweroff -f
