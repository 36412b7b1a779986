#!/bin/sh
# The guest's /init for the kernel-VFIO part of `cargo xtask e2e` (xtask/src/e2e/vfio.rs): binds
# QEMU's `edu` device to vfio-pci behind the emulated Intel IOMMU and lets the project's own
# binary read it through kernel VFIO, next to what sysfs shows. Output between
# `=== BEGIN name ===` / `=== END name ===` markers; the host decides what passed.
. /lib/e2e.sh
/bin/load-modules

dev=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then
        dev=$d
    fi
done
begin bind
if [ -n "$dev" ]; then
    echo vfio-pci > "$dev/driver_override"
    basename "$dev" > /sys/bus/pci/drivers_probe
    echo "device=$(basename "$dev")"
    echo "driver=$(basename "$(readlink "$dev/driver")")"
    echo "group=$(basename "$(readlink "$dev/iommu_group")")"
    ls /dev/vfio
fi
end bind

begin sysfs
vfio-variant vpci derive --sysfs "$dev" --name edu 2>&1
echo "status=$?"
end sysfs

begin vfio
vfio-variant vpci derive --vfio "$dev" --name edu -o /tmp/edu.toml 2>&1
echo "status=$?"
cat /tmp/edu.toml
end vfio

begin check
vfio-variant vpci check /tmp/edu.toml --vfio "$dev" 2>&1
echo "status=$?"
end check

poweroff -f
