#!/bin/sh
# The guest's /init for `cargo xtask e2e` (xtask/src/e2e/server.rs): drives the sample function
# of the vfio-user server through an unmodified kernel and busybox, and prints what it saw
# between `=== BEGIN name ===` / `=== END name ===` markers. It never stops on a failed step:
# the host decides what passed. Its parameters come from the kernel command line (e2e.*=).
. /lib/e2e.sh

for arg in $(cat /proc/cmdline); do
    case $arg in
        e2e.boot=*) boot=${arg#*=} ;;
        e2e.scratch=*) scratch=${arg#*=} ;;
        e2e.nvram=*) nvram=${arg#*=} ;;
        e2e.src=*) src=${arg#*=} ;;
        e2e.dst=*) dst=${arg#*=} ;;
        e2e.seed=*) seed=${arg#*=} ;;
        e2e.words=*) words=${arg#*=} ;;
    esac
done

# The sample function's BAR 0 registers (backends/src/builtin/sample/registers.rs).
ID=0x00 SCRATCH=0x04 INT_STATUS=0x08 RAISE=0x0c
DMA_SRC_LO=0x10 DMA_SRC_HI=0x14 DMA_DST_LO=0x18 DMA_DST_HI=0x1c
DMA_LEN=0x20 DMA_CMD=0x24 DMA_COUNT=0x28 DMA_STATUS=0x2c SHM_SUM=0x30 NVRAM=0x34

hex() { printf '0x%x' $(($1)); }
# `reg OFFSET` reads the 32-bit register of BAR 0 at OFFSET; `reg OFFSET VALUE` writes it.
reg() {
    if [ $# -eq 2 ]; then
        devmem $(hex $((bar0 + $1))) 32 $2
    else
        devmem $(hex $((bar0 + $1))) 32
    fi
}
# Prints `key=value` for a register read.
show() { echo "$1=$(reg $2)"; }
# Waits up to 10 s for a file to appear.
wait_for() {
    n=0
    while [ ! -e "$1" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
}

begin info
echo "kernel=$(uname -r)"
echo "boot=$boot"
end info

dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor):$(cat $d/device)" = 0x1234:0x11f8 ]; then dev=$d; fi
done
begin function
if [ -n "$dev" ]; then
    echo "bdf=$(basename $dev)"
    echo "path=$(readlink -f $dev)"
    echo "class=$(cat $dev/class)"
    echo "irq=$(cat $dev/irq)"
else
    echo "bdf=none"
fi
end function
if [ -z "$dev" ]; then
    echo "e2e: no PCI function 1234:11f8"
    poweroff -f
fi

# The config space as the firmware and the kernel left it, before anything here touched it.
begin config
hexdump -v -e '32/1 "%02x" "\n"' $dev/config
end config
begin resource
cat $dev/resource
end resource

# Memory decode and bus mastering on: COMMAND (offset 4) = 0x0006.
printf '\006\000' | dd of=$dev/config bs=2 seek=2 count=1 conv=notrunc 2>/dev/null
bar0=$(cut -d' ' -f1 $dev/resource | head -n 1)
begin mmio
echo "command=0x$(hexdump -s 4 -n 2 -e '1/2 "%04x"' $dev/config)"
show id $ID
show scratch_at_boot $SCRATCH
show nvram_at_boot $NVRAM
reg $SCRATCH $scratch
reg $NVRAM $nvram
show scratch $SCRATCH
show nvram $NVRAM
end mmio

# Shared memory: BAR 2, backed by the server's memfd (which QEMU maps into the guest when the
# server offers it); SHM_SUM shows the device sees what the guest wrote there.
bar2=$(sed -n 3p $dev/resource | cut -d' ' -f1)
begin shm
show sum_at_boot $SHM_SUM
i=0
while [ $i -lt $words ]; do
    devmem $(hex $((bar2 + 4 * i))) 32 $(hex $(((seed + i) & 0xffffffff)))
    i=$((i + 1))
done
i=0
while [ $i -lt $words ]; do
    echo "word$i=$(devmem $(hex $((bar2 + 4 * i))) 32)"
    i=$((i + 1))
done
show sum $SHM_SUM
end shm

# DMA: a pattern at the source, the destination cleared (both in RAM the kernel leaves alone),
# then the engine copies.
i=0
while [ $i -lt $words ]; do
    devmem $(hex $((src + 4 * i))) 32 $(hex $(((seed + i * 0x01010101) & 0xffffffff)))
    devmem $(hex $((dst + 4 * i))) 32 0
    i=$((i + 1))
done
begin dma
show count_before $DMA_COUNT
reg $DMA_SRC_LO $(hex $((src & 0xffffffff)))
reg $DMA_SRC_HI $(hex $((src >> 32)))
reg $DMA_DST_LO $(hex $((dst & 0xffffffff)))
reg $DMA_DST_HI $(hex $((dst >> 32)))
reg $DMA_LEN $((4 * words))
reg $DMA_CMD 3    # start, interrupt when done
# The engine runs after the write is answered: wait (at most about 10 s) while it is busy (6).
i=0
while [ $(($(reg $DMA_STATUS))) -eq 6 ] && [ $i -lt 1000 ]; do
    usleep 10000 2>/dev/null || sleep 1
    i=$((i + 1))
done
show status $DMA_STATUS
show count $DMA_COUNT
show int_status $INT_STATUS
reg $INT_STATUS 1
show int_status_acked $INT_STATUS
i=0
while [ $i -lt $words ]; do
    echo "src$i=$(devmem $(hex $((src + 4 * i))) 32)"
    echo "dst$i=$(devmem $(hex $((dst + 4 * i))) 32)"
    i=$((i + 1))
done
end dma

# INTx through uio_pci_generic: unmask, raise, wait for the event, acknowledge.
begin irq
if load-modules && echo "1234 11f8" > /sys/bus/pci/drivers/uio_pci_generic/new_id; then
    uio=$(ls $dev/uio 2>/dev/null | head -n 1)
    echo "uio=$uio"
    wait_for /dev/$uio
    if [ -n "$uio" ] && [ -c /dev/$uio ]; then
        exec 3<>/dev/$uio
        echo "event_before=$(cat /sys/class/uio/$uio/event)"
        printf '\001\000\000\000' >&3
        reg $RAISE 0
        echo "read=$(timeout 10 dd bs=4 count=1 <&3 2>/dev/null | hexdump -v -e '1/4 "%u"')"
        echo "event_after=$(cat /sys/class/uio/$uio/event)"
        show int_status $INT_STATUS
        reg $INT_STATUS 2
        show int_status_acked $INT_STATUS
        echo "interrupts=$(grep -m 1 "^ *$(cat $dev/irq):" /proc/interrupts | tr -s ' ')"
        exec 3<&-
    fi
else
    echo "e2e: cannot load or bind uio_pci_generic"
fi
end irq

begin done
end done
poweroff -f
