//! DMA dirty logging and PRECOPY_INFO over real vfio-user sockets: a function whose DMA goes
//! through the server's DMA table (mapped with an fd, and by DMA_WRITE message), plus a
//! device-side tracker; reports are read-and-clear, and every refusal leaves the connection
//! working.

use std::io::Write;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionContext, FunctionError};
use vfio_variant::device::{CONFIG_REGION, VirtualFunction};
use vfio_variant::migration::{
    DirtyTracker, MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags};
use vfio_variant::vfio_user::feature::{
    DeviceFeature, DmaLoggingRange, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_PRECOPY_INFO, FeatureOps,
};
use vfio_variant::vfio_user::version::MigrationCapability;
use vfio_variant::vfio_user::{
    Capabilities, Client, ClientError, ClientOptions, DmaHandler, Payload,
};
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::parse_layout;

const LAYOUT: &str = r#"
[vpci]
format = 1
name = "dma-writer"
config_size = 256
[identity]
vendor_id = 0x1af4
device_id = 0x10fe
class_code = 0xff0000
[[bar]]
index = 0
kind = "mem32"
size = "4K"
backing = "emulated"
"#;

const P: u64 = 4096;
/// Guest memory mapped with an fd: 1 MiB at 1 MiB.
const MAPPED: u64 = 0x10_0000;
const MAPPED_SIZE: u64 = 0x10_0000;
/// Guest memory reached by DMA_READ/DMA_WRITE messages: 64 KiB at 2 MiB.
const REMOTE: u64 = 0x20_0000;
const REMOTE_SIZE: u64 = 0x1_0000;

/// BAR0 register: writing an address makes the device write [`PATTERN`] there.
const REG_WRITE: u64 = 0;
/// BAR0 register: writing an address makes the device copy 16 bytes from it to 2 pages on.
const REG_COPY: u64 = 4;
const PATTERN: &[u8; 8] = b"dirtied!";

/// What the device-side tracker saw and will report.
#[derive(Default)]
struct TrackerLog {
    started: Vec<(u64, Vec<Range<u64>>)>,
    stops: usize,
    /// Pages the device "wrote" on its own, reported (and forgotten) by the next report.
    dirty: Vec<u64>,
}

#[derive(Default)]
struct Inner {
    context: OnceLock<FunctionContext>,
    tracker: Mutex<TrackerLog>,
    /// Device state not yet saved during pre-copy.
    unsaved: Mutex<usize>,
}

struct Writer {
    migratable: bool,
    inner: Arc<Inner>,
}

impl Function for Writer {
    fn attach(&self, context: FunctionContext) {
        let _ = self.inner.context.set(context);
    }
    fn bar_read(&self, _: u8, _: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        data.fill(0);
        Ok(())
    }
    fn bar_write(&self, _: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let bytes: [u8; 4] = data
            .try_into()
            .map_err(|_| FunctionError::BadAccess("4-byte registers".into()))?;
        let address = u64::from(u32::from_le_bytes(bytes));
        let dma = &self
            .inner
            .context
            .get()
            .ok_or_else(|| FunctionError::Device("not attached".into()))?
            .dma;
        let result = match offset {
            REG_WRITE => dma.write(address, PATTERN),
            REG_COPY => dma.copy(address, address + 2 * P, 16),
            _ => return Err(FunctionError::BadAccess(format!("{offset:#x}"))),
        };
        result.map_err(|e| FunctionError::Device(e.to_string()))
    }
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.migratable.then_some(self as &dyn MigrationHooks)
    }
}

impl MigrationHooks for Writer {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::all()
    }
    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        if (from, to) == (MigrationState::Running, MigrationState::PreCopy) {
            *self.inner.unsaved.lock() = 100;
        }
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut unsaved = self.inner.unsaved.lock();
        let n = (*unsaved).min(buf.len());
        buf[..n].fill(0xab);
        *unsaved -= n;
        Ok(n)
    }
    fn load(&self, _: &[u8]) -> Result<(), MigrationError> {
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Ok(PrecopyInfo {
            initial_bytes: *self.inner.unsaved.lock() as u64,
            dirty_bytes: 7,
        })
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(100)
    }
    fn dirty_tracker(&self) -> Option<&dyn DirtyTracker> {
        Some(self)
    }
}

impl DirtyTracker for Writer {
    fn start(&self, page_size: u64, ranges: &[Range<u64>]) -> Result<u64, MigrationError> {
        self.inner
            .tracker
            .lock()
            .started
            .push((page_size, ranges.to_vec()));
        Ok(page_size)
    }
    fn report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), MigrationError> {
        let mut log = self.inner.tracker.lock();
        log.dirty.retain(|&page| {
            if page < iova || page >= iova + length {
                return true;
            }
            let bit = (page - iova) / page_size;
            bitmap[(bit / 64) as usize] |= 1 << (bit % 64);
            false
        });
        Ok(())
    }
    fn stop(&self) {
        self.inner.tracker.lock().stops += 1;
    }
}

/// Client memory without an fd.
struct RemoteMemory(Arc<Mutex<Vec<u8>>>);

impl DmaHandler for RemoteMemory {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        let memory = self.0.lock();
        let at = address.checked_sub(REMOTE).ok_or(libc::EFAULT)? as usize;
        buf.copy_from_slice(memory.get(at..at + buf.len()).ok_or(libc::EFAULT)?);
        Ok(())
    }
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        let mut memory = self.0.lock();
        let at = address.checked_sub(REMOTE).ok_or(libc::EFAULT)? as usize;
        memory
            .get_mut(at..at + data.len())
            .ok_or(libc::EFAULT)?
            .copy_from_slice(data);
        Ok(())
    }
}

struct Served {
    port: Arc<Port>,
    inner: Arc<Inner>,
}

impl Served {
    fn new(migratable: bool) -> Self {
        let template = Arc::new(compile(Arc::new(parse_layout("t", LAYOUT).unwrap())));
        let inner = Arc::new(Inner::default());
        let writer = Writer {
            migratable,
            inner: Arc::clone(&inner),
        };
        let function = Arc::new(VirtualFunction::new(template, Box::new(writer)).unwrap());
        Self {
            port: Port::new("writer", function),
            inner,
        }
    }

    fn connect_with(&self, options: ClientOptions) -> (Client, JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let port = Arc::clone(&self.port);
        let server = std::thread::spawn(move || {
            serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
        });
        (Client::from_stream(ours, options).unwrap(), server)
    }

    fn connect(&self) -> (Client, JoinHandle<()>) {
        self.connect_with(ClientOptions::default())
    }

    fn tracker<R>(&self, f: impl FnOnce(&mut TrackerLog) -> R) -> R {
        f(&mut self.inner.tracker.lock())
    }
}

fn memfd(len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(&vec![0u8; len as usize]).unwrap();
    file.into()
}

/// Maps the guest memory and turns on memory decoding and bus mastering; returns the fd
/// of the mapped part and the remote part's memory.
fn set_up(client: &mut Client) -> (OwnedFd, Arc<Mutex<Vec<u8>>>) {
    let fd = memfd(MAPPED_SIZE);
    let rw = DmaMapFlags::READ | DmaMapFlags::WRITE;
    client
        .dma_map(&DmaMap::new(MAPPED, MAPPED_SIZE, 0, rw), Some(fd.as_fd()))
        .unwrap();
    client
        .dma_map(&DmaMap::new(REMOTE, REMOTE_SIZE, 0, rw), None)
        .unwrap();
    let remote = Arc::new(Mutex::new(vec![0u8; REMOTE_SIZE as usize]));
    client.set_dma_handler(Box::new(RemoteMemory(Arc::clone(&remote))));
    client.region_write(CONFIG_REGION, 4, &[0x06, 0]).unwrap();
    (fd, remote)
}

fn device_write(client: &mut Client, register: u64, address: u64) {
    client
        .region_write(0, register, &(address as u32).to_le_bytes())
        .unwrap();
}

fn ranges() -> [DmaLoggingRange; 2] {
    [
        DmaLoggingRange {
            iova: MAPPED,
            length: MAPPED_SIZE,
        },
        DmaLoggingRange {
            iova: REMOTE,
            length: REMOTE_SIZE,
        },
    ]
}

fn errno<T: std::fmt::Debug>(result: Result<T, ClientError>) -> i32 {
    result.unwrap_err().errno()
}

/// Bit numbers set in `bitmap`.
fn bits(bitmap: &[u64]) -> Vec<u64> {
    (0..bitmap.len() as u64 * 64)
        .filter(|&i| bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0)
        .collect()
}

#[test]
fn framework_and_device_writes_are_reported_once() {
    let served = Served::new(true);
    let (mut client, server) = served.connect();
    assert_eq!(
        client.negotiated().migration,
        Some(MigrationCapability {
            pgsize: Some(4096),
            max_bitmap_size: Some(256 << 20),
        })
    );
    for (feature, ops) in [
        (FEATURE_DMA_LOGGING_START, FeatureOps::SET),
        (FEATURE_DMA_LOGGING_STOP, FeatureOps::SET),
        (FEATURE_DMA_LOGGING_REPORT, FeatureOps::GET),
    ] {
        client.feature_probe(feature, ops).unwrap();
    }
    assert_eq!(
        errno(client.feature_probe(FEATURE_DMA_LOGGING_REPORT, FeatureOps::SET)),
        libc::EINVAL
    );
    let (fd, remote) = set_up(&mut client);

    // Before START nothing is logged.
    device_write(&mut client, REG_WRITE, MAPPED + 10 * P);
    assert_eq!(
        errno(client.dma_logging_report(MAPPED, MAPPED_SIZE, P)),
        libc::EINVAL
    );

    assert_eq!(client.dma_logging_start(P, &ranges()).unwrap(), P);
    assert_eq!(
        served.tracker(|t| t.started.clone()),
        vec![(
            P,
            vec![MAPPED..MAPPED + MAPPED_SIZE, REMOTE..REMOTE + REMOTE_SIZE]
        )]
    );
    device_write(&mut client, REG_WRITE, MAPPED + 3 * P + 4090); // pages 3 and 4
    device_write(&mut client, REG_WRITE, REMOTE + P); // by DMA_WRITE message
    device_write(&mut client, REG_COPY, MAPPED + 3 * P + 4090); // destination: pages 5, 6
    served.tracker(|t| t.dirty.extend([MAPPED + 200 * P, REMOTE + 15 * P]));

    let mapped = client.dma_logging_report(MAPPED, MAPPED_SIZE, P).unwrap();
    assert_eq!(mapped.len(), 4);
    assert_eq!(bits(&mapped), vec![3, 4, 5, 6, 200]);
    let far = client.dma_logging_report(REMOTE, REMOTE_SIZE, P).unwrap();
    assert_eq!(bits(&far), vec![1, 15]);
    // Read and clear.
    assert_eq!(
        bits(&client.dma_logging_report(MAPPED, MAPPED_SIZE, P).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        bits(&client.dma_logging_report(REMOTE, REMOTE_SIZE, P).unwrap()),
        Vec::<u64>::new()
    );
    // The writes did land.
    assert_eq!(&remote.lock()[P as usize..P as usize + 8], PATTERN);
    let guest = std::fs::File::from(fd);
    let mut copied = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&guest, &mut copied, 5 * P + 4090).unwrap();
    assert_eq!(&copied, PATTERN);

    // A report of part of a range leaves the rest.
    device_write(&mut client, REG_WRITE, MAPPED + 70 * P);
    device_write(&mut client, REG_WRITE, MAPPED + 130 * P);
    assert_eq!(
        bits(
            &client
                .dma_logging_report(MAPPED + 64 * P, 64 * P, P)
                .unwrap()
        ),
        vec![6]
    );
    assert_eq!(
        bits(&client.dma_logging_report(MAPPED, MAPPED_SIZE, P).unwrap()),
        vec![130]
    );

    client.dma_logging_stop().unwrap();
    assert_eq!(served.tracker(|t| t.stops), 1);
    device_write(&mut client, REG_WRITE, MAPPED);
    assert_eq!(
        errno(client.dma_logging_report(MAPPED, MAPPED_SIZE, P)),
        libc::EINVAL
    );
    // STOP without a session is not an error, as with Linux's drivers.
    client.dma_logging_stop().unwrap();
    assert_eq!(served.tracker(|t| t.stops), 1);
    drop(client);
    server.join().unwrap();
}

#[test]
fn refusals_leave_the_connection_working() {
    let served = Served::new(true);
    let (mut client, server) = served.connect();
    fn still_works(client: &mut Client) {
        assert_eq!(client.mig_state().unwrap(), MigrationState::Running);
    }
    let start = |client: &mut Client, page_size, ranges: &[(u64, u64)]| {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(iova, length)| DmaLoggingRange { iova, length })
            .collect();
        client.dma_logging_start(page_size, &ranges)
    };
    // Overlapping ranges, no ranges, misaligned ones, a page size of 0.
    assert_eq!(
        errno(start(&mut client, P, &[(0, 4 * P), (3 * P, 4 * P)])),
        libc::EINVAL
    );
    assert_eq!(errno(start(&mut client, P, &[])), libc::EINVAL);
    assert_eq!(errno(start(&mut client, P, &[(100, P)])), libc::EINVAL);
    assert_eq!(errno(start(&mut client, 0, &[(0, P)])), libc::EINVAL);
    assert_eq!(served.tracker(|t| t.started.len()), 0);
    still_works(&mut client);

    // 300 ranges are fine; a page size below 4 KiB is rounded up and said so.
    let many: Vec<_> = (0..300u64).map(|i| (i * 2 * P, P)).collect();
    assert_eq!(start(&mut client, 512, &many).unwrap(), P);
    // One session at a time.
    assert_eq!(errno(start(&mut client, P, &[(0, P)])), libc::EBUSY);
    still_works(&mut client);

    // Reports outside the ranges, across a gap, with another page size, unaligned.
    assert_eq!(errno(client.dma_logging_report(P, P, P)), libc::EINVAL);
    assert_eq!(errno(client.dma_logging_report(0, 3 * P, P)), libc::EINVAL);
    assert_eq!(
        errno(client.dma_logging_report(0, 2 * P, 2 * P)),
        libc::EINVAL
    );
    assert_eq!(errno(client.dma_logging_report(1, P, P)), libc::EINVAL);
    still_works(&mut client);

    // A request whose argsz leaves no room for the bitmap.
    let report = DmaLoggingReport {
        iova: 0,
        length: 128 * P,
        page_size: P,
    };
    let short = DeviceFeature {
        data: report.to_bytes(),
        ..DeviceFeature::get(FEATURE_DMA_LOGGING_REPORT, 24 + 8)
    };
    assert_eq!(errno(client.device_feature(&short)), libc::EINVAL);
    // A bitmap above the negotiated max_bitmap_size (256 MiB): refused before any work.
    let huge = DmaLoggingReport {
        iova: 0,
        length: 1 << 55,
        page_size: P,
    };
    let huge = DeviceFeature {
        data: huge.to_bytes(),
        ..DeviceFeature::get(FEATURE_DMA_LOGGING_REPORT, usize::MAX)
    };
    assert_eq!(errno(client.device_feature(&huge)), libc::E2BIG);
    // A truncated START.
    let truncated = DeviceFeature::set(FEATURE_DMA_LOGGING_START, vec![0; 12]);
    assert_eq!(errno(client.device_feature(&truncated)), libc::EINVAL);
    still_works(&mut client);
    assert_eq!(
        bits(&client.dma_logging_report(0, P, P).unwrap()),
        Vec::<u64>::new()
    );

    // The session ends with the client: a new one may start.
    drop(client);
    server.join().unwrap();
    assert_eq!(served.tracker(|t| t.stops), 1);
    let (mut client, server) = served.connect();
    assert_eq!(start(&mut client, P, &[(0, P)]).unwrap(), P);
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_small_max_bitmap_size_bounds_reports() {
    let served = Served::new(true);
    let mut capabilities = Capabilities::qemu_proposal();
    capabilities.migration = Some(MigrationCapability {
        pgsize: Some(4096),
        max_bitmap_size: Some(64),
    });
    let (mut client, server) = served.connect_with(ClientOptions {
        capabilities,
        ..ClientOptions::default()
    });
    client
        .dma_logging_start(
            P,
            &[DmaLoggingRange {
                iova: 0,
                length: 1 << 30,
            }],
        )
        .unwrap();
    // 512 pages: 64 bytes of bitmap, the most negotiated.
    assert_eq!(client.dma_logging_report(0, 512 * P, P).unwrap().len(), 8);
    let over = DmaLoggingReport {
        iova: 0,
        length: 513 * P,
        page_size: P,
    };
    let over = DeviceFeature {
        data: over.to_bytes(),
        ..DeviceFeature::get(FEATURE_DMA_LOGGING_REPORT, 1 << 20)
    };
    assert_eq!(errno(client.device_feature(&over)), libc::E2BIG);
    assert_eq!(client.mig_state().unwrap(), MigrationState::Running);
    drop(client);
    server.join().unwrap();
}

#[test]
fn functions_without_migration_have_no_logging() {
    let served = Served::new(false);
    let (mut client, server) = served.connect();
    assert_eq!(client.negotiated().migration, None);
    assert_eq!(errno(client.dma_logging_start(P, &ranges())), libc::ENOTTY);
    assert_eq!(
        errno(client.feature_probe(FEATURE_DMA_LOGGING_REPORT, FeatureOps::GET)),
        libc::ENOTTY
    );
    assert_eq!(errno(client.precopy_info()), libc::ENOTTY);
    drop(client);
    server.join().unwrap();
}

#[test]
fn precopy_info_only_in_pre_copy() {
    let served = Served::new(true);
    let (mut client, server) = served.connect();
    client
        .feature_probe(FEATURE_PRECOPY_INFO, FeatureOps::GET)
        .unwrap();
    assert_eq!(
        errno(client.feature_probe(FEATURE_PRECOPY_INFO, FeatureOps::SET)),
        libc::EINVAL
    );
    assert_eq!(errno(client.precopy_info()), libc::EINVAL);

    client.set_mig_state(MigrationState::PreCopy).unwrap();
    let before = client.precopy_info().unwrap();
    // The header record and 100 device bytes in one framed record.
    assert!(before.initial_bytes > 100 + 20, "{before:?}");
    assert_eq!(before.dirty_bytes, 7 + 20);
    let first = client.mig_data_read(40).unwrap();
    assert_eq!(first.len(), 40);
    let during = client.precopy_info().unwrap();
    assert_eq!(during.initial_bytes, before.initial_bytes - 40);
    // Read what there is: the initial state is all read.
    while client.mig_data_read(64).unwrap().len() == 64 {}
    assert_eq!(client.precopy_info().unwrap().initial_bytes, 0);

    client.set_mig_state(MigrationState::PreCopyP2p).unwrap();
    client.precopy_info().unwrap();
    // Too small an argsz for the 16 bytes.
    let short = DeviceFeature::get(FEATURE_PRECOPY_INFO, 8);
    assert_eq!(errno(client.device_feature(&short)), libc::EINVAL);
    client.set_mig_state(MigrationState::StopCopy).unwrap();
    assert_eq!(errno(client.precopy_info()), libc::EINVAL);
    assert_eq!(client.mig_state().unwrap(), MigrationState::StopCopy);
    drop(client);
    server.join().unwrap();
}
