//! Migration data in sealed memfds (`mig_data_memfd`) over real vfio-user sockets: a state
//! moved through memfds between two servers arrives byte for byte, and every fd the server
//! must not trust is refused with an error reply, on a connection that keeps working, with no
//! fd left open and the device unchanged.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{MemfdFlags, SealFlags};
use vfio_variant::backend::{Function, FunctionError};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::{
    MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::migration_driver::{LocalDestination, Options, migrate};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::memfd::sealed_memfd;
use vfio_variant::vfio_user::mig_data::{MigDataMemfd, MigDataRead};
use vfio_variant::vfio_user::socket::{read_message, write_message};
use vfio_variant::vfio_user::{
    Capabilities, Client, ClientOptions, Command, Header, Limits, MigChunk, Payload,
};
use vfio_variant::vpci::{compile::compile, parse_layout};

const LAYOUT: &str = "[vpci]\nformat = 1\nname = \"bulk\"\nconfig_size = 256\n[identity]\n\
                      vendor_id = 0x1af4\ndevice_id = 0x10ff\nclass_code = 0xff0000\n";

/// Device state: 3 MiB and a bit, so that transfers span several memfds.
const STATE: usize = (3 << 20) + 4321;
/// The transfer size both sides agree on.
const XFER: u64 = 1 << 20;

/// Serializes the tests: they count this process's open fds.
static SERIAL: Mutex<()> = Mutex::new(());

/// A function whose device state is one buffer; `loads` counts the bytes it was given.
struct Bulk {
    memory: Arc<Mutex<Vec<u8>>>,
    cursor: Mutex<usize>,
    loaded: Arc<Mutex<usize>>,
}

impl Function for Bulk {
    fn reset(&self) -> Result<(), FunctionError> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for Bulk {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::STOP_COPY | MigrationFlags::P2P
    }
    fn transition(&self, _: MigrationState, _: MigrationState) -> Result<(), MigrationError> {
        *self.cursor.lock() = 0;
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        let mut cursor = self.cursor.lock();
        let memory = self.memory.lock();
        let n = (memory.len() - *cursor).min(buf.len());
        buf[..n].copy_from_slice(&memory[*cursor..*cursor + n]);
        *cursor += n;
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let mut cursor = self.cursor.lock();
        let mut memory = self.memory.lock();
        let end = *cursor + data.len();
        if end > memory.len() {
            return Err(MigrationError::InvalidData("too much state".into()));
        }
        memory[*cursor..end].copy_from_slice(data);
        *cursor = end;
        *self.loaded.lock() += data.len();
        Ok(())
    }
    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Err(MigrationError::Device("no pre-copy".into()))
    }
    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(STATE as u64)
    }
}

struct Served {
    client: Client,
    memory: Arc<Mutex<Vec<u8>>>,
    loaded: Arc<Mutex<usize>>,
    function: Arc<VirtualFunction>,
}

fn serve(memory: Vec<u8>, memfd: bool) -> Served {
    let template = Arc::new(compile(Arc::new(
        parse_layout("bulk", LAYOUT).expect("layout"),
    )));
    let memory = Arc::new(Mutex::new(memory));
    let loaded = Arc::new(Mutex::new(0));
    let bulk = Bulk {
        memory: Arc::clone(&memory),
        cursor: Mutex::new(0),
        loaded: Arc::clone(&loaded),
    };
    let function = Arc::new(VirtualFunction::new(template, Box::new(bulk)).expect("function"));
    let port = Port::new("bulk", Arc::clone(&function));
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || serve_connection(&port, &Arc::new(ServerConfig::default()), theirs));
    let options = ClientOptions {
        capabilities: Capabilities {
            max_data_xfer_size: Some(XFER),
            ..Capabilities::qemu_proposal()
        },
        mig_data_memfd: memfd,
        ..ClientOptions::default()
    };
    let client = Client::from_stream(ours, options).expect("negotiation");
    Served {
        client,
        memory,
        loaded,
        function,
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..STATE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_migration_through_memfds_moves_the_state_byte_for_byte() {
    let _serial = SERIAL.lock();
    let mut source = serve(pattern(7), true);
    let mut destination = serve(vec![0; STATE], true);
    assert!(source.client.negotiated().mig_data_memfd);
    assert!(destination.client.negotiated().mig_data_memfd);

    // A read answers with a sealed memfd, not inline bytes.
    source
        .client
        .set_mig_state(MigrationState::StopCopy)
        .unwrap();
    let mut buf = Vec::new();
    let chunk = source.client.mig_data_read_chunk(4096, &mut buf).unwrap();
    assert!(matches!(chunk, MigChunk::Sealed(_)), "{chunk:?}");
    drop(chunk);
    source
        .client
        .set_mig_state(MigrationState::Running)
        .unwrap();

    let before = open_fds();
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    let report = migrate(
        &mut source.client,
        &mut LocalDestination::new(&mut destination.client),
        &options,
        &mut (),
    )
    .expect("migration");
    assert!(report.stop_copy_bytes > STATE as u64);
    assert_eq!(*destination.loaded.lock(), STATE);
    assert!(*destination.memory.lock() == pattern(7), "state differs");
    assert_eq!(
        destination.function.migration_state(),
        MigrationState::Running
    );
    assert_eq!(open_fds(), before, "fds left open");
}

/// Sends MIG_DATA_WRITE (or `command`) with `payload` and `fds` on the client's socket and
/// returns the errno of the reply (0: success).
fn raw(client: &Client, id: u16, command: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> i32 {
    let stream = client.stream();
    write_message(
        stream,
        &Header::request(id, command, payload.len()),
        payload,
        fds,
    )
    .unwrap();
    let reply = read_message(stream, &Limits::default()).unwrap();
    assert_eq!(reply.header.msg_id, id);
    assert!(reply.fds.is_empty());
    if reply.header.is_error() {
        reply.header.errno()
    } else {
        0
    }
}

fn sealed(bytes: &[u8]) -> OwnedFd {
    sealed_memfd(bytes).unwrap()
}

fn memfd(bytes: &[u8], seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::io::write(&fd, bytes).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

#[test]
fn untrusted_fds_are_refused_and_the_connection_goes_on() {
    let _serial = SERIAL.lock();
    let source = pattern(3);
    let mut stream_bytes = {
        let mut s = serve(source.clone(), false);
        s.client.set_mig_state(MigrationState::StopCopy).unwrap();
        let mut all = Vec::new();
        loop {
            let part = s.client.mig_data_read(XFER as u32).unwrap();
            all.extend_from_slice(&part);
            if part.len() < XFER as usize {
                break;
            }
        }
        all
    };
    let first = stream_bytes.drain(..64 << 10).collect::<Vec<u8>>();

    let mut target = serve(vec![0; STATE], true);
    target
        .client
        .set_mig_state(MigrationState::Resuming)
        .unwrap();
    let before = open_fds();
    let fixed = |size: u32| MigDataMemfd::new(size).to_bytes();
    let size = first.len() as u32;
    let write = Command::MigDataWrite;
    {
        let c = &target.client;
        let all_seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
        // An unsealed memfd, and ones missing one seal each.
        let unsealed = memfd(&first, SealFlags::empty());
        assert_eq!(
            raw(c, 0x7000, write, &fixed(size), &[unsealed.as_fd()]),
            libc::EINVAL
        );
        for missing in [
            SealFlags::WRITE,
            SealFlags::SHRINK,
            SealFlags::GROW,
            SealFlags::SEAL,
        ] {
            let fd = memfd(&first, all_seals - missing);
            assert_eq!(
                raw(c, 0x7001, write, &fixed(size), &[fd.as_fd()]),
                libc::EINVAL,
                "without {missing:?}"
            );
        }
        // A regular file, and a socket.
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(
            raw(c, 0x7002, write, &fixed(size), &[file.as_fd()]),
            libc::EINVAL
        );
        let (socket, _peer) = UnixStream::pair().unwrap();
        assert_eq!(
            raw(c, 0x7003, write, &fixed(size), &[socket.as_fd()]),
            libc::EINVAL
        );
        // A sealed memfd of another size than stated, and one above the bound.
        let good = sealed(&first);
        assert_eq!(
            raw(c, 0x7004, write, &fixed(size + 1), &[good.as_fd()]),
            libc::EINVAL
        );
        assert_eq!(
            raw(c, 0x7005, write, &fixed(size - 1), &[good.as_fd()]),
            libc::EINVAL
        );
        let big = sealed(&vec![0; XFER as usize + 1]);
        assert_eq!(
            raw(c, 0x7006, write, &fixed(XFER as u32 + 1), &[big.as_fd()]),
            libc::E2BIG
        );
        // Two fds; inline bytes beside the memfd.
        let other = sealed(&first);
        assert_eq!(
            raw(
                c,
                0x7007,
                write,
                &fixed(size),
                &[good.as_fd(), other.as_fd()]
            ),
            libc::EINVAL
        );
        let mut inline = fixed(size);
        inline.extend_from_slice(&first);
        assert_eq!(
            raw(c, 0x7008, write, &inline, &[good.as_fd()]),
            libc::EINVAL
        );
        // An fd where none is allowed: with MIG_DATA_READ.
        let read = MigDataRead::new(4096).to_bytes();
        assert_ne!(
            raw(c, 0x7009, Command::MigDataRead, &read, &[good.as_fd()]),
            0
        );
    }
    // Nothing reached the device, and every fd sent was closed by the server.
    assert_eq!(*target.loaded.lock(), 0);
    assert_eq!(target.function.migration_state(), MigrationState::Resuming);
    assert_eq!(open_fds(), before, "fds left open");

    // The connection goes on: the real stream, its first piece in a good memfd, loads.
    let good = sealed(&first);
    assert_eq!(
        raw(&target.client, 0x700a, write, &fixed(size), &[good.as_fd()]),
        0
    );
    drop(good);
    target.client.mig_data_write(&stream_bytes).unwrap();
    target
        .client
        .set_mig_state(MigrationState::Running)
        .unwrap();
    assert!(*target.memory.lock() == source, "state differs");
}

#[test]
fn a_connection_that_did_not_ask_refuses_memfds() {
    let _serial = SERIAL.lock();
    let mut target = serve(pattern(1), false);
    assert!(!target.client.negotiated().mig_data_memfd);
    let before = open_fds();
    // An fd with MIG_DATA_READ is refused; the next read works, inline.
    target
        .client
        .set_mig_state(MigrationState::StopCopy)
        .unwrap();
    let good = sealed(&[1; 4096]);
    let read = MigDataRead::new(4096).to_bytes();
    assert_eq!(
        raw(
            &target.client,
            0x7100,
            Command::MigDataRead,
            &read,
            &[good.as_fd()]
        ),
        libc::EINVAL
    );
    let mut buf = Vec::new();
    let chunk = target.client.mig_data_read_chunk(4096, &mut buf).unwrap();
    assert!(matches!(chunk, MigChunk::Inline(ref r) if r.len() == 4096));
    // A memfd with MIG_DATA_WRITE is refused without `mig_data_memfd`.
    target.client.set_mig_state(MigrationState::Stop).unwrap();
    target
        .client
        .set_mig_state(MigrationState::Resuming)
        .unwrap();
    assert_eq!(
        raw(
            &target.client,
            0x7101,
            Command::MigDataWrite,
            &MigDataMemfd::new(4096).to_bytes(),
            &[good.as_fd()]
        ),
        libc::EINVAL
    );
    drop(good);
    assert_eq!(*target.loaded.lock(), 0);
    assert_eq!(target.function.migration_state(), MigrationState::Resuming);
    assert_eq!(open_fds(), before, "fds left open");
}

#[test]
fn a_transport_that_cannot_pass_fds_never_agrees() {
    let _serial = SERIAL.lock();
    // The server's end of a TCP connection, served as if it were a Unix socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let template = Arc::new(compile(Arc::new(
        parse_layout("bulk", LAYOUT).expect("layout"),
    )));
    let bulk = Bulk {
        memory: Arc::new(Mutex::new(vec![0; 16])),
        cursor: Mutex::new(0),
        loaded: Arc::new(Mutex::new(0)),
    };
    let function = Arc::new(VirtualFunction::new(template, Box::new(bulk)).expect("function"));
    let port = Port::new("bulk", function);
    let server = UnixStream::from(OwnedFd::from(server));
    std::thread::spawn(move || serve_connection(&port, &Arc::new(ServerConfig::default()), server));
    let options = ClientOptions {
        mig_data_memfd: true,
        ..ClientOptions::default()
    };
    let client = Client::from_stream(UnixStream::from(OwnedFd::from(client)), options)
        .expect("negotiation over TCP");
    assert!(!client.negotiated().mig_data_memfd);
}
