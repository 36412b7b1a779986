//! The VMM-side migration driver over real vfio-user sockets: a device whose state is dirtied
//! while pre-copy runs moves to another port in the same process and across a TCP link, and
//! every failure leaves the source running and the destination as it was.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::migration_driver::{
    LocalDestination, MigrateError, Observer, Options, Progress, RemoteDestination, Served,
    migrate, serve_destination,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::{Client, ClientOptions};
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::parse_layout;

const PAGE: usize = 4096;
const PAGES: usize = 64;

fn layout(device_id: u16) -> String {
    format!(
        "[vpci]\nformat = 1\nname = \"journal\"\nconfig_size = 256\n[identity]\n\
         vendor_id = 0x1af4\ndevice_id = {device_id:#x}\nclass_code = 0xff0000\n"
    )
}

/// Device memory saved as `{page le32, 4096 bytes}` records: everything when saving starts,
/// then the pages written since they were last saved.
struct Journal {
    memory: Vec<u8>,
    dirty: BTreeSet<usize>,
    pending: Vec<u8>,
    loading: Vec<u8>,
}

impl Journal {
    fn new(fill: u8) -> Self {
        Self {
            memory: vec![fill; PAGE * PAGES],
            dirty: BTreeSet::new(),
            pending: Vec::new(),
            loading: Vec::new(),
        }
    }

    fn write(&mut self, page: usize, value: u8) {
        self.memory[page * PAGE..(page + 1) * PAGE].fill(value);
        self.dirty.insert(page);
    }

    fn apply(&mut self) -> Result<(), MigrationError> {
        let records = std::mem::take(&mut self.loading);
        if !records.len().is_multiple_of(PAGE + 4) {
            return Err(MigrationError::InvalidData("cut record".into()));
        }
        for record in records.chunks(PAGE + 4) {
            let page = u32::from_le_bytes(record[..4].try_into().unwrap()) as usize;
            if page >= PAGES {
                return Err(MigrationError::InvalidData(format!("page {page}")));
            }
            self.memory[page * PAGE..(page + 1) * PAGE].copy_from_slice(&record[4..]);
        }
        Ok(())
    }
}

struct JournalFunction(Arc<Mutex<Journal>>);

impl Function for JournalFunction {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for JournalFunction {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::all()
    }
    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        let mut journal = self.0.lock();
        match (from, to) {
            (MigrationState::Running, MigrationState::PreCopy)
            | (MigrationState::Stop, MigrationState::StopCopy) => {
                journal.dirty = (0..PAGES).collect();
                journal.pending.clear();
            }
            (MigrationState::Stop, MigrationState::Resuming) => journal.loading.clear(),
            (MigrationState::Resuming, MigrationState::Stop) => journal.apply()?,
            _ => {}
        }
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut journal = self.0.lock();
        while journal.pending.len() < buf.len() {
            let Some(page) = journal.dirty.pop_first() else {
                break;
            };
            let mut record = (page as u32).to_le_bytes().to_vec();
            record.extend_from_slice(&journal.memory[page * PAGE..(page + 1) * PAGE]);
            journal.pending.extend_from_slice(&record);
        }
        let n = journal.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&journal.pending[..n]);
        journal.pending.drain(..n);
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        self.0.lock().loading.extend_from_slice(data);
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        let journal = self.0.lock();
        Ok(PrecopyInfo {
            initial_bytes: 0,
            dirty_bytes: (journal.dirty.len() * (PAGE + 4) + journal.pending.len()) as u64,
        })
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok((PAGES * (PAGE + 4)) as u64)
    }
}

struct Device {
    port: Arc<Port>,
    journal: Arc<Mutex<Journal>>,
}

impl Device {
    fn new(device_id: u16, fill: u8) -> Self {
        let text = layout(device_id);
        let template = Arc::new(compile(Arc::new(parse_layout("t", &text).unwrap())));
        let journal = Arc::new(Mutex::new(Journal::new(fill)));
        let function = JournalFunction(Arc::clone(&journal));
        let function = Arc::new(VirtualFunction::new(template, Box::new(function)).unwrap());
        Self {
            port: Port::new("journal", function),
            journal,
        }
    }

    fn connect(&self) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let port = Arc::clone(&self.port);
        std::thread::spawn(move || {
            serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
        });
        Client::from_stream(ours, ClientOptions::default()).unwrap()
    }

    fn memory(&self) -> Vec<u8> {
        self.journal.lock().memory.clone()
    }
}

/// Writes fewer pages after each pre-copy round, as a guest whose activity settles.
struct Writer {
    journal: Arc<Mutex<Journal>>,
    round: usize,
    progress: Vec<Progress>,
}

impl Observer for Writer {
    fn progress(&mut self, progress: &Progress) {
        self.progress.push(progress.clone());
    }
    fn precopy_round(&mut self) -> Result<(), String> {
        let pages = 16usize.saturating_sub(self.round * 6);
        let mut journal = self.journal.lock();
        for page in 0..pages {
            journal.write(page * 3, 0x40 + self.round as u8);
        }
        self.round += 1;
        Ok(())
    }
    fn source_stopped(&mut self) -> Result<(), String> {
        // The last write reaches the device state only as it is saved once more.
        Ok(())
    }
}

fn writer(device: &Device) -> Writer {
    Writer {
        journal: Arc::clone(&device.journal),
        round: 0,
        progress: Vec::new(),
    }
}

#[test]
fn precopy_rounds_converge_and_the_destination_runs_with_the_state() {
    let source = Device::new(0x10ff, 0x11);
    let destination = Device::new(0x10ff, 0x00);
    let (mut src, mut dst) = (source.connect(), destination.connect());
    let mut observer = writer(&source);
    let options = Options {
        converge_bytes: PAGE as u64,
        ..Options::default()
    };
    let report = migrate(
        &mut src,
        &mut LocalDestination::new(&mut dst),
        &options,
        &mut observer,
    )
    .unwrap();
    // Everything, then the 16, 10 and 4 pages dirtied after each round, then nothing left:
    // converged. Each round also carries the stream's framing (a few hundred bytes).
    let record = PAGE + 4;
    assert_eq!(
        report.precopy_rounds.len(),
        5,
        "{:?}",
        report.precopy_rounds
    );
    for (bytes, pages) in report.precopy_rounds.iter().zip([64, 16, 10, 4, 0]) {
        let payload = (pages * record) as u64;
        assert!(
            (payload..payload + 512).contains(bytes),
            "{pages} pages in {bytes} bytes"
        );
    }
    assert!(
        report.stop_copy_bytes < 512,
        "nothing dirtied after the last round"
    );
    assert!(report.downtime <= report.total);
    assert!(matches!(observer.progress[0], Progress::Started { .. }));
    assert_eq!(observer.progress.last(), Some(&Progress::Resumed));
    assert_eq!(destination.memory(), source.memory());
    assert_eq!(src.mig_state().unwrap(), MigrationState::Stop);
    assert_eq!(dst.mig_state().unwrap(), MigrationState::Running);
}

#[test]
fn without_precopy_everything_moves_while_stopped() {
    let source = Device::new(0x10ff, 0x22);
    let destination = Device::new(0x10ff, 0x00);
    let (mut src, mut dst) = (source.connect(), destination.connect());
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    let report = migrate(
        &mut src,
        &mut LocalDestination::new(&mut dst),
        &options,
        &mut (),
    )
    .unwrap();
    assert!(report.precopy_rounds.is_empty());
    let payload = (PAGES * (PAGE + 4)) as u64;
    assert!((payload..payload + 512).contains(&report.stop_copy_bytes));
    assert_eq!(destination.memory(), source.memory());
}

/// Serves one migration into `device` on a TCP listener; returns how it ended.
fn agent(device: &Device) -> (u16, std::thread::JoinHandle<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = device.connect();
    let handle = std::thread::spawn(move || {
        let (mut link, _) = listener.accept().unwrap();
        let mut client = Some(client);
        serve_destination(&mut link, |name| {
            if name == "journal" {
                client.take().ok_or_else(|| "busy".to_string())
            } else {
                Err(format!("no function {name}"))
            }
        })
        .unwrap_or_else(|e| Served::Refused(e.to_string()))
    });
    (port, handle)
}

#[test]
fn a_remote_destination_resumes_over_tcp() {
    let source = Device::new(0x10ff, 0x33);
    let destination = Device::new(0x10ff, 0x00);
    let (port, served) = agent(&destination);
    let mut src = source.connect();
    let link = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut observer = writer(&source);
    let report = migrate(
        &mut src,
        &mut RemoteDestination::new(link, "journal"),
        &Options::default(),
        &mut observer,
    )
    .unwrap();
    assert_eq!(
        served.join().unwrap(),
        Served::Resumed {
            bytes: report.bytes()
        }
    );
    assert_eq!(destination.memory(), source.memory());
}

#[test]
fn an_unknown_function_is_refused_before_the_source_changes() {
    let source = Device::new(0x10ff, 0x44);
    let destination = Device::new(0x10ff, 0x00);
    let (port, served) = agent(&destination);
    let mut src = source.connect();
    let link = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let error = migrate(
        &mut src,
        &mut RemoteDestination::new(link, "nvme0"),
        &Options::default(),
        &mut (),
    )
    .unwrap_err();
    assert!(error.to_string().contains("no function nvme0"), "{error}");
    assert!(matches!(served.join().unwrap(), Served::Refused(_)));
    assert_eq!(src.mig_state().unwrap(), MigrationState::Running);
}

#[test]
fn an_incompatible_layout_is_refused_and_the_source_keeps_running() {
    let source = Device::new(0x10ff, 0x55);
    // Another device ID: another layout fingerprint.
    let destination = Device::new(0x10fe, 0x00);
    let (port, served) = agent(&destination);
    let mut src = source.connect();
    let link = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut observer = writer(&source);
    let error = migrate(
        &mut src,
        &mut RemoteDestination::new(link, "journal"),
        &Options::default(),
        &mut observer,
    )
    .unwrap_err();
    assert!(matches!(error, MigrateError::Destination(_)), "{error}");
    // The destination server's own reason reaches the source's operator.
    assert!(error.to_string().contains("vPCI layout"), "{error}");
    assert!(matches!(served.join().unwrap(), Served::Refused(_)));
    // Refused during the first pre-copy round: the source never stopped.
    assert!(
        !observer
            .progress
            .iter()
            .any(|p| matches!(p, Progress::StopCopy { .. }))
    );
    assert_eq!(src.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(destination.memory(), vec![0; PAGE * PAGES]);
    let mut dst = destination.connect();
    assert_eq!(dst.mig_state().unwrap(), MigrationState::Running);
}

/// A link that breaks after `left` bytes have been written.
struct Cut {
    inner: TcpStream,
    left: usize,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Cut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            self.inner.shutdown(std::net::Shutdown::Both)?;
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_link_cut_mid_stream_leaves_the_source_running_and_the_destination_unchanged() {
    let source = Device::new(0x10ff, 0x66);
    let destination = Device::new(0x10ff, 0x00);
    let (port, served) = agent(&destination);
    let mut src = source.connect();
    let link = Cut {
        inner: TcpStream::connect(("127.0.0.1", port)).unwrap(),
        left: 100_000,
    };
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    let error = migrate(
        &mut src,
        &mut RemoteDestination::new(link, "journal"),
        &options,
        &mut (),
    )
    .unwrap_err();
    assert!(matches!(error, MigrateError::Link(_)), "{error}");
    assert!(matches!(served.join().unwrap(), Served::Refused(_)));
    assert_eq!(src.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(destination.memory(), vec![0; PAGE * PAGES]);
    let mut dst = destination.connect();
    assert_eq!(dst.mig_state().unwrap(), MigrationState::Running);
}
