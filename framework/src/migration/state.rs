//! The VFIO migration v2 state machine: which states a function supports, which direct arcs
//! its backend implements, and how a request for any supported state is served by a walk of
//! direct arcs (as Linux's `vfio_mig_get_next_state`).
//!
//! Backends implement arc actions only ([`MigrationHooks::transition`]); [`StateMachine`]
//! owns the current state, computes the walk and calls the hooks one arc at a time.

use super::{MigrationError, MigrationFlags, MigrationHooks, MigrationState};

use MigrationState::{
    Error as ERROR, PreCopy as PRE_COPY, PreCopyP2p as PRE_COPY_P2P, Resuming as RESUMING,
    Running as RUNNING, RunningP2p as RUNNING_P2P, Stop as STOP, StopCopy as STOP_COPY,
};

impl MigrationState {
    /// Every state, in VFIO number order.
    pub const ALL: [Self; 8] = [
        ERROR,
        STOP,
        RUNNING,
        STOP_COPY,
        RESUMING,
        RUNNING_P2P,
        PRE_COPY,
        PRE_COPY_P2P,
    ];

    /// The flags a function must offer for this state to exist; `None` for ERROR, which can
    /// never be asked for.
    pub fn required_flags(self) -> Option<MigrationFlags> {
        Some(match self {
            ERROR => return None,
            STOP | RUNNING | STOP_COPY | RESUMING => MigrationFlags::STOP_COPY,
            RUNNING_P2P => MigrationFlags::STOP_COPY | MigrationFlags::P2P,
            PRE_COPY => MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY,
            PRE_COPY_P2P => {
                MigrationFlags::STOP_COPY | MigrationFlags::P2P | MigrationFlags::PRE_COPY
            }
        })
    }

    /// Whether a function offering `flags` has this state.
    pub fn is_supported(self, flags: MigrationFlags) -> bool {
        self.required_flags()
            .is_some_and(|need| flags.contains(need))
    }

    /// Whether this state saves device state (one saving session spans all three).
    pub fn is_saving(self) -> bool {
        matches!(self, STOP_COPY | PRE_COPY | PRE_COPY_P2P)
    }

    /// The next state on the way from `self` to `want` if every state existed (the kernel's
    /// next-step table). ERROR means there is no way.
    fn table_step(self, want: Self) -> Self {
        if self == want {
            return want;
        }
        match (self, want) {
            (ERROR, _) | (_, ERROR) => ERROR,
            (STOP, STOP_COPY | RESUMING) => want,
            (STOP, _) => RUNNING_P2P,
            (RUNNING, PRE_COPY) => PRE_COPY,
            (RUNNING, _) => RUNNING_P2P,
            // The PRE_COPY <-> PRE_COPY_P2P arc stays inside the saving session.
            (PRE_COPY, STOP_COPY | PRE_COPY_P2P) => PRE_COPY_P2P,
            (PRE_COPY, _) => RUNNING,
            (PRE_COPY_P2P, STOP_COPY | PRE_COPY) => want,
            (PRE_COPY_P2P, _) => RUNNING_P2P,
            // A saving session cannot go back to pre-copy.
            (STOP_COPY, PRE_COPY | PRE_COPY_P2P) => ERROR,
            (STOP_COPY | RESUMING, _) => STOP,
            (RUNNING_P2P, STOP_COPY | RESUMING) => STOP,
            (RUNNING_P2P, PRE_COPY) => RUNNING,
            (RUNNING_P2P, _) => want,
        }
    }
}

/// Whether `from` → `to` is a direct arc a backend offering `flags` implements.
pub fn is_direct_arc(from: MigrationState, to: MigrationState, flags: MigrationFlags) -> bool {
    if from == to || !from.is_supported(flags) || !to.is_supported(flags) {
        return false;
    }
    let p2p = flags.contains(MigrationFlags::P2P);
    match (from, to) {
        (STOP, RESUMING | STOP_COPY) | (RESUMING | STOP_COPY, STOP) => true,
        (RUNNING, STOP) | (STOP, RUNNING) => !p2p,
        (RUNNING, RUNNING_P2P)
        | (RUNNING_P2P, RUNNING)
        | (RUNNING_P2P, STOP)
        | (STOP, RUNNING_P2P) => true,
        (RUNNING, PRE_COPY) | (PRE_COPY, RUNNING) => true,
        (PRE_COPY, STOP_COPY) => !p2p,
        (PRE_COPY, PRE_COPY_P2P)
        | (PRE_COPY_P2P, PRE_COPY)
        | (PRE_COPY_P2P, RUNNING_P2P)
        | (PRE_COPY_P2P, STOP_COPY)
        | (RUNNING_P2P, PRE_COPY_P2P) => true,
        _ => false,
    }
}

/// Why a state change was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The function does not have the requested state (or ERROR was asked for).
    #[error("migration state {0:?} is not supported by this function")]
    Unsupported(MigrationState),
    /// The device is in ERROR: only a reset leaves it.
    #[error("the device is in the ERROR migration state; only a reset leaves it")]
    InError,
    /// No walk of direct arcs reaches the state (such as STOP_COPY → PRE_COPY).
    #[error("no way from migration state {from:?} to {to:?}")]
    NoPath {
        /// Current state.
        from: MigrationState,
        /// Requested state.
        to: MigrationState,
    },
    /// The backend failed an arc; the device is now in ERROR.
    #[error("migration arc {from:?} -> {to:?} failed: {source}")]
    Arc {
        /// State before the arc.
        from: MigrationState,
        /// State the arc was going to.
        to: MigrationState,
        /// The backend's error.
        source: MigrationError,
    },
}

impl TransitionError {
    /// The errno: EINVAL for a refusal or an arc failed on invalid migration data, EIO for
    /// an arc the device failed.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Arc {
                source: MigrationError::Device(_),
                ..
            } => libc::EIO,
            _ => libc::EINVAL,
        }
    }
}

/// The next direct arc's target on the way from `cur` to `want` for a function offering
/// `flags`: `Ok(want)` when `cur == want`. Refused (with the state untouched) when either state
/// is unsupported or the walk would go through ERROR.
pub fn next_step(
    cur: MigrationState,
    want: MigrationState,
    flags: MigrationFlags,
) -> Result<MigrationState, TransitionError> {
    if cur == ERROR {
        return Err(TransitionError::InError);
    }
    if !cur.is_supported(flags) {
        return Err(TransitionError::Unsupported(cur));
    }
    if !want.is_supported(flags) {
        return Err(TransitionError::Unsupported(want));
    }
    let mut next = cur.table_step(want);
    // Skip states the function lacks. The guard: ERROR is a dead end (the kernel looped
    // forever on it), and no walk is longer than the number of states.
    for _ in 0..MigrationState::ALL.len() {
        if next == ERROR {
            break;
        }
        if next.is_supported(flags) {
            return Ok(next);
        }
        next = next.table_step(want);
    }
    Err(TransitionError::NoPath {
        from: cur,
        to: want,
    })
}

/// Every state after `cur` on the walk to `want` (empty when `cur == want`), each step a
/// direct arc the flags allow; refused when either state is unsupported or ERROR. Computed
/// before anything is done, so a refusal changes nothing.
pub fn path(
    cur: MigrationState,
    want: MigrationState,
    flags: MigrationFlags,
) -> Result<Vec<MigrationState>, TransitionError> {
    if cur == ERROR {
        return Err(TransitionError::InError);
    }
    for state in [cur, want] {
        if !state.is_supported(flags) {
            return Err(TransitionError::Unsupported(state));
        }
    }
    let mut steps = Vec::new();
    let mut at = cur;
    while at != want {
        let next = next_step(at, want, flags)?;
        // Each step leaves `at`; a walk that does not reach `want` within every state is
        // refused rather than followed.
        if next == at || steps.len() >= MigrationState::ALL.len() {
            return Err(TransitionError::NoPath {
                from: cur,
                to: want,
            });
        }
        steps.push(next);
        at = next;
    }
    Ok(steps)
}

/// A function's migration state: serves state requests by walking direct arcs through the
/// backend's [`MigrationHooks`]. Starts in RUNNING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMachine {
    flags: MigrationFlags,
    state: MigrationState,
}

impl StateMachine {
    /// The state machine of a function offering `flags`, in RUNNING.
    pub fn new(flags: MigrationFlags) -> Self {
        Self {
            flags,
            state: RUNNING,
        }
    }

    /// The flags the function offers.
    pub fn flags(&self) -> MigrationFlags {
        self.flags
    }

    /// The current state.
    pub fn state(&self) -> MigrationState {
        self.state
    }

    /// Goes to `want` one direct arc at a time. A refused request leaves the state unchanged;
    /// a failed arc leaves the device in ERROR.
    pub fn set_state(
        &mut self,
        hooks: &dyn MigrationHooks,
        want: MigrationState,
    ) -> Result<(), TransitionError> {
        for next in path(self.state, want, self.flags)? {
            let from = self.state;
            if let Err(source) = hooks.transition(from, next) {
                self.state = ERROR;
                return Err(TransitionError::Arc {
                    from,
                    to: next,
                    source,
                });
            }
            self.state = next;
        }
        Ok(())
    }

    /// Records a device reset: the device is RUNNING again, from any state (ERROR included).
    pub fn reset(&mut self) {
        self.state = RUNNING;
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::*;
    use crate::migration::PrecopyInfo;

    /// Records arcs; fails the arc `fail` when set.
    struct Recorder {
        flags: MigrationFlags,
        arcs: Mutex<Vec<(MigrationState, MigrationState)>>,
        fail: Option<(MigrationState, MigrationState)>,
    }

    impl Recorder {
        fn new(flags: MigrationFlags) -> Self {
            Self {
                flags,
                arcs: Mutex::new(Vec::new()),
                fail: None,
            }
        }
    }

    impl MigrationHooks for Recorder {
        fn flags(&self) -> MigrationFlags {
            self.flags
        }
        fn transition(
            &self,
            from: MigrationState,
            to: MigrationState,
        ) -> Result<(), MigrationError> {
            assert!(is_direct_arc(from, to, self.flags), "{from:?} -> {to:?}");
            self.arcs.lock().push((from, to));
            if self.fail == Some((from, to)) {
                return Err(MigrationError::Device("refused".into()));
            }
            Ok(())
        }
        fn save(&self, _buf: &mut [u8]) -> Result<usize, MigrationError> {
            Ok(0)
        }
        fn load(&self, _data: &[u8]) -> Result<(), MigrationError> {
            Ok(())
        }
        fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
            Ok(PrecopyInfo::default())
        }
        fn stop_copy_size(&self) -> Result<u64, MigrationError> {
            Ok(0)
        }
    }

    fn all_flags() -> impl Strategy<Value = MigrationFlags> {
        (0u64..8).prop_map(MigrationFlags::from_bits_truncate)
    }

    fn any_state() -> impl Strategy<Value = MigrationState> {
        proptest::sample::select(MigrationState::ALL.to_vec())
    }

    /// The driver positioned at `state` (reached through its own arcs from RUNNING).
    fn driver_at(flags: MigrationFlags, state: MigrationState) -> Option<StateMachine> {
        let mut driver = StateMachine::new(flags);
        driver.set_state(&Recorder::new(flags), state).ok()?;
        Some(driver)
    }

    /// The walk from `from` to `to` under `flags` uses only allowed direct arcs, ends at `to`,
    /// and a refused request changes nothing.
    fn check_walk(
        flags: MigrationFlags,
        from: MigrationState,
        to: MigrationState,
    ) -> Result<(), TestCaseError> {
        let walk = path(from, to, flags);
        let expected_ok = from.is_supported(flags)
            && to.is_supported(flags)
            && !(from == STOP_COPY && matches!(to, PRE_COPY | PRE_COPY_P2P));
        prop_assert_eq!(
            walk.is_ok(),
            expected_ok,
            "{:?} -> {:?}: {:?}",
            from,
            to,
            walk
        );
        if let Ok(steps) = &walk {
            let mut at = from;
            for &next in steps {
                prop_assert!(is_direct_arc(at, next, flags), "{:?} -> {:?}", at, next);
                at = next;
            }
            prop_assert_eq!(at, to);
            prop_assert!(steps.len() <= 4);
        }
        if let Some(mut driver) = driver_at(flags, from) {
            let hooks = Recorder::new(flags);
            let result = driver.set_state(&hooks, to);
            match walk {
                Ok(steps) => {
                    prop_assert!(result.is_ok());
                    prop_assert_eq!(driver.state(), to);
                    prop_assert_eq!(hooks.arcs.lock().len(), steps.len());
                }
                Err(e) => {
                    prop_assert_eq!(result, Err(e.clone()));
                    prop_assert_eq!(e.errno(), libc::EINVAL);
                    prop_assert_eq!(driver.state(), from);
                    prop_assert!(hooks.arcs.lock().is_empty());
                }
            }
        }
        Ok(())
    }

    #[test]
    fn every_walk_under_every_flag_combination() {
        for bits in 0..8 {
            let flags = MigrationFlags::from_bits_truncate(bits);
            for from in MigrationState::ALL {
                for to in MigrationState::ALL {
                    check_walk(flags, from, to).unwrap();
                }
            }
        }
    }

    proptest! {
        #[test]
        fn walks_use_allowed_arcs_and_refusals_change_nothing(
            flags in all_flags(),
            from in any_state(),
            to in any_state(),
        ) {
            check_walk(flags, from, to)?;
        }

        #[test]
        fn a_failed_arc_leaves_error(flags in all_flags(), from in any_state(), to in any_state()) {
            let Ok(steps) = path(from, to, flags) else { return Ok(()) };
            let Some(mut driver) = driver_at(flags, from) else { return Ok(()) };
            let Some(&first) = steps.first() else { return Ok(()) };
            let mut hooks = Recorder::new(flags);
            hooks.fail = Some((from, first));
            let err = driver.set_state(&hooks, to).unwrap_err();
            prop_assert_eq!(err.errno(), libc::EIO);
            prop_assert_eq!(driver.state(), ERROR);
            for want in MigrationState::ALL {
                prop_assert!(driver.set_state(&hooks, want).is_err());
                prop_assert_eq!(driver.state(), ERROR);
            }
            driver.reset();
            prop_assert_eq!(driver.state(), RUNNING);
        }
    }

    #[test]
    fn arcs_match_the_reference_list() {
        let full = MigrationFlags::all();
        for (from, to) in [
            (STOP, RESUMING),
            (RESUMING, STOP),
            (STOP, STOP_COPY),
            (STOP_COPY, STOP),
            (RUNNING, RUNNING_P2P),
            (RUNNING_P2P, RUNNING),
            (RUNNING_P2P, STOP),
            (STOP, RUNNING_P2P),
            (RUNNING, PRE_COPY),
            (PRE_COPY, RUNNING),
            (PRE_COPY, PRE_COPY_P2P),
            (PRE_COPY_P2P, PRE_COPY),
            (PRE_COPY_P2P, RUNNING_P2P),
            (PRE_COPY_P2P, STOP_COPY),
            (RUNNING_P2P, PRE_COPY_P2P),
        ] {
            assert!(is_direct_arc(from, to, full), "{from:?} -> {to:?}");
        }
        assert!(!is_direct_arc(STOP_COPY, PRE_COPY, full));
        assert!(!is_direct_arc(STOP_COPY, PRE_COPY_P2P, full));
        assert!(!is_direct_arc(RUNNING, STOP, full));
        let basic = MigrationFlags::STOP_COPY;
        assert!(is_direct_arc(RUNNING, STOP, basic));
        assert!(!is_direct_arc(RUNNING, RUNNING_P2P, basic));
        let pre = MigrationFlags::STOP_COPY | MigrationFlags::PRE_COPY;
        assert!(is_direct_arc(PRE_COPY, STOP_COPY, pre));
    }

    #[test]
    fn multi_step_walks() {
        let full = MigrationFlags::all();
        assert_eq!(
            path(RUNNING, STOP_COPY, full),
            Ok(vec![RUNNING_P2P, STOP, STOP_COPY])
        );
        assert_eq!(
            path(RUNNING, STOP_COPY, MigrationFlags::STOP_COPY),
            Ok(vec![STOP, STOP_COPY])
        );
        assert_eq!(
            path(PRE_COPY, STOP_COPY, full),
            Ok(vec![PRE_COPY_P2P, STOP_COPY])
        );
        assert_eq!(
            path(RESUMING, RUNNING, full),
            Ok(vec![STOP, RUNNING_P2P, RUNNING])
        );
        assert_eq!(path(STOP, STOP, full), Ok(vec![]));
    }

    #[test]
    fn blocked_and_unsupported_requests_are_refused() {
        let full = MigrationFlags::all();
        assert_eq!(
            path(STOP_COPY, PRE_COPY, full),
            Err(TransitionError::NoPath {
                from: STOP_COPY,
                to: PRE_COPY
            })
        );
        assert!(path(STOP_COPY, PRE_COPY_P2P, full).is_err());
        assert_eq!(
            path(RUNNING, PRE_COPY, MigrationFlags::STOP_COPY),
            Err(TransitionError::Unsupported(PRE_COPY))
        );
        assert_eq!(
            path(RUNNING, ERROR, full),
            Err(TransitionError::Unsupported(ERROR))
        );
        assert_eq!(path(ERROR, RUNNING, full), Err(TransitionError::InError));
        assert_eq!(path(ERROR, ERROR, full), Err(TransitionError::InError));
        // No STOP_COPY: nothing migrates.
        assert!(path(RUNNING, STOP, MigrationFlags::PRE_COPY).is_err());
    }

    #[test]
    fn error_is_left_only_by_reset() {
        let flags = MigrationFlags::STOP_COPY;
        let mut hooks = Recorder::new(flags);
        hooks.fail = Some((RESUMING, STOP));
        let mut driver = StateMachine::new(flags);
        driver.set_state(&hooks, RESUMING).unwrap();
        let err = driver.set_state(&hooks, RUNNING).unwrap_err();
        assert!(matches!(
            err,
            TransitionError::Arc {
                from: RESUMING,
                to: STOP,
                ..
            }
        ));
        assert_eq!(driver.state(), ERROR);
        assert_eq!(
            driver.set_state(&hooks, RUNNING),
            Err(TransitionError::InError)
        );
        assert_eq!(driver.state(), ERROR);
        driver.reset();
        assert_eq!(driver.state(), RUNNING);
        hooks.fail = None;
        driver.set_state(&hooks, STOP).unwrap();
        assert_eq!(driver.state(), STOP);
    }
}
