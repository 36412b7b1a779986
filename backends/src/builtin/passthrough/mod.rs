//! The passthrough backend: any PCI function bound to vfio-pci, exposed under a vPCI layout
//! (the one given at create, or one derived from the function), with the data path of
//! kernel VFIO: DMA through the device's IOMMU, interrupts on the client's eventfds, BARs
//! mmapped by the VMM. The server only sees config space and the trapped BAR pages.
//!
//! Its profiles are the functions bound to vfio-pci, by PCI address: `types` lists them, and
//! `create --backend passthrough --profile 0000:01:00.0` exposes one. The binding is the
//! operator's (create refuses a function not bound to vfio-pci). An SR-IOV VF may be given a
//! profile (attributes `mac`, `vlan`, `spoofchk`, `trust`), set on its PF's netdev over
//! rtnetlink before it is exposed ([`vf`]); destroy puts those back and closes the device,
//! which the kernel resets.

mod function;
pub mod host;
pub mod vf;

pub use function::PassthroughFunction;

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::{
    Backend, BackendError, CreateRequest, DirectPath, Function, ProfileInfo,
};
use vfio_variant::layout::{BarBacking, CapabilityBody, Layout};
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
            in_use: Arc::default(),
        }
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
        self.host
            .vfio_functions()
            .into_iter()
            .map(|address| {
                let group = self.host.group(&address).unwrap_or_else(|| "none".into());
                ProfileInfo {
                    description: format!("PCI function {address}, IOMMU group {group}"),
                    available_instances: u32::from(!in_use.contains(&address)),
                    migratable: false,
                    name: address,
                }
            })
            .collect()
    }

    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        self.host
            .check(profile)
            .map_err(|e| BackendError::Refused(e.to_string()))?;
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
        let profile =
            VfProfile::from_attributes(&request.attributes).map_err(BackendError::Refused)?;
        self.host
            .check(&address)
            .map_err(|e| BackendError::Refused(e.to_string()))?;
        let location = if profile.is_empty() {
            None
        } else {
            Some(
                self.host
                    .vf_location(&address)
                    .map_err(|e| BackendError::Refused(e.to_string()))?,
            )
        };
        {
            let mut in_use = self.in_use.lock();
            if in_use.contains(&address) {
                return Err(BackendError::NoInstances(address));
            }
            in_use.push(address.clone());
        }
        let release = || self.in_use.lock().retain(|a| *a != address);
        // The VF is provisioned through its PF before it is exposed.
        let provisioned = match location {
            None => None,
            Some(location) => {
                let applied = vf::current(&location)
                    .map_err(|source| vf::VfError {
                        netdev: location.netdev.clone(),
                        vf: location.vf,
                        what: "reading the settings".into(),
                        source,
                    })
                    .and_then(|previous| {
                        vf::apply(&location, &profile, &previous).map(|()| previous)
                    });
                match applied {
                    Ok(previous) => Some(Provisioned {
                        location,
                        profile,
                        previous,
                    }),
                    Err(e) => {
                        release();
                        return Err(BackendError::Refused(e.to_string()));
                    }
                }
            }
        };
        let undo = |provisioned: &Option<Provisioned>| {
            if let Some(p) = provisioned {
                p.restore();
            }
            release();
        };
        let device = match VfioPhysicalFunction::open(&self.host.device_dir(&address)) {
            Ok(d) => d,
            Err(e) => {
                undo(&provisioned);
                return Err(e.into());
            }
        };
        if let Err(e) = check_fit(&request.layout, device.irq_count(IRQ_INDEX_MSIX)) {
            drop(device);
            undo(&provisioned);
            return Err(e.into());
        }
        tracing::info!(address, "passthrough function opened");
        Ok(Box::new(PassthroughFunction::new(
            device,
            address,
            provisioned,
            Arc::clone(&self.in_use),
        )))
    }
}

/// What create set on a VF through its PF, and what was there before.
pub struct Provisioned {
    location: VfLocation,
    profile: VfProfile,
    previous: VfProfile,
}

impl Provisioned {
    /// Puts back what create changed.
    pub fn restore(&self) {
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
}
