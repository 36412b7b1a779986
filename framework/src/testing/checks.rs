//! The checks themselves: each creates its own functions with the profile's default layout,
//! drives them through a [`VirtualFunction`] as a guest would, and drops them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::Options;
use super::observed::{Interrupts, Log, Observed, Reached};
use super::report::{Check, Report};
use crate::backend::emulated::HostMemory;
use crate::backend::{
    Backend, BackendError, CreateRequest, FunctionContext, FunctionError, Interrupt, ProfileInfo,
};
use crate::config::ConfigTemplate;
use crate::config::template::ByteSource;
use crate::device::stream::{StreamIdentity, StreamLimits, StreamLoader, StreamWriter};
use crate::device::{CONFIG_REGION, DeviceError, VirtualFunction};
use crate::layout::{BarBacking, CapabilityBody};
use crate::migration::{MigrationFlags, MigrationHooks, MigrationState, is_direct_arc, path};
use crate::pci::{cap, regs};
use crate::plugin::abi::{AbiError, PANICKED_PREFIX};
use crate::vpci::compile::compile;
use crate::vpci::parse_layout;

/// Bytes at the start of each BAR probed at every width and alignment (the last
/// 16 bytes are probed too).
pub const PROBE_BYTES: u64 = 256;
/// Bytes at the end of each BAR probed at every width and alignment.
const TAIL_BYTES: u64 = 16;
/// Access widths probed.
const WIDTHS: [usize; 4] = [1, 2, 4, 8];
/// Profiles with more instances than this are not exhausted.
const EXHAUST_LIMIT: u32 = 16;
/// Guest memory given to attached functions (at IOVA 0).
const GUEST_MEMORY: usize = 64 << 10;
/// The largest saved state the migration check reads.
const MAX_STATE: usize = 1 << 30;

/// Runs every check against every profile of `backend`; see [the module](super).
pub fn check_backend(backend: &dyn Backend) -> Report {
    check_backend_with(backend, &Options::default())
}

/// [`check_backend`] with what the backend tells the kit about itself.
pub fn check_backend_with(backend: &dyn Backend, options: &Options) -> Report {
    let mut report = Report {
        backend: backend.name().to_string(),
        ..Report::default()
    };
    let profiles = match guard(|| backend.profiles()) {
        Ok(profiles) => profiles,
        Err(panic) => {
            report.fail(
                Check::Lifecycle,
                None,
                format!("profiles() panicked: {panic}"),
            );
            return report;
        }
    };
    if profiles.is_empty() {
        report.fail(Check::Lifecycle, None, "the backend offers no profile");
    }
    for profile in profiles {
        report.profiles.push(profile.name.clone());
        let Some(template) = layout(backend, &profile.name, &mut report) else {
            continue;
        };
        let mut kit = Kit {
            backend,
            profile,
            template,
            report: &mut report,
            options,
            created: 0,
        };
        kit.run();
    }
    report
}

/// Runs `f`, turning a panic into its message.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| AbiError::panicked(&*payload).message)
}

/// The compiled default layout of a profile.
fn layout(
    backend: &dyn Backend,
    profile: &str,
    report: &mut Report,
) -> Option<Arc<ConfigTemplate>> {
    let fail = |report: &mut Report, message: String| {
        report.fail(Check::Lifecycle, Some(profile), message);
        None
    };
    let text = match guard(|| backend.default_layout(profile)) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return fail(report, format!("default_layout: {e}")),
        Err(panic) => return fail(report, format!("default_layout panicked: {panic}")),
    };
    match parse_layout(&format!("<{profile} default layout>"), &text) {
        Ok(layout) => Some(Arc::new(compile(Arc::new(layout)))),
        Err(e) => fail(report, format!("the default layout does not parse: {e}")),
    }
}

/// A function under test.
struct Probe {
    vf: VirtualFunction,
    log: Log,
    interrupts: Arc<Interrupts>,
}

/// What a guest access came to.
enum Outcome {
    Done(Vec<u8>),
    Refused(DeviceError),
    Panicked(String),
}

struct Kit<'a> {
    backend: &'a dyn Backend,
    profile: ProfileInfo,
    template: Arc<ConfigTemplate>,
    report: &'a mut Report,
    options: &'a Options,
    created: u32,
}

impl Kit<'_> {
    fn run(&mut self) {
        self.lifecycle();
        self.failed_create();
        if self.available() == Some(0) {
            self.report.skipped.push(format!(
                "profile `{}`: no instance available, only its layout and refusals were checked",
                self.profile.name
            ));
            return;
        }
        self.config_space();
        self.bar_access();
        self.decoding();
        self.reset();
        self.interrupts();
        self.msix_table();
        self.migration();
    }

    fn fail(&mut self, check: Check, message: impl Into<String>) {
        let profile = self.profile.name.clone();
        self.report.fail(check, Some(&profile), message);
    }

    /// Every profile's available instances (`None` when `profiles()` panicked).
    fn counts(&mut self, check: Check) -> Option<BTreeMap<String, u32>> {
        match guard(|| self.backend.profiles()) {
            Ok(profiles) => Some(
                profiles
                    .into_iter()
                    .map(|p| (p.name, p.available_instances))
                    .collect(),
            ),
            Err(panic) => {
                self.fail(check, format!("profiles() panicked: {panic}"));
                None
            }
        }
    }

    fn available(&mut self) -> Option<u32> {
        let name = self.profile.name.clone();
        self.counts(Check::Lifecycle)?.get(&name).copied()
    }

    fn request(&mut self, profile: &str) -> CreateRequest {
        self.created += 1;
        CreateRequest {
            profile: profile.to_string(),
            instance: format!("conformance-{}", self.created),
            layout: Arc::clone(self.template.layout()),
            attributes: Vec::new(),
        }
    }

    /// `create` as the framework calls it: `Err` carries the backend's refusal.
    fn try_create(&mut self, check: Check, attach: bool) -> Option<Result<Probe, BackendError>> {
        let request = self.request(&self.profile.name.clone());
        let function = match guard(|| self.backend.create(&request)) {
            Ok(Ok(function)) => function,
            Ok(Err(e)) => return Some(Err(e)),
            Err(panic) => {
                self.fail(check, format!("create panicked: {panic}"));
                return None;
            }
        };
        let (observed, log) = Observed::new(function);
        let vf = match VirtualFunction::new(Arc::clone(&self.template), Box::new(observed)) {
            Ok(vf) => vf,
            Err(e) => {
                self.fail(
                    check,
                    format!("the default layout does not fit the function: {e}"),
                );
                return None;
            }
        };
        let interrupts = Arc::new(Interrupts::default());
        if attach {
            let context = FunctionContext {
                dma: Arc::new(HostMemory::new(GUEST_MEMORY)),
                interrupts: Arc::clone(&interrupts) as _,
            };
            if let Err(panic) = guard(|| vf.function().attach(context)) {
                self.fail(check, format!("attach panicked: {panic}"));
                return None;
            }
        }
        Some(Ok(Probe {
            vf,
            log,
            interrupts,
        }))
    }

    /// A function for `check`, attached to guest memory and a recording interrupt sink.
    fn create(&mut self, check: Check) -> Option<Probe> {
        match self.try_create(check, true)? {
            Ok(probe) => Some(probe),
            Err(e) => {
                self.fail(check, format!("create failed: {e}"));
                None
            }
        }
    }

    fn drop_probe(&mut self, check: Check, probe: Probe) {
        if let Err(panic) = guard(move || drop(probe)) {
            self.fail(check, format!("dropping a function panicked: {panic}"));
        }
    }

    fn lifecycle(&mut self) {
        let check = Check::Lifecycle;
        let Some(before) = self.counts(check) else {
            return;
        };
        let name = self.profile.name.clone();
        let Some(&available) = before.get(&name) else {
            self.fail(check, "the profile is no longer listed by profiles()");
            return;
        };
        if available == 0 {
            return;
        }
        let Some(probe) = self.create(check) else {
            return;
        };
        let after = self.counts(check).unwrap_or_default();
        if after.get(&name) != Some(&(available - 1)) {
            self.fail(
                check,
                format!(
                    "available instances went from {available} to {:?} after one create",
                    after.get(&name)
                ),
            );
        }
        self.drop_probe(check, probe);
        if self.counts(check).as_ref() != Some(&before) {
            self.fail(
                check,
                format!("after a drop the counts are not back to {before:?}"),
            );
        }
        if available > EXHAUST_LIMIT {
            self.report.skipped.push(format!(
                "profile `{name}`: {available} instances, not exhausted (limit {EXHAUST_LIMIT})"
            ));
            return;
        }
        let mut held = Vec::new();
        for _ in 0..available {
            match self.try_create(check, false) {
                Some(Ok(probe)) => held.push(probe),
                Some(Err(e)) => {
                    self.fail(
                        check,
                        format!("create {} of {available} failed: {e}", held.len() + 1),
                    );
                    break;
                }
                None => break,
            }
        }
        if held.len() as u32 == available {
            let counts = self.counts(check);
            match self.try_create(check, false) {
                Some(Err(BackendError::NoInstances(_))) => {}
                Some(Err(e)) => self.fail(
                    check,
                    format!("a create past the last instance failed with `{e}`, not NoInstances"),
                ),
                Some(Ok(_)) => self.fail(
                    check,
                    format!("a create past the {available} available instances succeeded"),
                ),
                None => {}
            }
            let exhausted = self.counts(check);
            if exhausted != counts {
                self.report.fail(
                    Check::FailedCreate,
                    Some(&name),
                    format!("a refused create changed the counts from {counts:?} to {exhausted:?}"),
                );
            }
        }
        for probe in held {
            self.drop_probe(check, probe);
        }
        if self.counts(check).as_ref() != Some(&before) {
            self.fail(
                check,
                format!("after dropping every function the counts are not back to {before:?}"),
            );
        }
    }

    fn failed_create(&mut self) {
        let check = Check::FailedCreate;
        let Some(before) = self.counts(check) else {
            return;
        };
        let unknown = format!("{}-no-such-profile", self.profile.name);
        let request = self.request(&unknown);
        match guard(|| self.backend.create(&request)) {
            Ok(Err(BackendError::UnknownProfile(_))) => {}
            Ok(Err(e)) => self.fail(
                check,
                format!("an unknown profile failed with `{e}`, not UnknownProfile"),
            ),
            Ok(Ok(_)) => self.fail(check, format!("profile `{unknown}` was created")),
            Err(panic) => self.fail(
                check,
                format!("create of an unknown profile panicked: {panic}"),
            ),
        }
        match guard(|| self.backend.default_layout(&unknown)) {
            Ok(Err(BackendError::UnknownProfile(_))) => {}
            Ok(other) => self.fail(
                check,
                format!(
                    "default_layout of an unknown profile gave {:?}, not UnknownProfile",
                    other.map(|_| "a layout")
                ),
            ),
            Err(panic) => self.fail(
                check,
                format!("default_layout of an unknown profile panicked: {panic}"),
            ),
        }
        if self.counts(check).as_ref() != Some(&before) {
            self.fail(
                check,
                format!("a refused create changed the counts from {before:?}"),
            );
        }
    }

    /// A guest access; `data` writes, `None` reads `len` bytes.
    fn access(
        vf: &VirtualFunction,
        region: u32,
        offset: u64,
        len: usize,
        data: Option<&[u8]>,
    ) -> Outcome {
        let result = guard(|| match data {
            Some(data) => vf
                .region_write(region, offset, data)
                .map(|()| data.to_vec()),
            None => {
                let mut buf = vec![0; len];
                vf.region_read(region, offset, &mut buf).map(|()| buf)
            }
        });
        match result {
            Ok(Ok(bytes)) => Outcome::Done(bytes),
            Ok(Err(DeviceError::Function(FunctionError::Device(message))))
                if message.starts_with(PANICKED_PREFIX) =>
            {
                // A plugin's panic, contained by the plugin boundary: still the backend's bug.
                Outcome::Panicked(format!(
                    "{} (contained by the plugin boundary)",
                    &message[PANICKED_PREFIX.len()..]
                ))
            }
            Ok(Err(e)) => Outcome::Refused(e),
            Err(panic) => Outcome::Panicked(panic),
        }
    }

    fn config_write(&mut self, check: Check, vf: &VirtualFunction, offset: u16, data: &[u8]) {
        match Self::access(vf, CONFIG_REGION, offset.into(), data.len(), Some(data)) {
            Outcome::Panicked(panic) => self.fail(
                check,
                format!("config write at {offset:#x} panicked: {panic}"),
            ),
            Outcome::Refused(e) => {
                self.fail(check, format!("config write at {offset:#x} refused: {e}"))
            }
            Outcome::Done(_) => {}
        }
    }

    fn set_command(&mut self, check: Check, vf: &VirtualFunction, command: u16) {
        self.config_write(check, vf, regs::COMMAND, &command.to_le_bytes());
    }

    fn enable_decoding(&mut self, check: Check, vf: &VirtualFunction) {
        self.set_command(
            check,
            vf,
            regs::COMMAND_IO | regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER,
        );
    }

    /// The BARs of the layout: (index, size).
    fn bars(&self) -> Vec<(u8, u64)> {
        self.template
            .layout()
            .bars
            .iter()
            .flatten()
            .map(|b| (b.index, b.size))
            .collect()
    }

    /// The offsets probed in a BAR of `size` bytes.
    fn probed(size: u64) -> Vec<u64> {
        let mut offsets: Vec<u64> = (0..size.min(PROBE_BYTES)).collect();
        offsets.extend(size.saturating_sub(TAIL_BYTES).max(PROBE_BYTES)..size);
        offsets
    }

    fn config_space(&mut self) {
        let check = Check::ConfigSpace;
        let Some(probe) = self.create(check) else {
            return;
        };
        let t = Arc::clone(&self.template);
        let size = t.size();
        let fixed = |at: usize| -> u8 {
            if t.byte_source(at as u16) == ByteSource::Virtual {
                t.virtual_mask()[at] & !t.write_mask()[at] & !t.rw1c_mask()[at]
            } else {
                0
            }
        };
        let read = |kit: &mut Self, at: usize| -> Option<[u8; 4]> {
            match Self::access(&probe.vf, CONFIG_REGION, at as u64, 4, None) {
                Outcome::Done(bytes) => Some([bytes[0], bytes[1], bytes[2], bytes[3]]),
                Outcome::Refused(e) => {
                    kit.fail(check, format!("config read at {at:#x} refused: {e}"));
                    None
                }
                Outcome::Panicked(panic) => {
                    kit.fail(check, format!("config read at {at:#x} panicked: {panic}"));
                    None
                }
            }
        };
        for at in (0..size).step_by(4) {
            let Some(value) = read(self, at) else {
                continue;
            };
            for (i, byte) in value.iter().enumerate() {
                let mask = t.virtual_mask()[at + i];
                if t.byte_source((at + i) as u16) == ByteSource::Virtual
                    && byte & mask != t.reset_values()[at + i] & mask
                {
                    self.fail(
                        check,
                        format!(
                            "config byte {:#x} ({}) reads {byte:#04x} after create, the layout says {:#04x}",
                            at + i,
                            t.owner_of((at + i) as u16),
                            t.reset_values()[at + i] & mask
                        ),
                    );
                }
            }
        }
        for at in (0..size).step_by(4) {
            for pattern in [[0xff; 4], [0; 4]] {
                let Some(before) = read(self, at) else {
                    continue;
                };
                self.config_write(check, &probe.vf, at as u16, &pattern);
                let Some(after) = read(self, at) else {
                    continue;
                };
                for i in 0..4 {
                    let mask = fixed(at + i);
                    if (before[i] ^ after[i]) & mask != 0 {
                        self.fail(
                            check,
                            format!(
                                "writing {:#04x} to config byte {:#x} ({}) changed read-only bits: {:#04x} -> {:#04x}",
                                pattern[i],
                                at + i,
                                t.owner_of((at + i) as u16),
                                before[i],
                                after[i]
                            ),
                        );
                    }
                }
            }
        }
        self.drop_probe(check, probe);
    }

    fn bar_access(&mut self) {
        let check = Check::BarAccess;
        let Some(probe) = self.create(check) else {
            return;
        };
        self.enable_decoding(check, &probe.vf);
        for (index, size) in self.bars() {
            let region = u32::from(index);
            for width in WIDTHS {
                for offset in Self::probed(size) {
                    if offset + width as u64 > size {
                        continue;
                    }
                    let data = match Self::access(&probe.vf, region, offset, width, None) {
                        Outcome::Done(bytes) => bytes,
                        Outcome::Refused(_) => vec![0; width],
                        Outcome::Panicked(panic) => {
                            self.fail(check, format!("BAR {index}: a {width}-byte read at {offset:#x} panicked: {panic}"));
                            vec![0; width]
                        }
                    };
                    if let Outcome::Panicked(panic) =
                        Self::access(&probe.vf, region, offset, width, Some(&data))
                    {
                        self.fail(
                            check,
                            format!(
                                "BAR {index}: a {width}-byte write at {offset:#x} panicked: {panic}"
                            ),
                        );
                    }
                }
                let beyond = [size - (width as u64).min(size) + 1, size, u64::MAX - 1];
                for offset in beyond {
                    for data in [None, Some(vec![0u8; width])] {
                        let what = if data.is_some() { "write" } else { "read" };
                        match Self::access(&probe.vf, region, offset, width, data.as_deref()) {
                            Outcome::Refused(e) if e.errno() == libc::EINVAL => {}
                            Outcome::Refused(e) => self.fail(
                                check,
                                format!("BAR {index}: a {width}-byte {what} at {offset:#x} (past the end) got errno {}, not EINVAL: {e}", e.errno()),
                            ),
                            Outcome::Done(_) => self.fail(
                                check,
                                format!("BAR {index}: a {width}-byte {what} at {offset:#x} (past the end) succeeded"),
                            ),
                            Outcome::Panicked(panic) => self.fail(
                                check,
                                format!("BAR {index}: a {width}-byte {what} at {offset:#x} panicked: {panic}"),
                            ),
                        }
                    }
                }
            }
            let outside: Vec<_> = probe
                .log
                .lock()
                .iter()
                .filter(|a| {
                    reached_bar(a.target, index, &self.template) && a.offset + a.len as u64 > size
                })
                .copied()
                .collect();
            if let Some(a) = outside.first() {
                self.fail(check, format!("BAR {index}: an access of {} bytes at {:#x} reached the backend past the end", a.len, a.offset));
            }
        }
        self.drop_probe(check, probe);
    }

    fn decoding(&mut self) {
        let check = Check::Decoding;
        let Some(probe) = self.create(check) else {
            return;
        };
        self.set_command(check, &probe.vf, 0);
        probe.log.lock().clear();
        for (index, size) in self.bars() {
            let width = size.min(4) as usize;
            for data in [None, Some(vec![0u8; width])] {
                match Self::access(&probe.vf, index.into(), 0, width, data.as_deref()) {
                    Outcome::Refused(DeviceError::DecodingDisabled { .. }) => {}
                    Outcome::Refused(e) => self.fail(
                        check,
                        format!("BAR {index} with decoding off: {e}, not a decoding error"),
                    ),
                    Outcome::Done(_) => {
                        self.fail(check, format!("BAR {index} was accessed with decoding off"))
                    }
                    Outcome::Panicked(panic) => self.fail(
                        check,
                        format!("BAR {index} with decoding off panicked: {panic}"),
                    ),
                }
            }
        }
        if let Some(a) = probe.log.lock().first().copied() {
            self.fail(
                check,
                format!("{a:?} reached the backend with decoding off"),
            );
        }
        self.drop_probe(check, probe);
    }

    /// Config space and the probed BAR registers, 4 bytes at a time (`None`: refused).
    fn snapshot(&mut self, check: Check, vf: &VirtualFunction) -> Vec<Option<Vec<u8>>> {
        let mut state = Vec::new();
        for at in (0..self.template.size() as u64).step_by(4) {
            state.push(match Self::access(vf, CONFIG_REGION, at, 4, None) {
                Outcome::Done(bytes) => Some(bytes),
                _ => None,
            });
        }
        for (index, size) in self.bars() {
            for offset in Self::probed(size)
                .into_iter()
                .filter(|o| o % 4 == 0 && o + 4 <= size)
            {
                state.push(match Self::access(vf, index.into(), offset, 4, None) {
                    Outcome::Done(bytes) => Some(bytes),
                    Outcome::Refused(_) => None,
                    Outcome::Panicked(panic) => {
                        self.fail(
                            check,
                            format!("BAR {index}: a read at {offset:#x} panicked: {panic}"),
                        );
                        None
                    }
                });
            }
        }
        state
    }

    /// The BAR register a snapshot entry is (`None` for config space).
    fn snapshot_register(&self, entry: usize) -> Option<(u8, u64)> {
        let mut rest = entry.checked_sub(self.template.size() / 4)?;
        for (index, size) in self.bars() {
            let offsets: Vec<u64> = Self::probed(size)
                .into_iter()
                .filter(|o| o % 4 == 0 && o + 4 <= size)
                .collect();
            if rest < offsets.len() {
                return Some((index, offsets[rest]));
            }
            rest -= offsets.len();
        }
        None
    }

    /// Where each snapshot entry is, for messages.
    fn snapshot_place(&self, entry: usize) -> String {
        match self.snapshot_register(entry) {
            Some((index, offset)) => format!("BAR {index} offset {offset:#x}"),
            None => format!(
                "config dword {:#x} ({})",
                entry * 4,
                self.template.owner_of((entry * 4) as u16)
            ),
        }
    }

    /// Writes ones to every probed register of every BAR, 4 bytes at a time.
    fn scribble(&mut self, check: Check, vf: &VirtualFunction) {
        for (index, size) in self.bars() {
            for offset in Self::probed(size)
                .into_iter()
                .filter(|o| o % 4 == 0 && o + 4 <= size)
            {
                if let Outcome::Panicked(panic) =
                    Self::access(vf, index.into(), offset, 4, Some(&[0xff; 4]))
                {
                    self.fail(
                        check,
                        format!("BAR {index}: a write of ones at {offset:#x} panicked: {panic}"),
                    );
                }
            }
        }
    }

    /// A stable snapshot: two in a row, with the entries that differ (read side effects,
    /// counters, clocks) left out.
    fn stable_snapshot(&mut self, check: Check, vf: &VirtualFunction) -> Vec<Option<Vec<u8>>> {
        let first = self.snapshot(check, vf);
        let second = self.snapshot(check, vf);
        first
            .into_iter()
            .zip(second)
            .map(|(a, b)| if a == b { a } else { None })
            .collect()
    }

    /// Compares snapshot entries from `base` on.
    fn compare(
        &mut self,
        check: Check,
        what: &str,
        base: usize,
        expected: &[Option<Vec<u8>>],
        found: &[Option<Vec<u8>>],
    ) {
        for (entry, (e, f)) in expected.iter().zip(found).enumerate() {
            let entry = base + entry;
            if let (Some(e), Some(f)) = (e, f)
                && e != f
            {
                let place = self.snapshot_place(entry);
                self.fail(
                    check,
                    format!("{place} reads {f:02x?} {what}, {e:02x?} before"),
                );
            }
        }
    }

    fn reset(&mut self) {
        let check = Check::Reset;
        let Some(probe) = self.create(check) else {
            return;
        };
        self.enable_decoding(check, &probe.vf);
        let fresh = self.stable_snapshot(check, &probe.vf);
        self.scribble(check, &probe.vf);
        match guard(|| probe.vf.reset()) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(check, format!("reset failed: {e}")),
            Err(panic) => self.fail(check, format!("reset panicked: {panic}")),
        }
        // Config space is at its reset values (decoding off); compare it first, then the BARs.
        let config = self.template.size() / 4;
        let after_config = self.snapshot(check, &probe.vf);
        let mut expected: Vec<_> = fresh.clone();
        // The fresh snapshot was taken with decoding on: COMMAND differs by design.
        expected[usize::from(regs::COMMAND) / 4] = None;
        self.compare(
            check,
            "after reset",
            0,
            &expected[..config],
            &after_config[..config],
        );
        self.enable_decoding(check, &probe.vf);
        let mut after = self.snapshot(check, &probe.vf);
        for (entry, value) in after.iter_mut().enumerate().skip(config) {
            if let Some((bar, offset)) = self.snapshot_register(entry)
                && self
                    .options
                    .survives_reset
                    .iter()
                    .any(|(b, r)| *b == bar && offset < r.end && r.start < offset + 4)
            {
                *value = None;
            }
        }
        self.compare(
            check,
            "after writes of ones and a reset",
            config,
            &fresh[config..],
            &after[config..],
        );
        self.drop_probe(check, probe);
    }

    /// Turns MSI and MSI-X on in the layout's capabilities.
    fn enable_interrupts(&mut self, check: Check, vf: &VirtualFunction) {
        for c in &self.template.layout().capabilities.clone() {
            match &c.body {
                CapabilityBody::Msix(_) => {
                    self.config_write(
                        check,
                        vf,
                        c.offset + cap::MSIX_FLAGS,
                        &cap::MSIX_FLAGS_ENABLE.to_le_bytes(),
                    );
                }
                CapabilityBody::Msi(_) => {
                    self.config_write(
                        check,
                        vf,
                        c.offset + cap::MSI_FLAGS,
                        &cap::MSI_FLAGS_ENABLE.to_le_bytes(),
                    );
                }
                _ => {}
            }
        }
    }

    fn interrupts(&mut self) {
        let check = Check::Interrupts;
        // Never attached: whatever the backend raises has nowhere to go, and must not fail.
        match self.try_create(check, false) {
            Some(Ok(probe)) => {
                self.enable_decoding(check, &probe.vf);
                self.enable_interrupts(check, &probe.vf);
                self.scribble(check, &probe.vf);
                self.drop_probe(check, probe);
            }
            Some(Err(e)) => self.fail(check, format!("create failed: {e}")),
            None => {}
        }
        let Some(probe) = self.create(check) else {
            return;
        };
        self.enable_decoding(check, &probe.vf);
        self.enable_interrupts(check, &probe.vf);
        self.scribble(check, &probe.vf);
        let layout = Arc::clone(self.template.layout());
        let (mut msi, mut msix) = (0u32, 0u32);
        for c in &layout.capabilities {
            match &c.body {
                CapabilityBody::Msi(p) => msi = p.vectors.into(),
                CapabilityBody::Msix(p) => msix = p.table_size.into(),
                _ => {}
            }
        }
        let raised = probe.interrupts.0.lock().clone();
        for interrupt in raised {
            let declared = match interrupt {
                Interrupt::Intx(_) => layout.header.interrupt_pin != 0,
                Interrupt::Msi(v) => v < msi,
                Interrupt::Msix(v) => v < msix,
                Interrupt::Error | Interrupt::Request => true,
            };
            if !declared {
                self.fail(
                    check,
                    format!("raised {interrupt:?}; the layout declares {msi} MSI and {msix} MSI-X vectors, interrupt pin {}", layout.header.interrupt_pin),
                );
            }
        }
        self.drop_probe(check, probe);
    }

    fn msix_table(&mut self) {
        let check = Check::MsixTable;
        let ranges: Vec<(u8, Range<u64>)> = self
            .template
            .layout()
            .capabilities
            .iter()
            .filter_map(|c| match &c.body {
                CapabilityBody::Msix(p) => Some(*p),
                _ => None,
            })
            .flat_map(|p| {
                let table = u64::from(p.table_size) * cap::MSIX_ENTRY_SIZE;
                let pba = u64::from(p.table_size).div_ceil(64) * 8;
                [
                    (
                        p.table_bar,
                        u64::from(p.table_offset)..u64::from(p.table_offset) + table,
                    ),
                    (
                        p.pba_bar,
                        u64::from(p.pba_offset)..u64::from(p.pba_offset) + pba,
                    ),
                ]
            })
            .collect();
        if ranges.is_empty() {
            return;
        }
        let Some(probe) = self.create(check) else {
            return;
        };
        self.enable_decoding(check, &probe.vf);
        self.enable_interrupts(check, &probe.vf);
        probe.log.lock().clear();
        for (bar, range) in &ranges {
            for offset in range.clone().step_by(4) {
                let read = Self::access(&probe.vf, (*bar).into(), offset, 4, None);
                let write = Self::access(&probe.vf, (*bar).into(), offset, 4, Some(&[0; 4]));
                for (what, outcome) in [("read", read), ("write", write)] {
                    match outcome {
                        Outcome::Done(_) => {}
                        Outcome::Refused(e) => self.fail(
                            check,
                            format!("BAR {bar}: MSI-X {what} at {offset:#x} refused: {e}"),
                        ),
                        Outcome::Panicked(panic) => self.fail(
                            check,
                            format!("BAR {bar}: MSI-X {what} at {offset:#x} panicked: {panic}"),
                        ),
                    }
                }
            }
        }
        let reached: Vec<_> = probe.log.lock().clone();
        for a in reached {
            if ranges.iter().any(|(bar, r)| {
                reached_bar(a.target, *bar, &self.template)
                    && a.offset < r.end
                    && r.start < a.offset + a.len as u64
            }) {
                self.fail(check, format!("an access of {} bytes at {:#x} of the MSI-X table or PBA reached the backend", a.len, a.offset));
            }
        }
        self.drop_probe(check, probe);
    }

    fn migration(&mut self) {
        let check = Check::Migration;
        if !self.profile.migratable {
            return;
        }
        let Some(source) = self.create(check) else {
            return;
        };
        let Some(flags) = hooks(&source).map(|h| h.flags()) else {
            self.fail(
                check,
                "the profile says migratable, and its function has no migration hooks",
            );
            return;
        };
        if !flags.contains(MigrationFlags::STOP_COPY) {
            self.fail(check, format!("migration flags {flags:?} lack STOP_COPY"));
            return;
        }
        self.enable_decoding(check, &source.vf);
        self.scribble(check, &source.vf);
        let saved_view = self.stable_snapshot(check, &source.vf);
        let identity = StreamIdentity::new(
            &self.template,
            self.backend.name(),
            self.profile.name.clone(),
        );
        let Some(bytes) = self.save(&source, flags, &identity) else {
            return;
        };
        self.drop_probe(check, source);

        let mut corrupt = bytes.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x40;
        let mut loader = StreamLoader::new(identity.clone(), StreamLimits::default());
        if loader.feed(&corrupt).is_ok() && loader.finish().is_ok() {
            self.fail(check, "a stream with a flipped byte was accepted");
        }
        let mut loader = StreamLoader::new(identity, StreamLimits::default());
        let stream = match loader.feed(&bytes).and_then(|()| loader.finish()) {
            Ok(stream) => stream,
            Err(e) => {
                self.fail(check, format!("the saved stream does not load: {e}"));
                return;
            }
        };
        let device: Vec<u8> = stream.device_data().flatten().copied().collect();

        let Some(target) = self.create(check) else {
            return;
        };
        let steps = self.walk(
            &target,
            flags,
            MigrationState::Running,
            MigrationState::Resuming,
        );
        if steps
            && self.step(
                check,
                || stream.apply(hooks(&target).expect("checked above")),
                "load",
            )
            && self.walk(
                &target,
                flags,
                MigrationState::Resuming,
                MigrationState::Running,
            )
        {
            if let Some(config) = stream.config()
                && let Err(e) = target.vf.config_restore(config)
            {
                self.fail(
                    check,
                    format!("the saved config space does not restore: {e}"),
                );
            }
            let loaded = self.snapshot(check, &target.vf);
            self.compare(check, "on the destination", 0, &saved_view, &loaded);
        }
        self.drop_probe(check, target);

        if device.len() >= 2
            && let Some(truncated) = self.create(check)
        {
            let half = &device[..device.len() / 2];
            let accepted = self.walk(
                &truncated,
                flags,
                MigrationState::Running,
                MigrationState::Resuming,
            ) && guard(|| hooks(&truncated).expect("checked above").load(half))
                .is_ok_and(|r| r.is_ok())
                && guard(|| {
                    hooks(&truncated)
                        .expect("checked above")
                        .transition(MigrationState::Resuming, MigrationState::Stop)
                })
                .is_ok_and(|r| r.is_ok());
            if accepted {
                self.fail(
                    check,
                    format!(
                        "{} of {} bytes of saved state were accepted as a whole state",
                        half.len(),
                        device.len()
                    ),
                );
            }
            self.drop_probe(check, truncated);
        }
        self.arcs(flags, &device);
    }

    /// Takes one transition step; `false` (reported) when it fails.
    fn step(
        &mut self,
        check: Check,
        f: impl FnOnce() -> Result<(), crate::migration::MigrationError>,
        what: &str,
    ) -> bool {
        match guard(f) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.fail(check, format!("{what}: {e}"));
                false
            }
            Err(panic) => {
                self.fail(check, format!("{what} panicked: {panic}"));
                false
            }
        }
    }

    /// Walks `from` → `to` by direct arcs.
    fn walk(
        &mut self,
        probe: &Probe,
        flags: MigrationFlags,
        from: MigrationState,
        to: MigrationState,
    ) -> bool {
        let check = Check::Migration;
        let steps = match path(from, to, flags) {
            Ok(steps) => steps,
            Err(e) => {
                self.fail(check, format!("no walk {from:?} -> {to:?}: {e}"));
                return false;
            }
        };
        let mut at = from;
        for next in steps {
            let hooks = hooks(probe).expect("checked by the caller");
            if !self.step(
                check,
                || hooks.transition(at, next),
                &format!("arc {at:?} -> {next:?}"),
            ) {
                return false;
            }
            at = next;
        }
        true
    }

    /// Saves a function's state into a stream (RUNNING → STOP_COPY → STOP).
    fn save(
        &mut self,
        probe: &Probe,
        flags: MigrationFlags,
        identity: &StreamIdentity,
    ) -> Option<Vec<u8>> {
        let check = Check::Migration;
        if !self.walk(
            probe,
            flags,
            MigrationState::Running,
            MigrationState::StopCopy,
        ) {
            return None;
        }
        let hooks = hooks(probe).expect("checked by the caller");
        let mut writer = StreamWriter::new(identity.clone());
        writer.set_config(probe.vf.config_snapshot());
        let mut bytes = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            match guard(|| writer.read(hooks, &mut buf, true)) {
                Ok(Ok(n)) => {
                    bytes.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                    if bytes.len() > MAX_STATE {
                        self.fail(
                            check,
                            format!("the saved state does not end within {MAX_STATE} bytes"),
                        );
                        return None;
                    }
                }
                Ok(Err(e)) => {
                    self.fail(check, format!("save: {e}"));
                    return None;
                }
                Err(panic) => {
                    self.fail(check, format!("save panicked: {panic}"));
                    return None;
                }
            }
        }
        self.walk(probe, flags, MigrationState::StopCopy, MigrationState::Stop)
            .then_some(bytes)
    }

    /// Takes every direct arc the flags allow, on one function, loading `device` whenever it
    /// enters RESUMING so that leaving it is legitimate.
    fn arcs(&mut self, flags: MigrationFlags, device: &[u8]) {
        let check = Check::Migration;
        let Some(probe) = self.create(check) else {
            return;
        };
        let mut at = MigrationState::Running;
        for from in MigrationState::ALL {
            for to in MigrationState::ALL {
                if !is_direct_arc(from, to, flags) {
                    continue;
                }
                // Some states are reached only from RUNNING (pre-copy): go through it.
                let via_running = path(at, from, flags).is_err();
                let reached = if via_running {
                    self.walk_loading(&probe, flags, at, MigrationState::Running, device)
                        && self.walk_loading(&probe, flags, MigrationState::Running, from, device)
                } else {
                    self.walk_loading(&probe, flags, at, from, device)
                };
                if !reached {
                    self.drop_probe(check, probe);
                    return;
                }
                let hooks = hooks(&probe).expect("checked by the caller");
                if !self.step(
                    check,
                    || hooks.transition(from, to),
                    &format!("arc {from:?} -> {to:?}"),
                ) {
                    self.drop_probe(check, probe);
                    return;
                }
                at = to;
                if to == MigrationState::Resuming
                    && !self.step(check, || hooks.load(device), "load in RESUMING")
                {
                    self.drop_probe(check, probe);
                    return;
                }
            }
        }
        self.drop_probe(check, probe);
    }

    fn walk_loading(
        &mut self,
        probe: &Probe,
        flags: MigrationFlags,
        from: MigrationState,
        to: MigrationState,
        device: &[u8],
    ) -> bool {
        let Ok(steps) = path(from, to, flags) else {
            self.fail(Check::Migration, format!("no walk {from:?} -> {to:?}"));
            return false;
        };
        let mut at = from;
        for next in steps {
            let hooks = hooks(probe).expect("checked by the caller");
            if !self.step(
                Check::Migration,
                || hooks.transition(at, next),
                &format!("arc {at:?} -> {next:?}"),
            ) {
                return false;
            }
            if next == MigrationState::Resuming
                && !self.step(Check::Migration, || hooks.load(device), "load in RESUMING")
            {
                return false;
            }
            at = next;
        }
        true
    }
}

fn hooks(probe: &Probe) -> Option<&dyn MigrationHooks> {
    probe.vf.function().migration()
}

/// Whether an access that reached the backend went to BAR `index`.
fn reached_bar(target: Reached, index: u8, template: &ConfigTemplate) -> bool {
    match target {
        Reached::Bar(bar) => bar == index,
        Reached::LegacyIo => template
            .layout()
            .bar(index)
            .is_some_and(|b| b.backing == BarBacking::LegacyIo),
    }
}
