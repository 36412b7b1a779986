//! Migration over real vfio-user sockets: a small migratable function saved on one port and
//! resumed on another, and every refusal leaving the device as it was or in ERROR.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::feature::{
    FEATURE_DMA_LOGGING_START, FEATURE_MIG_DEVICE_STATE, FEATURE_MIGRATION, FeatureOps,
};
use vfio_variant::vfio_user::{Client, ClientError, ClientOptions};
use vfio_variant::vpci::compile::compile;
use vfio_variant::vpci::parse_layout;

const LAYOUT: &str = r#"
[vpci]
format = 1
name = "counter"
config_size = 256
[identity]
vendor_id = 0x1af4
device_id = 0x10ff
class_code = 0xff0000
"#;

/// The device: a 64-bit value, saved as 8 little-endian bytes; what the test observes.
#[derive(Default)]
struct Inner {
    value: u64,
    saved: usize,
    loading: Vec<u8>,
    loads: usize,
    arcs: Vec<(MigrationState, MigrationState)>,
}

struct Counter {
    migratable: bool,
    inner: Arc<Mutex<Inner>>,
}

impl Function for Counter {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        self.migratable.then_some(self as &dyn MigrationHooks)
    }
}

impl MigrationHooks for Counter {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::all()
    }
    fn transition(&self, from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        let mut inner = self.inner.lock();
        inner.arcs.push((from, to));
        match (from, to) {
            (MigrationState::Running, MigrationState::PreCopy)
            | (MigrationState::Stop, MigrationState::StopCopy) => inner.saved = 0,
            (MigrationState::Stop, MigrationState::Resuming) => inner.loading.clear(),
            (MigrationState::Resuming, MigrationState::Stop) => {
                let bytes: [u8; 8] = inner.loading.as_slice().try_into().map_err(|_| {
                    MigrationError::InvalidData(format!("{} bytes", inner.loading.len()))
                })?;
                inner.value = u64::from_le_bytes(bytes);
            }
            _ => {}
        }
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut inner = self.inner.lock();
        let state = inner.value.to_le_bytes();
        let n = (state.len() - inner.saved).min(buf.len());
        buf[..n].copy_from_slice(&state[inner.saved..inner.saved + n]);
        inner.saved += n;
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut inner = self.inner.lock();
        inner.loads += 1;
        inner.loading.extend_from_slice(data);
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Ok(PrecopyInfo::default())
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(8)
    }
}

struct Served {
    port: Arc<Port>,
    inner: Arc<Mutex<Inner>>,
}

impl Served {
    fn new(migratable: bool, value: u64) -> Self {
        let template = Arc::new(compile(Arc::new(parse_layout("t", LAYOUT).unwrap())));
        let inner = Arc::new(Mutex::new(Inner {
            value,
            ..Inner::default()
        }));
        let counter = Counter {
            migratable,
            inner: Arc::clone(&inner),
        };
        let function = Arc::new(VirtualFunction::new(template, Box::new(counter)).unwrap());
        let port = Port::new("counter", function);
        Self { port, inner }
    }

    fn connect(&self) -> (Client, JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let port = Arc::clone(&self.port);
        let server = std::thread::spawn(move || {
            serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
        });
        (
            Client::from_stream(ours, ClientOptions::default()).unwrap(),
            server,
        )
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock())
    }
}

fn errno(e: ClientError) -> i32 {
    e.errno()
}

fn read_all(client: &mut Client) -> Vec<u8> {
    let mut stream = Vec::new();
    loop {
        let part = client.mig_data_read(16).unwrap();
        let short = part.len() < 16;
        stream.extend_from_slice(&part);
        if short {
            return stream;
        }
    }
}

#[test]
fn functions_without_migration_answer_enotty() {
    let served = Served::new(false, 1);
    let (mut client, server) = served.connect();
    assert_eq!(errno(client.migration_flags().unwrap_err()), libc::ENOTTY);
    assert_eq!(errno(client.mig_state().unwrap_err()), libc::ENOTTY);
    assert_eq!(errno(client.mig_data_read(16).unwrap_err()), libc::ENOTTY);
    assert_eq!(
        errno(client.mig_data_write(&[1]).unwrap_err()),
        libc::ENOTTY
    );
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_function_migrates_between_ports() {
    let source = Served::new(true, 0x1122_3344_5566_7788);
    let (mut client, server) = source.connect();
    assert_eq!(client.migration_flags().unwrap(), MigrationFlags::all());
    client
        .feature_probe(FEATURE_MIG_DEVICE_STATE, FeatureOps::GET | FeatureOps::SET)
        .unwrap();
    assert_eq!(
        errno(
            client
                .feature_probe(FEATURE_MIGRATION, FeatureOps::SET)
                .unwrap_err()
        ),
        libc::EINVAL
    );
    // DMA logging comes with migration (tests/dirty_logging.rs); START is SET only.
    client
        .feature_probe(FEATURE_DMA_LOGGING_START, FeatureOps::SET)
        .unwrap();
    assert_eq!(
        errno(
            client
                .feature_probe(FEATURE_DMA_LOGGING_START, FeatureOps::GET)
                .unwrap_err()
        ),
        libc::EINVAL
    );
    assert_eq!(client.mig_state().unwrap(), MigrationState::Running);
    // Not saving: no data to read.
    assert_eq!(errno(client.mig_data_read(16).unwrap_err()), libc::EINVAL);
    assert!(client.mig_data_size().unwrap() > 8);

    client.set_mig_state(MigrationState::PreCopy).unwrap();
    client.set_mig_state(MigrationState::StopCopy).unwrap();
    assert_eq!(client.mig_state().unwrap(), MigrationState::StopCopy);
    // The blocked arc: refused, nothing changes.
    assert_eq!(
        errno(client.set_mig_state(MigrationState::PreCopy).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(client.mig_state().unwrap(), MigrationState::StopCopy);
    let stream = read_all(&mut client);
    assert_eq!(client.mig_data_read(16).unwrap(), Vec::<u8>::new());
    client.set_mig_state(MigrationState::Stop).unwrap();
    assert_eq!(
        source.with(|i| i.arcs.clone()),
        vec![
            (MigrationState::Running, MigrationState::PreCopy),
            (MigrationState::PreCopy, MigrationState::PreCopyP2p),
            (MigrationState::PreCopyP2p, MigrationState::StopCopy),
            (MigrationState::StopCopy, MigrationState::Stop),
        ]
    );
    drop(client);
    server.join().unwrap();

    // The state outlives the connection.
    let (mut client, server) = source.connect();
    assert_eq!(client.mig_state().unwrap(), MigrationState::Stop);
    drop(client);
    server.join().unwrap();

    let dest = Served::new(true, 0);
    let (mut client, server) = dest.connect();
    assert_eq!(
        errno(client.mig_data_write(&stream).unwrap_err()),
        libc::EINVAL
    );
    client.set_mig_state(MigrationState::Resuming).unwrap();
    client.mig_data_write(&stream[..10]).unwrap();
    client.mig_data_write(&stream[10..]).unwrap();
    client.set_mig_state(MigrationState::Running).unwrap();
    assert_eq!(dest.with(|i| i.value), 0x1122_3344_5566_7788);
    drop(client);
    server.join().unwrap();
}

fn saved_stream() -> Vec<u8> {
    let source = Served::new(true, 42);
    let (mut client, server) = source.connect();
    client.set_mig_state(MigrationState::StopCopy).unwrap();
    let stream = read_all(&mut client);
    drop(client);
    server.join().unwrap();
    stream
}

#[test]
fn bad_streams_are_never_committed() {
    let stream = saved_stream();
    let dest = Served::new(true, 7);
    let (mut client, server) = dest.connect();

    // A corrupt byte: the write is refused at once.
    client.set_mig_state(MigrationState::Resuming).unwrap();
    let mut corrupt = stream.clone();
    let last = corrupt.len() - 30;
    corrupt[last] ^= 0xff;
    assert_eq!(
        errno(client.mig_data_write(&corrupt).unwrap_err()),
        libc::EINVAL
    );
    // The errno says little; MIGRATION_ERROR says what was wrong.
    let reason = client.migration_error().unwrap();
    assert!(reason.contains("checksum"), "{reason}");
    // Leaving RESUMING with it fails the arc: ERROR, and the device never committed what
    // reached it before the bad record.
    assert_eq!(
        errno(client.set_mig_state(MigrationState::Stop).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(client.mig_state().unwrap(), MigrationState::Error);
    assert_eq!(
        errno(client.set_mig_state(MigrationState::Running).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(dest.with(|i| i.value), 7);
    assert!(!dest.with(|i| {
        i.arcs
            .contains(&(MigrationState::Resuming, MigrationState::Stop))
    }));

    // Only reset leaves ERROR, and forgets the refusal.
    client.reset().unwrap();
    assert_eq!(client.mig_state().unwrap(), MigrationState::Running);
    assert_eq!(client.migration_error().unwrap(), "");

    // A stream that ends early is not applied either.
    client.set_mig_state(MigrationState::Resuming).unwrap();
    client.mig_data_write(&stream[..stream.len() - 1]).unwrap();
    assert_eq!(
        errno(client.set_mig_state(MigrationState::Running).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(client.mig_state().unwrap(), MigrationState::Error);
    assert_eq!(dest.with(|i| i.value), 7);

    // A bad header (here: its checksum) is refused before any data reaches the device.
    client.reset().unwrap();
    let loads = dest.with(|i| i.loads);
    client.set_mig_state(MigrationState::Resuming).unwrap();
    let mut bad_header = stream.clone();
    bad_header[20] ^= 0xff;
    assert_eq!(
        errno(client.mig_data_write(&bad_header).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(dest.with(|i| (i.loads, i.value)), (loads, 7));
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_malformed_large_mig_data_write_is_refused_and_the_connection_goes_on() {
    use vfio_variant::vfio_user::{Command, Header, Limits, read_message, write_message};

    let stream = saved_stream();
    let dest = Served::new(true, 7);
    let (mut client, server) = dest.connect();
    client.set_mig_state(MigrationState::Resuming).unwrap();
    // Larger than the server's read buffer (it goes to the reused payload memory), its size
    // field claiming more than the message carries.
    let data = vec![0xee_u8; 200 << 10];
    let mut payload = Vec::new();
    payload.extend_from_slice(&8u32.to_ne_bytes());
    payload.extend_from_slice(&(data.len() as u32 + 1).to_ne_bytes());
    payload.extend_from_slice(&data);
    let header = Header::request(0x7777, Command::MigDataWrite, payload.len());
    write_message(client.stream(), &header, &payload, &[]).unwrap();
    let reply = read_message(client.stream(), &Limits::default()).unwrap();
    assert_eq!(reply.header.msg_id, 0x7777);
    assert!(reply.header.is_error());
    assert_eq!(reply.header.error, libc::EINVAL as u32);
    assert_eq!(dest.with(|i| (i.loads, i.value)), (0, 7));
    assert_eq!(client.mig_state().unwrap(), MigrationState::Resuming);

    // The stream that follows, on the same connection, is taken whole.
    client.mig_data_write(&stream).unwrap();
    client.set_mig_state(MigrationState::Running).unwrap();
    assert_eq!(dest.with(|i| i.value), 42);
    drop(client);
    server.join().unwrap();
}
