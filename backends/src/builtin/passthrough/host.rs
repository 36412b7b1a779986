//! What sysfs says about PCI functions: their driver, their IOMMU group, the VFs of a PF, and
//! whether one can be handed to the passthrough backend; and binding a free VF to vfio-pci
//! ([`Binding`], undone when dropped).

use std::path::{Path, PathBuf};

use super::vf::VfLocation;

/// The driver a function must be bound to.
pub const VFIO_PCI: &str = "vfio-pci";

/// Drivers that may hold other members of the function's IOMMU group: vfio-pci itself, the
/// stub driver, and bridge ports (as the kernel's group viability rules allow).
const GROUP_DRIVERS_ALLOWED: &[&str] = &[VFIO_PCI, "pci-stub", "pcieport"];

/// Why a function cannot be passed through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// The name is not a PCI address (`DDDD:BB:DD.F`).
    #[error("`{0}` is not a PCI address (DDDD:BB:DD.F)")]
    NotAnAddress(String),
    /// There is no such function.
    #[error("no PCI function {0}")]
    NoDevice(String),
    /// The function is bound to another driver, or to none.
    #[error(
        "{address} is bound to {driver}, not vfio-pci: echo vfio-pci > \
         /sys/bus/pci/devices/{address}/driver_override, unbind it, then echo {address} > \
         /sys/bus/pci/drivers_probe"
    )]
    NotVfio {
        /// The function.
        address: String,
        /// Its driver (`no driver` when unbound).
        driver: String,
    },
    /// A member of the function's IOMMU group is bound to a driver that keeps the group from
    /// being used.
    #[error(
        "IOMMU group {group} of {address} also holds {member}, bound to {driver}: bind every \
         device of the group to vfio-pci (or unbind it) first"
    )]
    GroupShared {
        /// The function.
        address: String,
        /// Its IOMMU group.
        group: String,
        /// The other device.
        member: String,
        /// Its driver.
        driver: String,
    },
    /// A VF profile was asked for a function that is not an SR-IOV VF.
    #[error("{0} is not an SR-IOV VF: mac, vlan, spoofchk and trust are set on VFs only")]
    NotAVf(String),
    /// The VF's PF has no network interface to set VF settings on.
    #[error("the PF {pf} of {address} has no network interface (is its driver loaded?)")]
    NoNetdev {
        /// The VF.
        address: String,
        /// Its PF.
        pf: String,
    },
    /// The function has no IOMMU group (no IOMMU, or it is off).
    #[error("{0} has no IOMMU group: is the IOMMU on (intel_iommu=on)?")]
    NoGroup(String),
    /// Binding a free VF to vfio-pci failed.
    #[error("binding {address} to vfio-pci: {why}")]
    Bind {
        /// The function.
        address: String,
        /// What went wrong.
        why: String,
    },
}

/// Checks that `text` is a PCI address, so it is safe to put in a sysfs path.
pub fn check_address(text: &str) -> Result<(), HostError> {
    let bad = || HostError::NotAnAddress(text.to_string());
    let (domain, rest) = text.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (device, function) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let function_ok = function.len() == 1 && matches!(function.as_bytes()[0], b'0'..=b'7');
    if hex(domain, 4) && hex(bus, 2) && hex(device, 2) && function_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The PCI part of sysfs (`/sys/bus/pci`, or a copy of its shape in tests).
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

impl Host {
    /// The PCI bus at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The sysfs directory of a function.
    pub fn device_dir(&self, address: &str) -> PathBuf {
        self.root.join("devices").join(address)
    }

    /// The driver a function is bound to.
    pub fn driver(&self, address: &str) -> Option<String> {
        link_name(&self.device_dir(address).join("driver"))
    }

    /// Functions bound to vfio-pci, sorted.
    pub fn vfio_functions(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("drivers").join(VFIO_PCI)) else {
            return Vec::new();
        };
        let mut found: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| check_address(name).is_ok())
            .collect();
        found.sort();
        found
    }

    /// The VFs of PF `pf` (its `virtfnN` links), by VF number; none for a function that is
    /// not a PF or not a PCI address.
    pub fn vfs(&self, pf: &str) -> Vec<String> {
        if check_address(pf).is_err() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(self.device_dir(pf)) else {
            return Vec::new();
        };
        let mut vfs: Vec<(u32, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix("virtfn")?.parse::<u32>().ok()?;
                let vf = link_name(&e.path()).filter(|a| check_address(a).is_ok())?;
                Some((n, vf))
            })
            .collect();
        vfs.sort();
        vfs.into_iter().map(|(_, vf)| vf).collect()
    }

    /// Whether `address` is a VF of one of `pfs` bound to no driver: free for create to bind.
    pub fn is_free_vf(&self, address: &str, pfs: &[String]) -> bool {
        self.driver(address).is_none()
            && link_name(&self.device_dir(address).join("physfn"))
                .is_some_and(|pf| pfs.contains(&pf))
    }

    /// Binds the unbound function `address` to vfio-pci (`driver_override`, then
    /// `drivers_probe`, as an operator would); dropping the [`Binding`] unbinds it and clears
    /// the override. A function that does not end up on vfio-pci is left as it was.
    pub fn bind_vfio(&self, address: &str) -> Result<Binding, HostError> {
        check_address(address)?;
        let fail = |why: String| HostError::Bind {
            address: address.to_string(),
            why,
        };
        let override_file = self.device_dir(address).join("driver_override");
        std::fs::write(&override_file, VFIO_PCI)
            .map_err(|e| fail(format!("{}: {e}", override_file.display())))?;
        // From here on, dropping the binding undoes what was done.
        let binding = Binding {
            host: self.clone(),
            address: address.to_string(),
        };
        let probe = self.root.join("drivers_probe");
        std::fs::write(&probe, address).map_err(|e| fail(format!("{}: {e}", probe.display())))?;
        match self.driver(address) {
            Some(d) if d == VFIO_PCI => Ok(binding),
            other => Err(fail(format!(
                "after drivers_probe it is bound to {} (is the vfio-pci module loaded?)",
                other.map_or_else(|| "no driver".into(), |d| format!("`{d}`"))
            ))),
        }
    }

    /// The IOMMU group of a function.
    pub fn group(&self, address: &str) -> Option<String> {
        link_name(&self.device_dir(address).join("iommu_group"))
    }

    /// Where VF `address` is managed: its PF's netdev (the first under `net/`) and its number
    /// there (the PF's `virtfnN` link that points at it).
    pub fn vf_location(&self, address: &str) -> Result<VfLocation, HostError> {
        let dir = self.device_dir(address);
        let pf = link_name(&dir.join("physfn")).ok_or_else(|| HostError::NotAVf(address.into()))?;
        let pf_dir = self.device_dir(&pf);
        let no_netdev = || HostError::NoNetdev {
            address: address.to_string(),
            pf: pf.clone(),
        };
        let mut netdevs: Vec<String> = std::fs::read_dir(pf_dir.join("net"))
            .map_err(|_| no_netdev())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        netdevs.sort();
        let netdev = netdevs.into_iter().next().ok_or_else(no_netdev)?;
        let ifindex = std::fs::read_to_string(pf_dir.join("net").join(&netdev).join("ifindex"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(no_netdev)?;
        let vf = std::fs::read_dir(&pf_dir)
            .map_err(|_| HostError::NotAVf(address.into()))?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix("virtfn")?.parse::<u32>().ok()?;
                (link_name(&e.path()).as_deref() == Some(address)).then_some(n)
            })
            .ok_or_else(|| HostError::NotAVf(address.into()))?;
        Ok(VfLocation {
            netdev,
            ifindex,
            vf,
        })
    }

    /// Checks that `address` is bound to vfio-pci and that no other member of its IOMMU
    /// group is bound to a driver that keeps the group from being used.
    pub fn check(&self, address: &str) -> Result<(), HostError> {
        check_address(address)?;
        if !self.device_dir(address).exists() {
            return Err(HostError::NoDevice(address.to_string()));
        }
        match self.driver(address) {
            Some(d) if d == VFIO_PCI => {}
            other => {
                return Err(HostError::NotVfio {
                    address: address.to_string(),
                    driver: other.map_or_else(|| "no driver".into(), |d| format!("`{d}`")),
                });
            }
        }
        let group = self
            .group(address)
            .ok_or_else(|| HostError::NoGroup(address.to_string()))?;
        let members = self.device_dir(address).join("iommu_group").join("devices");
        let mut members: Vec<String> = std::fs::read_dir(&members)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        for member in members.iter().filter(|m| *m != address) {
            if let Some(driver) = self.driver(member)
                && !GROUP_DRIVERS_ALLOWED.contains(&driver.as_str())
            {
                return Err(HostError::GroupShared {
                    address: address.to_string(),
                    group,
                    member: member.clone(),
                    driver,
                });
            }
        }
        Ok(())
    }
}

/// A function create bound to vfio-pci; dropping it unbinds the function and clears its
/// `driver_override`, leaving it unbound as it was found.
#[derive(Debug)]
pub struct Binding {
    host: Host,
    address: String,
}

impl Drop for Binding {
    fn drop(&mut self) {
        if self.host.driver(&self.address).as_deref() == Some(VFIO_PCI) {
            let unbind = self.host.root.join("drivers").join(VFIO_PCI).join("unbind");
            if let Err(e) = std::fs::write(&unbind, &self.address) {
                tracing::warn!("{}: unbinding from vfio-pci: {e}", self.address);
            }
        }
        let override_file = self.host.device_dir(&self.address).join("driver_override");
        if let Err(e) = std::fs::write(&override_file, "\n") {
            tracing::warn!("{}: clearing driver_override: {e}", self.address);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A sysfs-shaped tree: functions with drivers and groups, under a fresh directory.
    pub(crate) struct FakeSysfs {
        pub root: PathBuf,
    }

    impl FakeSysfs {
        pub fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "vv-sysfs-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(root.join("devices")).unwrap();
            std::fs::create_dir_all(root.join("groups")).unwrap();
            Self { root }
        }

        /// Adds a function bound to `driver` (if any) in IOMMU group `group`.
        pub fn add(&self, address: &str, driver: Option<&str>, group: &str) {
            let dir = self.root.join("devices").join(address);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(driver) = driver {
                let driver_dir = self.root.join("drivers").join(driver);
                std::fs::create_dir_all(&driver_dir).unwrap();
                symlink(&driver_dir, dir.join("driver")).unwrap();
                symlink(&dir, driver_dir.join(address)).unwrap();
            }
            let group_dir = self.root.join("groups").join(group);
            std::fs::create_dir_all(group_dir.join("devices")).unwrap();
            symlink(&group_dir, dir.join("iommu_group")).unwrap();
            symlink(&dir, group_dir.join("devices").join(address)).unwrap();
        }
    }

    impl FakeSysfs {
        /// Makes `vf` VF number `n` of `pf`, whose netdev is `netdev` with index `ifindex`.
        pub fn add_vf(&self, pf: &str, vf: &str, n: u32, netdev: &str, ifindex: u32) {
            let pf_dir = self.root.join("devices").join(pf);
            let vf_dir = self.root.join("devices").join(vf);
            symlink(&pf_dir, vf_dir.join("physfn")).unwrap();
            symlink(&vf_dir, pf_dir.join(format!("virtfn{n}"))).unwrap();
            let net = pf_dir.join("net").join(netdev);
            std::fs::create_dir_all(&net).unwrap();
            std::fs::write(net.join("ifindex"), format!("{ifindex}\n")).unwrap();
        }
    }

    #[test]
    fn a_vf_is_found_on_its_pf_netdev() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:00.0", Some("igb"), "1");
        sysfs.add("0000:01:10.0", Some("vfio-pci"), "2");
        sysfs.add("0000:01:10.2", Some("vfio-pci"), "3");
        sysfs.add_vf("0000:01:00.0", "0000:01:10.0", 0, "enp1s0", 4);
        sysfs.add_vf("0000:01:00.0", "0000:01:10.2", 1, "enp1s0", 4);
        let host = Host::new(&sysfs.root);
        assert_eq!(
            host.vf_location("0000:01:10.2"),
            Ok(VfLocation {
                netdev: "enp1s0".into(),
                ifindex: 4,
                vf: 1
            })
        );
        assert_eq!(
            host.vf_location("0000:01:00.0"),
            Err(HostError::NotAVf("0000:01:00.0".into()))
        );
    }

    #[test]
    fn free_vfs_of_a_named_pf_are_found_and_a_failed_bind_is_undone() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:00.0", Some("igb"), "1");
        sysfs.add("0000:01:10.0", None, "2");
        sysfs.add("0000:01:10.2", Some("igbvf"), "3");
        sysfs.add_vf("0000:01:00.0", "0000:01:10.0", 0, "enp1s0", 4);
        sysfs.add_vf("0000:01:00.0", "0000:01:10.2", 1, "enp1s0", 4);
        let host = Host::new(&sysfs.root);
        assert_eq!(
            host.vfs("0000:01:00.0"),
            vec!["0000:01:10.0", "0000:01:10.2"]
        );
        assert!(host.vfs("0000:01:10.0").is_empty());
        assert!(host.vfs("../x").is_empty());
        let pfs = vec!["0000:01:00.0".to_string()];
        assert!(host.is_free_vf("0000:01:10.0", &pfs));
        assert!(!host.is_free_vf("0000:01:10.2", &pfs), "bound to igbvf");
        assert!(
            !host.is_free_vf("0000:01:10.0", &[]),
            "its PF was not named"
        );
        // No kernel behind this tree: drivers_probe binds nothing, and the override written
        // for it is cleared again.
        std::fs::write(sysfs.root.join("drivers_probe"), "").unwrap();
        let e = host.bind_vfio("0000:01:10.0").unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let override_file = host.device_dir("0000:01:10.0").join("driver_override");
        assert_eq!(std::fs::read_to_string(&override_file).unwrap(), "\n");
        assert_eq!(
            std::fs::read_to_string(sysfs.root.join("drivers_probe")).unwrap(),
            "0000:01:10.0"
        );
    }

    #[test]
    fn a_binding_unbinds_when_dropped() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:10.0", Some("vfio-pci"), "2");
        let host = Host::new(&sysfs.root);
        let unbind = sysfs.root.join("drivers").join(VFIO_PCI).join("unbind");
        std::fs::write(&unbind, "").unwrap();
        drop(Binding {
            host: host.clone(),
            address: "0000:01:10.0".into(),
        });
        assert_eq!(std::fs::read_to_string(&unbind).unwrap(), "0000:01:10.0");
        assert_eq!(
            std::fs::read_to_string(host.device_dir("0000:01:10.0").join("driver_override"))
                .unwrap(),
            "\n"
        );
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn addresses_are_checked_before_they_reach_a_path() {
        assert!(check_address("0000:01:00.0").is_ok());
        for bad in [
            "01:00.0",
            "0000:01:00.8",
            "../../x",
            "0000:01:00.0/..",
            "0000:1:00.0",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_vfio_bound_functions_in_clean_groups_pass() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:00.0", Some("vfio-pci"), "7");
        sysfs.add("0000:02:00.0", Some("nvme"), "8");
        sysfs.add("0000:03:00.0", Some("vfio-pci"), "9");
        sysfs.add("0000:03:00.1", Some("igb"), "9");
        sysfs.add("0000:04:00.0", Some("vfio-pci"), "10");
        sysfs.add("0000:04:00.1", None, "10");
        sysfs.add("0000:05:00.0", None, "11");
        let host = Host::new(&sysfs.root);
        assert_eq!(
            host.vfio_functions(),
            vec!["0000:01:00.0", "0000:03:00.0", "0000:04:00.0"]
        );
        assert_eq!(host.check("0000:01:00.0"), Ok(()));
        assert_eq!(
            host.check("0000:04:00.0"),
            Ok(()),
            "an unbound member is fine"
        );
        let e = host.check("0000:02:00.0").unwrap_err();
        assert!(
            e.to_string().contains("bound to `nvme`, not vfio-pci"),
            "{e}"
        );
        let e = host.check("0000:05:00.0").unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let e = host.check("0000:03:00.0").unwrap_err();
        assert_eq!(
            e,
            HostError::GroupShared {
                address: "0000:03:00.0".into(),
                group: "9".into(),
                member: "0000:03:00.1".into(),
                driver: "igb".into()
            }
        );
        assert_eq!(
            host.check("0000:09:00.0"),
            Err(HostError::NoDevice("0000:09:00.0".into()))
        );
    }
}
