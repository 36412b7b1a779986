//! What a conformance run found.

use std::fmt;

/// One of the kit's checks (see the module documentation for what each covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Profiles, layouts, create and drop, available instances.
    Lifecycle,
    /// A refused create leaves nothing.
    FailedCreate,
    /// Read-only and writable bits of config space.
    ConfigSpace,
    /// Accesses of every width, alignment and range.
    BarAccess,
    /// The decoding gates of COMMAND.
    Decoding,
    /// Reset returns the function to its state after create.
    Reset,
    /// Interrupts before attach and the vectors raised.
    Interrupts,
    /// The MSI-X table and PBA never reach the backend.
    MsixTable,
    /// Migration arcs and save/load round trips.
    Migration,
}

impl Check {
    /// Its name in reports (`bar-access`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::FailedCreate => "failed-create",
            Self::ConfigSpace => "config-space",
            Self::BarAccess => "bar-access",
            Self::Decoding => "decoding",
            Self::Reset => "reset",
            Self::Interrupts => "interrupts",
            Self::MsixTable => "msix-table",
            Self::Migration => "migration",
        }
    }
}

/// One failed expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check that failed.
    pub check: Check,
    /// The profile it ran with (`None` for checks of the whole backend).
    pub profile: Option<String>,
    /// What was expected and what happened.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.profile {
            Some(profile) => write!(
                f,
                "[{}] profile `{profile}`: {}",
                self.check.name(),
                self.message
            ),
            None => write!(f, "[{}] {}", self.check.name(), self.message),
        }
    }
}

/// The outcome of a conformance run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// The profiles checked.
    pub profiles: Vec<String>,
    /// What failed, in the order found.
    pub failures: Vec<Failure>,
    /// What was not checked, and why (a profile with no instance available, a profile too
    /// large to exhaust).
    pub skipped: Vec<String>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether `check` failed at least once.
    pub fn failed(&self, check: Check) -> bool {
        self.failures.iter().any(|f| f.check == check)
    }

    pub(crate) fn fail(&mut self, check: Check, profile: Option<&str>, message: impl Into<String>) {
        // One bad register would otherwise repeat for each width and offset: keep the first
        // few failures of each check and profile.
        let same = self
            .failures
            .iter()
            .filter(|f| f.check == check && f.profile.as_deref() == profile)
            .count();
        if same < MAX_PER_CHECK {
            self.failures.push(Failure {
                check,
                profile: profile.map(str::to_string),
                message: message.into(),
            });
        }
    }
}

/// Failures kept per check and profile.
const MAX_PER_CHECK: usize = 8;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        writeln!(
            f,
            "conformance of backend `{}` ({} profiles: {}): {verdict}, {} failures",
            self.backend,
            self.profiles.len(),
            self.profiles.join(", "),
            self.failures.len()
        )?;
        for failure in &self.failures {
            writeln!(f, "  {failure}")?;
        }
        for skipped in &self.skipped {
            writeln!(f, "  skipped: {skipped}")?;
        }
        Ok(())
    }
}
