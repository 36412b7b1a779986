//! Tests of the kit itself: a small correct backend passes, and each deliberately broken
//! variant fails the check that covers its fault (and says where).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::Mutex;

use super::{Check, check_backend};
use crate::backend::{
    Backend, BackendError, CreateRequest, Function, FunctionContext, FunctionError, Interrupt,
    ProfileInfo,
};
use crate::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use crate::plugin::abi::PANICKED_PREFIX;

const LAYOUT: &str = r#"
[vpci]
format = 1
name = "fixture"
[identity]
vendor_id = 0x1b36
device_id = 0x10f1
class_code = 0xff0000
[[bar]]
index = 0
kind = "mem32"
size = "4K"
backing = "emulated"
[[capability]]
kind = "msix"
offset = 0x40
table_size = 2
table_bar = 0
table_offset = 0x800
pba_bar = 0
pba_offset = 0xc00
"#;

/// The fault a fixture has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// A dropped function does not give its instance back.
    LeaksOnDrop,
    /// A refused create (an unknown profile) still takes an instance.
    LeaksOnRefusal,
    /// An unaligned read panics.
    PanicsUnaligned,
    /// An unaligned read panics inside a plugin: the host sees the contained panic's error.
    PanicsBehindAbi,
    /// Reset forgets the scratch register.
    ResetKeepsState,
    /// Writing the doorbell raises a vector the layout does not declare.
    WildVector,
    /// Saved state does not carry the scratch register.
    LosesState,
    /// Accepts any amount of saved state.
    AcceptsTruncated,
}

struct Fixture {
    fault: Fault,
    available: Arc<AtomicU32>,
}

impl Fixture {
    fn new(fault: Fault) -> Self {
        Self {
            fault,
            available: Arc::new(AtomicU32::new(2)),
        }
    }
}

impl Backend for Fixture {
    fn name(&self) -> &str {
        "fixture"
    }
    fn description(&self) -> &str {
        "the kit's own fixture"
    }
    fn profiles(&self) -> Vec<ProfileInfo> {
        vec![ProfileInfo {
            name: "one".into(),
            description: String::new(),
            available_instances: self.available.load(Ordering::SeqCst),
            migratable: true,
        }]
    }
    fn default_layout(&self, profile: &str) -> Result<String, BackendError> {
        match profile {
            "one" => Ok(LAYOUT.into()),
            other => Err(BackendError::UnknownProfile(other.into())),
        }
    }
    fn create(&self, request: &CreateRequest) -> Result<Box<dyn Function>, BackendError> {
        let take = || {
            self.available
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if request.profile != "one" {
            if self.fault == Fault::LeaksOnRefusal {
                take();
            }
            return Err(BackendError::UnknownProfile(request.profile.clone()));
        }
        if !take() {
            return Err(BackendError::NoInstances("one".into()));
        }
        Ok(Box::new(FixtureFunction {
            fault: self.fault,
            available: Arc::clone(&self.available),
            scratch: AtomicU32::new(0),
            context: Mutex::new(None),
            loading: Mutex::new(Vec::new()),
            saved: AtomicBool::new(false),
        }))
    }
}

struct FixtureFunction {
    fault: Fault,
    available: Arc<AtomicU32>,
    /// BAR 0 offset 0: scratch. Offset 4: doorbell raising MSI-X vector 0 (or 7).
    scratch: AtomicU32,
    context: Mutex<Option<FunctionContext>>,
    loading: Mutex<Vec<u8>>,
    /// The state was handed out in this STOP_COPY.
    saved: AtomicBool,
}

impl Drop for FixtureFunction {
    fn drop(&mut self) {
        if self.fault != Fault::LeaksOnDrop {
            self.available.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Function for FixtureFunction {
    fn attach(&self, context: FunctionContext) {
        *self.context.lock() = Some(context);
    }
    fn bar_read(&self, _: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        if self.fault == Fault::PanicsUnaligned && offset % 2 == 1 {
            panic!("unaligned read at {offset:#x}");
        }
        if self.fault == Fault::PanicsBehindAbi && offset % 2 == 1 {
            return Err(FunctionError::Device(format!(
                "{PANICKED_PREFIX}unaligned read at {offset:#x}"
            )));
        }
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.scratch.load(Ordering::SeqCst).to_le_bytes()),
            _ => data.fill(0),
        }
        Ok(())
    }
    fn bar_write(&self, _: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        match (offset, data) {
            (0, &[a, b, c, d]) => self
                .scratch
                .store(u32::from_le_bytes([a, b, c, d]), Ordering::SeqCst),
            (4, &[_, _, _, _]) => {
                let vector = if self.fault == Fault::WildVector {
                    7
                } else {
                    0
                };
                if let Some(context) = &*self.context.lock() {
                    context.interrupts.raise(Interrupt::Msix(vector));
                }
            }
            _ => {
                return Err(FunctionError::BadAccess(format!(
                    "{} bytes at {offset:#x}",
                    data.len()
                )));
            }
        }
        Ok(())
    }
    fn reset(&self) -> Result<(), FunctionError> {
        if self.fault != Fault::ResetKeepsState {
            self.scratch.store(0, Ordering::SeqCst);
        }
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for FixtureFunction {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY
    }
    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        match to {
            MigrationState::StopCopy => self.saved.store(false, Ordering::SeqCst),
            MigrationState::Resuming => self.loading.lock().clear(),
            _ => {}
        }
        if (from, to) == (MigrationState::Resuming, MigrationState::Stop) {
            let loading = std::mem::take(&mut *self.loading.lock());
            let state: [u8; 8] = match loading.try_into() {
                Ok(state) => state,
                Err(loading) if self.fault == Fault::AcceptsTruncated => {
                    let _ = loading;
                    return Ok(());
                }
                Err(loading) => {
                    return Err(MigrationError::InvalidData(format!(
                        "{} bytes, not 8",
                        loading.len()
                    )));
                }
            };
            let scratch = u32::from_le_bytes([state[4], state[5], state[6], state[7]]);
            self.scratch.store(scratch, Ordering::SeqCst);
        }
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        // One call hands out the whole state; the next one the end.
        if self.saved.swap(true, Ordering::SeqCst) {
            return Ok(0);
        }
        let scratch = match self.fault {
            Fault::LosesState => 0,
            _ => self.scratch.load(Ordering::SeqCst),
        };
        let mut state = *b"FIX1\0\0\0\0";
        state[4..].copy_from_slice(&scratch.to_le_bytes());
        buf[..8].copy_from_slice(&state);
        Ok(8)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        self.loading.lock().extend_from_slice(data);
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device("no pre-copy".into()))
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(8)
    }
}

fn failed_checks(fault: Fault) -> Vec<Check> {
    let report = check_backend(&Fixture::new(fault));
    eprintln!("{report}");
    let mut checks: Vec<Check> = report.failures.iter().map(|f| f.check).collect();
    checks.dedup();
    checks
}

#[test]
fn a_correct_backend_passes_every_check() {
    let report = check_backend(&Fixture::new(Fault::None));
    assert!(report.passed(), "{report}");
    assert_eq!(report.profiles, ["one"]);
}

#[test]
fn a_function_that_keeps_its_instance_fails_lifecycle() {
    assert!(failed_checks(Fault::LeaksOnDrop).contains(&Check::Lifecycle));
}

#[test]
fn a_refusal_that_takes_an_instance_fails_failed_create() {
    assert!(failed_checks(Fault::LeaksOnRefusal).contains(&Check::FailedCreate));
}

#[test]
fn a_panic_on_an_unaligned_access_fails_bar_access_and_names_it() {
    let report = check_backend(&Fixture::new(Fault::PanicsUnaligned));
    let failure = report
        .failures
        .iter()
        .find(|f| f.check == Check::BarAccess)
        .expect("bar-access fails");
    assert!(
        failure.message.contains("panicked: unaligned read at 0x1"),
        "{failure}"
    );
}

#[test]
fn a_panic_contained_by_the_plugin_boundary_still_fails_bar_access() {
    let report = check_backend(&Fixture::new(Fault::PanicsBehindAbi));
    let failure = report
        .failures
        .iter()
        .find(|f| f.check == Check::BarAccess)
        .expect("bar-access fails");
    assert!(
        failure
            .message
            .contains("panicked: unaligned read at 0x1 (contained by the plugin boundary)"),
        "{failure}"
    );
}

#[test]
fn a_reset_that_keeps_registers_fails_reset() {
    let report = check_backend(&Fixture::new(Fault::ResetKeepsState));
    assert_eq!(
        report.failures.iter().map(|f| f.check).collect::<Vec<_>>(),
        [Check::Reset],
        "{report}"
    );
    assert!(
        report.failures[0].message.contains("BAR 0 offset 0x0"),
        "{report}"
    );
}

#[test]
fn an_undeclared_vector_fails_interrupts() {
    assert_eq!(failed_checks(Fault::WildVector), [Check::Interrupts]);
}

#[test]
fn state_lost_in_migration_fails_migration() {
    assert_eq!(failed_checks(Fault::LosesState), [Check::Migration]);
}

#[test]
fn truncated_state_accepted_fails_migration() {
    let report = check_backend(&Fixture::new(Fault::AcceptsTruncated));
    assert!(report.failed(Check::Migration), "{report}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.message.contains("4 of 8 bytes")),
        "{report}"
    );
}
