#!/bin/sh
# L1's /init for the nested part of `cargo xtask e2e` (xtask/src/e2e/nested.rs). L1 runs under
# TCG with an emulated Intel IOMMU and an nvme behind a root port. It binds the nvme to vfio-pci,
# then runs L2 guests under KVM with the chroot's QEMU (shared read-only over 9p): first through
# QEMU's own vfio-pci (the baseline), then twice through `vfio-user-pci` to `vfio-variant serve`
# and its passthrough function. L2's /init (l2.sh) prints `key=value` lines; this script wraps each
# L2 run in `=== BEGIN name ===` / `=== END name ===` markers. The host decides what passed.
. /lib/e2e.sh
/bin/load-modules

param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^e2e\.$1=//p"; }

kernel=$(param kernel)
l2initrd=$(param l2initrd)
bench=$(param bench)

dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x0010 ]; then
        dev=$d
    fi
done
addr=$(basename "$dev")
begin bind
if [ -n "$dev" ]; then
    echo vfio-pci > "$dev/driver_override"
    echo "$addr" > /sys/bus/pci/drivers_probe
    echo "device=$addr"
    echo "driver=$(basename "$(readlink "$dev/driver")")"
    echo "group=$(basename "$(readlink "$dev/iommu_group")")"
fi
echo "kvm=$(ls /dev/kvm 2>/dev/null)"
end bind

# An igb PF with one VF, left unbound: the server is told about the PF and offers its free VF.
# L1 talks to the VF over VLAN 5 on the PF (the VLAN the VF is provisioned with). `iplink` is
# iproute2's `ip` (busybox's shows no VF settings): the VF's line of `ip link show` on the PF.
iplink() { /opt/iproute2/ld.so --library-path /opt/iproute2 /opt/iproute2/ip "$@"; }
vfline() { iplink link show dev "$pfnet" | sed -n 's/^ *\(vf 0 .*\)/\1/p'; }
vfdriver() { d=$(readlink "$vfdev/driver"); echo "${d:+$(basename "$d")}"; }
pf=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x8086 ] && [ "$(cat "$d/device")" = 0x10c9 ]; then
        pf=$d
    fi
done
begin vf
if [ -n "$pf" ]; then
    i=0
    while [ ! -d "$pf/net" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    dmesg | grep -i -e igb -e "$(basename "$pf")" | tail -5
    pfnet=$(ls "$pf/net" | head -1)
    ip link set "$pfnet" up
    echo 1 > "$pf/sriov_numvfs"
    vfdev=$(readlink -f "$pf/virtfn0")
    vf=$(basename "$vfdev")
    ip link add link "$pfnet" name "$pfnet.5" type vlan id 5
    ip addr add 10.5.0.1/24 dev "$pfnet.5"
    ip link set "$pfnet.5" up
    echo "pf=$(basename "$pf")"
    echo "pf_netdev=$pfnet"
    echo "vf=$vf"
    echo "vf_driver_before=$(vfdriver)"
    echo "vf_line_before=$(vfline)"
fi
end vf

# The chroot, read-only, with a writable /tmp for sockets, and the devices L2 needs.
mkdir -p /mnt
mount -t 9p -o trans=virtio,version=9p2000.L,ro root /mnt
mount -t tmpfs tmpfs /mnt/tmp
mount --bind /dev /mnt/dev
mount --bind /proc /mnt/proc
mount --bind /sys /mnt/sys

begin layout
vfio-variant vpci derive --sysfs "$dev" --name nvme -o /tmp/nvme.toml 2>&1
echo "status=$?"
end layout
# The nvme is served under the catalog's relaid type (/etc/qemu-nvme.toml): it differs from
# the device as `compat` lists, and L2 must see exactly it.
begin compat
vfio-variant vpci compat /tmp/nvme.toml /etc/qemu-nvme.toml 2>&1
echo "compat_status=$?"
end compat
begin layout-json
vfio-variant vpci check --json /etc/qemu-nvme.toml 2>&1
end layout-json

# CPU time of the server so far, in clock ticks (USER_HZ: 100 a second).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
server_ticks() { if [ -n "$server" ]; then ticks "$server"; else echo 0; fi; }

# The server's threads: name/TID, CPU ticks, voluntary context switches (each a wake-up: for a
# connection thread, a read of the socket that found nothing yet).
threads() {
    [ -n "$server" ] || return 0
    for t in /proc/"$server"/task/*; do
        printf '%s/%s %s %s\n' "$(tr ' ' _ < "$t/comm")" "${t##*/}" \
            "$(awk '{ print $14 + $15 }' "$t/stat")" \
            "$(sed -n 's/^voluntary_ctxt_switches:[[:space:]]*//p' "$t/status")"
    done | sort
}

# QEMU trace events of an L2 boot that runs blkbench (`l2trace`, bench only): what reaches the
# vfio-user server, which BAR accesses QEMU traps, and interrupts QEMU handles itself.
trace_args() {
    [ "$bench" = 1 ] && [ -n "$l2trace" ] || return 0
    echo "-trace vfio_user_* -trace vfio_region_read -trace vfio_region_write"
    echo "-trace vfio_msi_interrupt -trace vfio_intx_interrupt -trace vfio_region_mmap"
    echo "-trace vfio_region_sparse_mmap_entry -D /tmp/$1.trace"
}
# The size of a trace file so far (0 when there is none).
trace_size() { stat -c %s "/mnt/tmp/$1.trace" 2>/dev/null || echo 0; }

# One L2 boot: $1 names it, $2 is the disk slot (MiB) it writes, the rest are QEMU arguments.
# While it runs, the most mappings of a VFIO device fd its QEMU had (BAR pages it mmapped).
l2() {
    name=$1 slot=$2
    shift 2
    before=$(server_ticks)
    set -f
    # shellcheck disable=SC2046
    set -- "$@" $(trace_args "$name")
    set +f
    time -f "qemu_seconds=%e qemu_cpu_seconds=%U+%S" \
        chroot /mnt qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256 \
        -nographic -nodefaults -serial stdio -no-reboot \
        -kernel "$kernel" -initrd "$l2initrd" \
        -append "console=ttyS0 panic=-1 quiet e2e.slot=$slot e2e.bench=$bench" \
        -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 "$@" > "/tmp/$name.out" 2>&1 &
    runner=$!
    maps=0 s0= s1= q0= q1=
    while kill -0 $runner 2>/dev/null; do
        pid=$(pidof qemu-system-x86_64)
        n=0
        [ -n "$pid" ] && n=$(grep -c vfio-device "/proc/$pid/maps" 2>/dev/null)
        [ "${n:-0}" -gt "$maps" ] && maps=$n
        # CPU time of the server and of L2's QEMU while L2 runs blkbench (sampled each second).
        if [ -n "$pid" ] && [ -z "$s0" ] && grep -q '^bench_start' "/tmp/$name.out"; then
            s0=$(server_ticks) q0=$(ticks "$pid")
            threads > /tmp/threads0
            t0=$(trace_size "$name")
        fi
        if [ -n "$pid" ] && [ -n "$s0" ] && [ -z "$s1" ] && grep -q '^BLKBENCH ' "/tmp/$name.out"; then
            s1=$(server_ticks) q1=$(ticks "$pid")
            threads > /tmp/threads1
            t1=$(trace_size "$name")
        fi
        sleep 1
    done
    wait $runner
    status=$?
    cat "/tmp/$name.out"
    echo "qemu_status=$status"
    echo "bar_mmaps=$maps"
    echo "server_ticks=$(($(server_ticks) - before))"
    if [ -n "$s1" ]; then
        echo "bench_server_ticks=$((s1 - s0))"
        echo "bench_qemu_ticks=$((q1 - q0))"
        # Per server thread during blkbench: ticks and wake-ups.
        awk 'NR == FNR { t[$1] = $2; w[$1] = $3; next }
            { printf "bench_thread: %s ticks=%d wakeups=%d\n", $1, $2 - t[$1], $3 - w[$1] }' \
            /tmp/threads0 /tmp/threads1
        trace="/mnt/tmp/$name.trace"
        if [ -f "$trace" ]; then
            # Where QEMU mmapped the device's regions, the trace events during blkbench by kind,
            # and the BAR accesses QEMU trapped there, by place.
            grep -e '^vfio_region_mmap' -e '^vfio_region_sparse' "$trace" | sed 's/^/bench_mmap: /'
            # The whole boot, by kind, and its DMA maps (each pins guest RAM in the IOMMU).
            awk '{ print $1 }' "$trace" | sort | uniq -c | sort -rn | sed 's/^/boot_trace: /'
            grep -e '^vfio_user_dma_map' -e '^vfio_user_dma_unmap' "$trace" | head -40 |
                sed 's/^/boot_dma: /'
            echo "bench_trace_bytes=$((t1 - t0)) of $(trace_size "$name")"
            tail -c +$((t0 + 1)) "$trace" | head -c $((t1 - t0)) > /tmp/window.trace
            awk '{ print $1 }' /tmp/window.trace | sort | uniq -c | sort -rn |
                sed 's/^/bench_trace: /'
            grep '^vfio_region_' /tmp/window.trace | awk '{ print $1, $2 }' | sort | uniq -c |
                sort -rn | head -12 | sed 's/^/bench_trace_at: /'
            rm -f /tmp/window.trace
        fi
    fi
}

# Waits until the server has seen the last VMM go (it unwires the device, unmapping its RAM).
detached() {
    i=0
    while vfio-variant list 2>&1 | grep -q attached && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
}

memory="memory-backend-memfd,id=mem0,size=256M,share=on"

# Guest RAM as for vfio-user (a shared memfd), so both map the same kind of pages.
begin baseline
l2 baseline 1 -object "$memory" -numa node,memdev=mem0 -device vfio-pci,host="$addr",bus=rp1
end baseline

cat > /tmp/serve.toml <<CONFIG
[server]
passthrough_pfs = ["$(basename "$pf")"]

[[function]]
name = "nvme0"
backend = "passthrough"
profile = "$addr"
layout = "/etc/qemu-nvme.toml"
CONFIG
export VFIO_VARIANT_RUN_DIR=/mnt/tmp/vv VFIO_VARIANT_STATE_DIR=/tmp/state
export VFIO_VARIANT_LOG=info
mkdir -p /mnt/tmp/vv /tmp/state
vfio-variant serve --config /tmp/serve.toml > /tmp/serve.log 2>&1 &
server=$!
i=0
while [ ! -S /mnt/tmp/vv/nvme0.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done

begin types
vfio-variant types 2>&1
end types

# A setting the PF refuses (igb takes no minimum rate): refused, naming it, and the MAC set
# before it is put back; the VF is not bound.
begin vf-refused
vfio-variant create --backend passthrough --profile "$vf" --name igbvf-bad \
    --attr mac=52:54:00:ab:cd:02 --attr min_tx_rate=10 2>&1
echo "vf_refused_status=$?"
echo "vf_driver_refused=$(vfdriver)"
echo "vf_line_refused=$(vfline)"
end vf-refused

begin vf-create
vfio-variant create --backend passthrough --profile "$vf" --name igbvf0 \
    --attr mac=52:54:00:ab:cd:01 --attr vlan=5 --attr max_tx_rate=100 2>&1
echo "vf_create_status=$?"
echo "vf_driver_created=$(vfdriver)"
echo "vf_line_created=$(vfline)"
end vf-create
vfdev_json="{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"/tmp/vv/igbvf0.sock\",\"type\":\"unix\"},\"bus\":\"rp2\",\"x-msg-timeout\":60000}"

user=/tmp/vv/nvme0.sock
# Pinning L2's RAM for the IOMMU (the first DMA_MAP) takes longer than QEMU's default 5 s
# message timeout here, with L1 under TCG and its IOMMU emulated.
userdev="{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$user\",\"type\":\"unix\"},\"bus\":\"rp1\",\"x-msg-timeout\":60000}"

begin user1
l2 user1 2 -object "$memory" -numa node,memdev=mem0 -device "$userdev"
end user1

# The second boot, and a destroy while it is attached (refused). With blkbench, its QEMU
# traces what reaches the server (the figures come from the first boot).
detached
l2trace=1
begin user2
l2 user2 3 -object "$memory" -numa node,memdev=mem0 -device "$userdev" \
    -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2 -device "$vfdev_json" > /tmp/user2.section &
boot=$!
i=0
while ! vfio-variant list 2>&1 | grep -q attached && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
vfio-variant destroy nvme0 > /tmp/destroy.out 2>&1
echo "destroy_attached_status=$?"
sed 's/^/destroy: /' /tmp/destroy.out
# Another process cannot take the device while the server has it.
vfio-variant vpci check /tmp/nvme.toml --vfio "$dev" > /tmp/busy.out 2>&1
echo "busy_status=$?"
sed 's/^/busy: /' /tmp/busy.out
wait $boot
cat /tmp/user2.section
end user2

begin teardown
detached
vfio-variant destroy nvme0 2>&1
echo "destroy_status=$?"
vfio-variant destroy igbvf0 2>&1
echo "vf_destroy_status=$?"
echo "vf_driver_after=$(vfdriver)"
echo "vf_line_after=$(vfline)"
vfio-variant types 2>&1 | grep "$vf" | sed 's/^/after_vf_type: /'
echo "pf_vlan_rx_packets=$(cat "/sys/class/net/$pfnet.5/statistics/rx_packets")"
# A layout that does not fit (BAR 0 larger than the device's) is refused and leaves nothing behind.
awk '/^\[\[bar\]\]/ { bar++ } bar == 1 && /^size = / && !done { print "size = \"1G\""; done = 1; next } { print }' \
    /tmp/nvme.toml > /tmp/nvme-big.toml
vfio-variant create --backend passthrough --profile "$addr" --layout /tmp/nvme-big.toml \
    --name big > /tmp/big.out 2>&1
echo "unfit_status=$?"
sed 's/^/unfit: /' /tmp/big.out
echo "after_unfit_instances=$(vfio-variant list 2>&1 | grep -c passthrough)"
vfio-variant types 2>&1 | grep "$addr" | sed 's/^/after_unfit_type: /'
kill -TERM $server
wait $server
echo "server_status=$?"
end teardown
begin serverlog
cat /tmp/serve.log
end serverlog

# With blkbench, QEMU's own vfio-pci once more after the vfio-user boots: the host's load moves
# L1's speed between boots, so the bench compares the mean of the two vfio-user boots with the
# mean of the two baselines around them.
if [ "$bench" = 1 ]; then
    server=
    begin baseline2
    l2 baseline2 4 -object "$memory" -numa node,memdev=mem0 -device vfio-pci,host="$addr",bus=rp1
    end baseline2
fi

sync
poweroff -f
