//! The passthrough backend: any PCI function bound to vfio-pci, exposed under a vPCI layout
//! (the one given at create, or one derived from the function), with the data path of
//! kernel VFIO: DMA through the device's IOMMU, interrupts on the client's eventfds, BARs
//! mmapped by the VMM. The server only sees config space and the trapped BAR pages.
//!
//! Its profiles are the functions bound to vfio-pci, by PCI address, and the free (unbound) VFs
//! of the PFs the backend is told about ([`PassthroughBackend::with_pfs`]): `types` lists them,
//! and `create --backend passthrough --profile 0000:01:00.0` exposes one. A function bound to
//! vfio-pci keeps the operator's binding; a free VF is bound to vfio-pci by create and unbound
//! again by destroy ([`host::Binding`]); create refuses any other function. An SR-IOV VF may
//! be given a profile (attributes `mac`, `vlan`, `spoofchk`, `trust`, `max_tx_rate`,
//! `min_tx_rate`), set on its PF's netdev over rtnetlink before it is bound and exposed
//! ([`vf`]); destroy closes the device, which the kernel resets, and puts back the binding and
//! those settings.

mod function;
pub mod host;
pub mod vf;

pub use function::PassthroughFunction;

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::{Backend, BackendError, CreateRequest, Function, ProfileInfo};
use vfio_variant::layout::{BarBacking, CapabilityBody, Layout};
use vfio_variant::physical::DirectPath;
use vfio_variant::physical::sysfs::describe_sysfs_dir;
use vfio_variant::physical::vfio::VfioPhysicalFunction;
use vfio_variant::vfio_user::irq::IRQ_INDEX_MSIX;
use vfio_variant::vpci::LayoutError;
use vfio_variant::vpci::derive::{DeriveOptions, derive};

use host::Host;
use vf::{VfLocation, VfProfile};

/// The backend's name.
pub const NAME: &str = "passthrough";

/// The passthrough backend.
pub struct PassthroughBackend {
    host: Host,
    /// PFs whose free VFs are offered.
    pfs: Vec<String>,
    in_use: Arc<Mutex<Vec<String>>>,
}

impl PassthroughBackend {
    /// A backend over the PCI functions of `/sys/bus/pci`.
    pub fn new() -> Self {
        Self::with_sysfs("/sys/bus/pci")
    }

    /// A backend over the PCI bus at `root` (sysfs, or a tree of its shape).
    pub fn with_sysfs(root: impl Into<PathBuf>) -> Self {
        Self {
            host: Host::new(root),
            pfs: Vec::new(),
            in_use: Arc::default(),
        }
    }

    /// Also offers the free VFs of these PFs (by PCI address): VFs bound to no driver, which
    /// create binds to vfio-pci and destroy unbinds. A name that is not a PCI address offers
    /// nothing (the command line refuses it with [`host::check_address`]).
    pub fn with_pfs(mut self, pfs: &[String]) -> Self {
        self.pfs = pfs.to_vec();
        self
    }

    /// The functions offered: bound to vfio-pci, or free VFs of the named PFs; sorted.
    fn offered(&self) -> Vec<String> {
        let mut offered = self.host.vfio_functions();
        for pf in &self.pfs {
            offered.extend(
                self.host
                    .vfs(pf)
                    .into_iter()
                    .filter(|vf| self.host.is_free_vf(vf, &self.pfs)),
            );
        }
        offered.sort();
        offered.dedup();
        offered
    }
}

impl Default for PassthroughBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks what the device cannot show through the layout: BARs the backend would have to
/// emulate, and more MSI-X vectors than the device has. (Passthrough BARs, ROM and config
/// bytes are checked against the device when the function is put behind its layout.)
pub fn check_fit(layout: &Layout, msix_vectors: u32) -> Result<(), LayoutError> {
    for bar in layout.bars.iter().flatten() {
        if !matches!(bar.backing, BarBacking::Passthrough { .. }) {
            return Err(bar.origin.error(
                "backing",
                "the passthrough backend emulates nothing: every BAR must be `passthrough`",
            ));
        }
    }
    for c in &layout.capabilities {
        if let CapabilityBody::Msix(m) = &c.body
            && u32::from(m.table_size) > msix_vectors
        {
            return Err(c.origin.error(
                "table_size",
                format!(
                    "{} MSI-X vectors, and the device has {msix_vectors}",
                    m.table_size
                ),
            ));
        }
    }
    Ok(())
}

impl Backend for PassthroughBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "a PCI function bound to vfio-pci (profile: its address), through kernel VFIO"
    }

    fn profiles(&self) -> Vec<ProfileInfo> {
        let in_use = self.in_use.lock();
        self.offered()
            .into_iter()
            .map(|address| {
                let group = self.host.group(&address).unwrap_or_else(|| "none".into());
                let free = if self.host.is_free_vf(&address, &self.pfs) {
                    ", a free VF (create binds it to vfio-pci)"
                } else {
                    ""
                };
                ProfileInfo {
                    description: format!("PCI function {address}, IOMMU group {group}{free}"),
                    available_instances: u32::from(!in_use.contains(&address)),
                    migratable: false,
                    name: address,
                }
            })
            .collect()
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        // A free VF is derived from as it is: sysfs shows its config space unbound too.
        if !self.host.is_free_vf(profile, &self.pfs) {
            self.host
                .check(profile)
                .map_err(|e| BackendError::Refused(e.to_string()))?;
        }
        let description = describe_sysfs_dir(&self.host.device_dir(profile))?;
        let options = DeriveOptions {
            name: format!("passthrough-{profile}"),
            source: format!("PCI function {profile}"),
            keep: Vec::new(),
        };
        Ok(derive(&description, &options)?.to_toml())
    }

    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        let address = request.profile.clone();
        let refused = |e: host::HostError| BackendError::Refused(e.to_string());
        let profile =
            VfProfile::from_attributes(&request.attributes).map_err(BackendError::Refused)?;
        host::check_address(&address).map_err(refused)?;
        let free_vf = self.host.is_free_vf(&address, &self.pfs);
        if !free_vf {
            self.host.check(&address).map_err(refused)?;
        }
        let location = if profile.is_empty() {
            None
        } else {
            Some(self.host.vf_location(&address).map_err(refused)?)
        };
        // Each step below is undone by dropping what it returned, in the reverse order: on
        // an error here, and when the function is destroyed.
        let lease = Lease::take(&self.in_use, &address)?;
        // The VF is provisioned through its PF before it is bound and exposed.
        let provisioned = location
            .map(|location| Provisioned::apply(location, profile))
            .transpose()
            .map_err(|e| BackendError::Refused(e.to_string()))?;
        let binding = if free_vf {
            let binding = self.host.bind_vfio(&address).map_err(refused)?;
            self.host.check(&address).map_err(refused)?;
            Some(binding)
        } else {
            None
        };
        let device = VfioPhysicalFunction::open(&self.host.device_dir(&address))?;
        check_fit(&request.layout, device.irq_count(IRQ_INDEX_MSIX))?;
        tracing::info!(
            address,
            bound = binding.is_some(),
            "passthrough function opened"
        );
        Ok(Box::new(PassthroughFunction::new(
            device,
            address,
            binding,
            provisioned,
            lease,
        )))
    }
}

/// A function's address taken from the backend's free ones; dropping it gives it back.
pub struct Lease {
    address: String,
    in_use: Arc<Mutex<Vec<String>>>,
}

impl Lease {
    /// Takes `address`, unless it is in use.
    fn take(in_use: &Arc<Mutex<Vec<String>>>, address: &str) -> Result<Self, BackendError> {
        let mut taken = in_use.lock();
        if taken.iter().any(|a| a == address) {
            return Err(BackendError::NoInstances(address.to_string()));
        }
        taken.push(address.to_string());
        Ok(Self {
            address: address.to_string(),
            in_use: Arc::clone(in_use),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.in_use.lock().retain(|a| *a != self.address);
    }
}

/// What create set on a VF through its PF, and what was there before; dropping it puts the
/// settings back.
pub struct Provisioned {
    location: VfLocation,
    profile: VfProfile,
    previous: VfProfile,
}

impl Provisioned {
    /// Reads the VF's settings, then applies `profile`; on a refusal what was set is put back.
    fn apply(location: VfLocation, profile: VfProfile) -> Result<Self, vf::VfError> {
        let previous = vf::current(&location).map_err(|source| vf::VfError {
            netdev: location.netdev.clone(),
            vf: location.vf,
            what: "reading the settings".into(),
            source,
        })?;
        vf::apply(&location, &profile, &previous)?;
        Ok(Self {
            location,
            profile,
            previous,
        })
    }
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        vf::restore(&self.location, &self.profile, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::host::tests::FakeSysfs;
    use super::*;
    use vfio_variant::vpci::parse_layout;

    const LAYOUT: &str = r#"
[vpci]
format = 1
name = "t"
[identity]
vendor_id = 0x1b36
device_id = 0x0010
class_code = 0x010802
[[bar]]
index = 0
kind = "mem64"
size = "16K"
backing = "passthrough"
physical_bar = 0
[[capability]]
kind = "msix"
offset = 0x40
table_size = 65
table_bar = 0
table_offset = 0x2000
pba_bar = 0
pba_offset = 0x3000
"#;

    #[test]
    fn msix_vectors_and_emulated_bars_must_fit() {
        let layout = parse_layout("t", LAYOUT).unwrap();
        assert!(check_fit(&layout, 65).is_ok());
        let e = check_fit(&layout, 64).unwrap_err();
        assert!(e.field.ends_with("table_size"), "{e}");
        let emulated = LAYOUT.replace(
            "backing = \"passthrough\"\nphysical_bar = 0",
            "backing = \"emulated\"",
        );
        let layout = parse_layout("t", &emulated).unwrap();
        let e = check_fit(&layout, 65).unwrap_err();
        assert!(e.field.ends_with("backing"), "{e}");
    }

    fn request(profile: &str) -> CreateRequest {
        CreateRequest {
            profile: profile.into(),
            instance: "p0".into(),
            layout: Arc::new(parse_layout("t", LAYOUT).unwrap()),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn profiles_are_the_vfio_bound_functions_and_refusals_change_nothing() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:00.0", Some("vfio-pci"), "3");
        sysfs.add("0000:02:00.0", Some("nvme"), "4");
        let backend = PassthroughBackend::with_sysfs(&sysfs.root);
        let profiles = backend.profiles();
        assert_eq!(profiles.len(), 1);
        assert_eq!(profiles[0].name, "0000:01:00.0");
        assert_eq!(profiles[0].available_instances, 1);
        assert!(profiles[0].description.contains("IOMMU group 3"));
        let e = backend.create(&request("0000:02:00.0")).err().unwrap();
        assert!(e.to_string().contains("not vfio-pci"), "{e}");
        let e = backend.create(&request("../../../etc")).err().unwrap();
        assert!(e.to_string().contains("not a PCI address"), "{e}");
        let mut with_attr = request("0000:01:00.0");
        with_attr.attributes.push(("mac".into(), "x".into()));
        let e = backend.create(&with_attr).err().unwrap();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
        // A VF setting for a function that is not a VF.
        with_attr.attributes = vec![("mac".into(), "52:54:00:00:00:01".into())];
        let e = backend.create(&with_attr).err().unwrap();
        assert!(e.to_string().contains("not an SR-IOV VF"), "{e}");
        // No /dev/vfio here (or no such group): opening fails, and the address is free again.
        assert!(backend.create(&request("0000:01:00.0")).is_err());
        assert_eq!(backend.profiles()[0].available_instances, 1);
    }

    #[test]
    fn free_vfs_of_named_pfs_are_offered_and_a_failed_bind_leaves_nothing() {
        let sysfs = FakeSysfs::new();
        sysfs.add("0000:01:00.0", Some("igb"), "1");
        sysfs.add("0000:01:10.0", None, "2");
        sysfs.add("0000:01:10.2", Some("igbvf"), "3");
        sysfs.add("0000:02:00.0", Some("vfio-pci"), "4");
        sysfs.add_vf("0000:01:00.0", "0000:01:10.0", 0, "enp1s0", 4);
        sysfs.add_vf("0000:01:00.0", "0000:01:10.2", 1, "enp1s0", 4);
        std::fs::write(sysfs.root.join("drivers_probe"), "").unwrap();
        let names = |b: &PassthroughBackend| -> Vec<String> {
            b.profiles().into_iter().map(|p| p.name).collect()
        };
        // Told about no PF: only what is bound to vfio-pci.
        let plain = PassthroughBackend::with_sysfs(&sysfs.root);
        assert_eq!(names(&plain), vec!["0000:02:00.0"]);
        let e = plain.create(&request("0000:01:10.0")).err().unwrap();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let bad = PassthroughBackend::with_sysfs(&sysfs.root).with_pfs(&["../devices".into()]);
        assert_eq!(names(&bad), vec!["0000:02:00.0"]);
        let backend =
            PassthroughBackend::with_sysfs(&sysfs.root).with_pfs(&["0000:01:00.0".into()]);
        let profiles = backend.profiles();
        assert_eq!(names(&backend), vec!["0000:01:10.0", "0000:02:00.0"]);
        assert_eq!(profiles[0].available_instances, 1);
        assert!(
            profiles[0].description.contains("free VF"),
            "{:?}",
            profiles[0]
        );
        // Create writes the override and probes; nothing binds in this tree, so it is refused
        // and the override is cleared again.
        let e = backend.create(&request("0000:01:10.0")).err().unwrap();
        assert!(
            e.to_string().contains("binding 0000:01:10.0 to vfio-pci"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(sysfs.root.join("drivers_probe")).unwrap(),
            "0000:01:10.0"
        );
        let override_file = sysfs.root.join("devices/0000:01:10.0/driver_override");
        assert_eq!(std::fs::read_to_string(override_file).unwrap(), "\n");
        assert_eq!(backend.profiles()[0].available_instances, 1);
    }
}
