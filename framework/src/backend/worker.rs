//! Device work that runs off the register path.
//!
//! A register write that starts device work (a doorbell, a queue notify, a DMA engine's
//! start bit) must be answered before the work reads or writes guest memory: when guest
//! memory is reached through DMA_READ/DMA_WRITE messages, a VMM answers them only once the
//! vCPU that made the write has its reply (QEMU's vCPU waits holding its big lock, and serves
//! the device's DMA requests under that lock). So the write only *kicks* a [`Worker`], and the
//! worker's thread does the work.
//!
//! Work is named by bits of a `u64` (a queue index, an engine), so what is pending is bounded
//! by construction and repeated kicks coalesce, as doorbells do. The thread is started on the
//! first kick, sleeps on a condition variable while nothing is pending, and is stopped and
//! joined when the worker is dropped. The handler must not hold a lock the register path
//! takes while it waits for guest memory.
//!
//! Waiting for a worker ([`Worker::quiesce`]: a function stopped for migration, a queue
//! drained) on a connection's thread must not stop that thread from reading the socket: the
//! worker may be waiting for a DMA answer only it can hand over. The connection thread
//! installs a [`Pump`] while it runs a command ([`with_pump`]); a wait on it then reads the
//! socket until the worker is idle, woken by the worker's eventfd.

use std::cell::Cell;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};

use parking_lot::{Condvar, Mutex};
use rustix::event::{EventfdFlags, eventfd};

/// What a thread that serves a client does while it waits: moves the client's messages on
/// (answers to DMA requests to their waiters, commands to a queue).
pub(crate) trait Pump {
    /// Waits until a message comes (and handles it) or `wake` is readable; false when the
    /// client is gone.
    fn pump(&self, wake: BorrowedFd<'_>) -> bool;
}

thread_local! {
    static PUMP: Cell<Option<*const (dyn Pump + 'static)>> = const { Cell::new(None) };
}

/// Runs `f` with `pump` installed on this thread: a [`Worker::quiesce`] in `f` pumps.
pub(crate) fn with_pump<R>(pump: &(dyn Pump + 'static), f: impl FnOnce() -> R) -> R {
    struct Restore(Option<*const (dyn Pump + 'static)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PUMP.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PUMP.with(|p| p.replace(Some(pump as *const _))));
    f()
}

/// Runs `f` with the pump installed on this thread, if any.
fn installed_pump<R>(f: impl FnOnce(Option<&dyn Pump>) -> R) -> R {
    let pump = PUMP.with(Cell::get);
    // SAFETY: the pointer was set by `with_pump` from a reference that outlives the call of
    // `with_pump`'s closure, and is cleared (restored) when that call returns or unwinds; we
    // are inside it, on the same thread (the cell is thread-local).
    f(pump.map(|p| unsafe { &*p }))
}

/// The work a handler is given: the bits kicked since its last pass.
pub type Handler = Box<dyn FnMut(u64) + Send>;

#[derive(Default)]
struct State {
    pending: u64,
    running: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when work is kicked or the worker stops.
    wake: Condvar,
    /// Signalled when a pass ends.
    idle: Condvar,
    /// Written when the worker goes idle, for a pumping wait (none if it could not be made:
    /// waits then block without pumping).
    idle_fd: Option<OwnedFd>,
}

impl Shared {
    /// The worker went idle: wakes every kind of waiter.
    fn went_idle(&self) {
        self.idle.notify_all();
        if let Some(fd) = &self.idle_fd {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// A function's work runner: one thread running a handler for the work kicked.
pub struct Worker {
    name: String,
    shared: Arc<Shared>,
    /// The handler until the thread starts (on the first kick).
    handler: Mutex<Option<Handler>>,
    thread: Mutex<Option<(JoinHandle<()>, ThreadId)>>,
}

impl Worker {
    /// A worker whose thread, named `name`, will run `handler` with the bits kicked.
    pub fn new(name: impl Into<String>, handler: impl FnMut(u64) + Send + 'static) -> Self {
        Self {
            name: name.into(),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                idle: Condvar::new(),
                idle_fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok(),
            }),
            handler: Mutex::new(Some(Box::new(handler))),
            thread: Mutex::new(None),
        }
    }

    /// Marks `bits` pending and wakes the thread; returns at once.
    pub fn kick(&self, bits: u64) {
        if bits == 0 {
            return;
        }
        self.start();
        let mut state = self.shared.state.lock();
        state.pending |= bits;
        self.shared.wake.notify_one();
        drop(state);
        // Without a thread (it could not be started) the caller runs the pass.
        if self.thread.lock().is_none() {
            self.run_inline();
        }
    }

    /// Waits until nothing is pending and no pass runs: the work kicked so far is done.
    /// Called on the worker's own thread (from the handler) it returns at once.
    pub fn quiesce(&self) {
        if self.on_worker_thread() {
            return;
        }
        let busy = |state: &State| state.pending != 0 || state.running;
        // On a connection's thread: read the socket meanwhile (the worker may wait for an
        // answer only this thread reads), woken by the idle eventfd.
        let pumped = installed_pump(|pump| {
            let (Some(pump), Some(fd)) = (pump, self.shared.idle_fd.as_ref()) else {
                return false;
            };
            loop {
                if !busy(&self.shared.state.lock()) {
                    return true;
                }
                if !pump.pump(std::os::fd::AsFd::as_fd(fd)) {
                    // The client is gone: its DMA fails at once, a plain wait is short.
                    return false;
                }
                let mut drained = [0u8; 8];
                let _ = rustix::io::read(fd, &mut drained);
            }
        });
        if pumped {
            return;
        }
        let mut state = self.shared.state.lock();
        while busy(&state) {
            self.shared.idle.wait(&mut state);
        }
    }

    /// Whether the calling thread is the worker's.
    pub fn on_worker_thread(&self) -> bool {
        self.thread
            .lock()
            .as_ref()
            .is_some_and(|(_, id)| *id == std::thread::current().id())
    }

    /// Starts the thread on the first kick. When it cannot start, the handler stays here and
    /// kicks run it on the caller's thread.
    fn start(&self) {
        let mut thread = self.thread.lock();
        if thread.is_some() {
            return;
        }
        let Some(handler) = self.handler.lock().take() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let slot = Arc::new(Mutex::new(Some(handler)));
        let body = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                if let Some(handler) = body.lock().take() {
                    run(&shared, handler);
                }
            });
        match spawned {
            Ok(handle) => {
                let id = handle.thread().id();
                *thread = Some((handle, id));
            }
            Err(e) => {
                tracing::warn!(
                    "{}: cannot start the work thread ({e}); work runs inline",
                    self.name
                );
                *self.handler.lock() = slot.lock().take();
            }
        }
    }

    /// Runs what is pending on the caller's thread (no thread could be started).
    fn run_inline(&self) {
        let mut handler = self.handler.lock();
        let Some(handler) = handler.as_mut() else {
            return;
        };
        loop {
            let bits = {
                let mut state = self.shared.state.lock();
                let bits = std::mem::take(&mut state.pending);
                state.running = bits != 0;
                bits
            };
            if bits == 0 {
                self.shared.went_idle();
                return;
            }
            handler(bits);
            self.shared.state.lock().running = false;
        }
    }
}

/// The thread: takes what is pending, runs a pass, until stopped.
fn run(shared: &Shared, mut handler: Handler) {
    let mut state = shared.state.lock();
    loop {
        if state.stop {
            return;
        }
        if state.pending == 0 {
            state.running = false;
            shared.went_idle();
            shared.wake.wait(&mut state);
            continue;
        }
        let bits = std::mem::take(&mut state.pending);
        state.running = true;
        drop(state);
        handler(bits);
        state = shared.state.lock();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock();
            state.stop = true;
            state.pending = 0;
            self.shared.wake.notify_all();
        }
        let thread = self.thread.lock().take();
        if let Some((handle, id)) = thread {
            // A handler that drops its own worker cannot wait for itself.
            if id != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        // Nobody waits for work that will not run.
        let mut state = self.shared.state.lock();
        state.running = false;
        self.shared.went_idle();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn kicks_return_before_the_work_and_coalesce() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let seen = Arc::new(AtomicU64::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (seen, passes) = (Arc::clone(&seen), Arc::clone(&passes));
            Worker::new("test-worker", move |bits| {
                // The first pass blocks until the test lets it go, as DMA waiting for a
                // client would.
                if passes.fetch_add(1, Ordering::SeqCst) == 0 {
                    started_tx.send(()).unwrap();
                    gate_rx.recv().unwrap();
                }
                seen.fetch_or(bits, Ordering::SeqCst);
            })
        };
        worker.kick(1);
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // The kicker is not held up by the blocked pass.
        worker.kick(2);
        worker.kick(4);
        worker.kick(2);
        gate_tx.send(()).unwrap();
        worker.quiesce();
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        // 1 in the first pass; 2 and 4, kicked meanwhile, in one more.
        assert_eq!(passes.load(Ordering::SeqCst), 2);
        assert!(!worker.on_worker_thread());
    }

    #[test]
    fn drop_stops_the_thread_and_quiesce_on_the_worker_returns() {
        let (tx, rx) = mpsc::channel();
        let worker = Arc::new(Mutex::new(None::<Arc<Worker>>));
        let inner = Arc::clone(&worker);
        let w = Arc::new(Worker::new("test-worker", move |_| {
            if let Some(w) = inner.lock().as_ref() {
                // Would wait for itself without the thread check.
                w.quiesce();
                tx.send(w.on_worker_thread()).unwrap();
            }
        }));
        *worker.lock() = Some(Arc::clone(&w));
        w.kick(1);
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        w.quiesce();
        *worker.lock() = None;
        let weak = Arc::downgrade(&w);
        drop(w);
        assert!(weak.upgrade().is_none(), "the thread holds no reference");
    }

    #[test]
    fn quiesce_without_work_returns_and_zero_kicks_start_nothing() {
        let worker = Worker::new("test-worker", |_| {});
        worker.kick(0);
        worker.quiesce();
        assert!(worker.thread.lock().is_none());
    }
}
