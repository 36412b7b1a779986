//! Migration data through one shared buffer (`mig_data_shared`) over real vfio-user sockets:
//! a state moved between two servers that share one registered buffer arrives byte for
//! byte, and every buffer, offset or size the server must not trust is refused with an error
//! reply, on a connection that keeps working, with the device unchanged, no fd left open and
//! no mapping left once the connection ends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

#[path = "common/bulk.rs"]
mod bulk;
use bulk::Bulk;
use rustix::fs::{MemfdFlags, SealFlags};
use vfio_variant::device::VirtualFunction;
use vfio_variant::migration::MigrationState;
use vfio_variant::migration_driver::{
    LocalDestination, Options, PIPELINE_SLOTS, Report, migrate, share_buffer,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::feature::{
    DeviceFeature, FEATURE_MIG_DATA_BUFFER, FeatureOps, MigDataBufferSize,
};
use vfio_variant::vfio_user::mig_data::{MigDataRead, MigDataShared, MigDataWrite};
use vfio_variant::vfio_user::shared_buf::{MAX_TRANSFERS_PER_BUFFER, SHARED_SEALS, SharedBuffer};
use vfio_variant::vfio_user::socket::{read_message, write_message};
use vfio_variant::vfio_user::{
    Capabilities, Client, ClientError, ClientOptions, Command, Header, Limits, MAX_MIG_DATA_AHEAD,
    Payload,
};

/// Device state: 3 MiB and a bit, so that a migration's chunks use every part of the buffer.
const STATE: usize = (3 << 20) + 4321;
/// The transfer size both sides agree on; the buffer holds two.
const XFER: u64 = 1 << 20;

/// Serializes the tests: they count this process's open fds and mappings.
static SERIAL: Mutex<()> = Mutex::new(());

struct Served {
    client: Client,
    memory: Arc<Mutex<Vec<u8>>>,
    loaded: Arc<Mutex<usize>>,
    function: Arc<VirtualFunction>,
    server: JoinHandle<()>,
}

impl Served {
    /// Closes the connection and waits for the server to finish with it.
    fn close(self) {
        drop(self.client);
        self.server.join().unwrap();
    }
}

fn serve(memory: Vec<u8>, shared: bool) -> Served {
    let memory = Arc::new(Mutex::new(memory));
    let loaded = Arc::new(Mutex::new(0));
    let function = Bulk::function(Arc::clone(&memory), Arc::clone(&loaded));
    let port = Port::new("bulk", Arc::clone(&function));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        serve_connection(&port, &Arc::new(ServerConfig::default()), theirs);
    });
    let options = ClientOptions {
        capabilities: Capabilities {
            max_data_xfer_size: Some(XFER),
            ..Capabilities::qemu_proposal()
        },
        mig_data_shared: shared,
        ..ClientOptions::default()
    };
    let client = Client::from_stream(ours, options).expect("negotiation");
    Served {
        client,
        memory,
        loaded,
        function,
        server,
    }
}

/// Migrates `source` into `destination` with the driver, stop-copy only.
fn stop_copy(source: &mut Served, destination: &mut Served) -> Report {
    let options = Options {
        precopy: false,
        ..Options::default()
    };
    migrate(
        &mut source.client,
        &mut LocalDestination::new(&mut destination.client),
        &options,
        &mut (),
    )
    .expect("migration")
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..STATE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Runs `body` and checks that it left no fd open and no buffer mapped in this process.
fn leaves_no_fds_or_mappings(body: impl FnOnce()) {
    let (fds, maps) = (open_fds(), buffer_maps());
    body();
    assert_eq!(open_fds(), fds, "fds left open");
    assert_eq!(buffer_maps(), maps, "buffers left mapped");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mappings of migration data buffers in this process.
fn buffer_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("vfio-user-mig-buffer") || l.contains("memfd:test-buffer"))
        .count()
}

#[test]
fn a_migration_through_one_shared_buffer_moves_the_state_byte_for_byte() {
    let _serial = SERIAL.lock();
    leaves_no_fds_or_mappings(|| {
        let mut source = serve(pattern(7), true);
        let mut destination = serve(vec![0; STATE], true);
        assert!(source.client.negotiated().mig_data_shared);
        let buffer = Arc::new(SharedBuffer::create(2 * XFER).unwrap());
        source
            .client
            .register_mig_buffer(Arc::clone(&buffer))
            .unwrap();
        destination
            .client
            .register_mig_buffer(Arc::clone(&buffer))
            .unwrap();
        source
            .client
            .set_mig_state(MigrationState::StopCopy)
            .unwrap();
        destination
            .client
            .set_mig_state(MigrationState::Resuming)
            .unwrap();
        // The source fills one half, the destination takes it from there: the bytes never
        // pass through this process.
        let mut half = 0;
        loop {
            let offset = half * XFER;
            let n = source
                .client
                .mig_data_read_shared(offset, XFER as u32)
                .unwrap();
            if n > 0 {
                destination.client.mig_data_write_shared(offset, n).unwrap();
            }
            if u64::from(n) < XFER {
                break;
            }
            half ^= 1;
        }
        destination
            .client
            .set_mig_state(MigrationState::Running)
            .unwrap();
        assert_eq!(*destination.loaded.lock(), STATE);
        assert!(*destination.memory.lock() == pattern(7), "state differs");
        // The inline calls go through the buffer too once it is registered.
        source
            .client
            .set_mig_state(MigrationState::Running)
            .unwrap();
        source
            .client
            .set_mig_state(MigrationState::StopCopy)
            .unwrap();
        let read = source.client.mig_data_read(16).unwrap();
        let mut there = [0u8; 16];
        buffer.copy_out(0, &mut there).unwrap();
        assert_eq!(read, there);
        drop(buffer);
        source.close();
        destination.close();
    });
}

#[test]
fn the_driver_pipelines_through_every_part_of_one_buffer() {
    let _serial = SERIAL.lock();
    leaves_no_fds_or_mappings(|| {
        let mut source = serve(pattern(9), true);
        let mut destination = serve(vec![0; STATE], true);
        let buffer = share_buffer(&mut source.client, &mut destination.client)
            .unwrap()
            .expect("both agreed");
        let report = stop_copy(&mut source, &mut destination);
        assert!(report.stop_copy_bytes > STATE as u64);
        assert_eq!(*destination.loaded.lock(), STATE);
        assert!(*destination.memory.lock() == pattern(9), "state differs");
        // The source's server made the buffer: only it writes it.
        assert!(buffer.is_read_only());
        // Every slot's part carried a chunk (the state is four chunks).
        let part = buffer.len() / PIPELINE_SLOTS;
        for slot in 0..PIPELINE_SLOTS {
            let mut start = vec![0u8; 4096];
            buffer.copy_out((slot * part) as u64, &mut start).unwrap();
            assert!(
                start.iter().any(|&b| b != 0),
                "part {slot} of the buffer was not used"
            );
        }
        drop(buffer);
        source.close();
        destination.close();
    });
}

#[test]
fn the_driver_shares_no_buffer_with_a_server_that_did_not_agree() {
    let _serial = SERIAL.lock();
    let mut source = serve(pattern(5), true);
    let mut destination = serve(vec![0; STATE], false);
    assert!(
        share_buffer(&mut source.client, &mut destination.client)
            .unwrap()
            .is_none()
    );
    assert!(source.client.mig_buffer().is_none());
    stop_copy(&mut source, &mut destination);
    assert!(*destination.memory.lock() == pattern(5), "state differs");
    source.close();
    destination.close();
}

/// Sends `command` with `payload` and `fds` on the client's socket and returns the errno of
/// the reply (0: success).
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

fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "test-buffer",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn register() -> Vec<u8> {
    DeviceFeature::set(FEATURE_MIG_DATA_BUFFER, Vec::new()).to_bytes()
}

/// The whole stop-copy stream of a function whose state is `state`, read inline.
fn inline_stream(state: Vec<u8>) -> Vec<u8> {
    let mut s = serve(state, false);
    s.client.set_mig_state(MigrationState::StopCopy).unwrap();
    let mut all = Vec::new();
    loop {
        let part = s.client.mig_data_read(XFER as u32).unwrap();
        all.extend_from_slice(&part);
        if part.len() < XFER as usize {
            break;
        }
    }
    s.close();
    all
}

#[test]
fn reads_sent_ahead_are_answered_in_order_and_taken_oldest_first() {
    let _serial = SERIAL.lock();
    let expected = inline_stream(pattern(4));
    let mut source = serve(pattern(4), true);
    let buffer = Arc::new(SharedBuffer::create(2 * XFER).unwrap());
    let client = &mut source.client;
    client.register_mig_buffer(Arc::clone(&buffer)).unwrap();
    client.set_mig_state(MigrationState::StopCopy).unwrap();
    let size = XFER as u32;
    // Two reads out at once, into the two halves; each taken after the next is asked for.
    client.mig_data_read_ahead(0, size).unwrap();
    let mut stream = Vec::new();
    let mut half = 0;
    loop {
        let offset = half * XFER;
        half ^= 1;
        client.mig_data_read_ahead(half * XFER, size).unwrap();
        // Taking the newer read first is refused, and changes nothing.
        let newer = client.mig_data_read_shared(half * XFER, size).unwrap_err();
        assert!(matches!(newer, ClientError::Protocol(_)), "{newer}");
        let n = client.mig_data_read_shared(offset, size).unwrap();
        let mut chunk = vec![0; n as usize];
        buffer.copy_out(offset, &mut chunk).unwrap();
        stream.extend_from_slice(&chunk);
        if n < size {
            break;
        }
    }
    assert!(stream == expected, "the stream differs from the inline one");
    // The read past the end is answered with nothing.
    assert_eq!(client.mig_data_read_shared(half * XFER, size).unwrap(), 0);
    // No more than MAX_MIG_DATA_AHEAD at once; the connection goes on.
    for _ in 0..MAX_MIG_DATA_AHEAD {
        client.mig_data_read_ahead(0, 16).unwrap();
    }
    let over = client.mig_data_read_ahead(0, 16).unwrap_err();
    assert!(matches!(over, ClientError::Protocol(_)), "{over}");
    // A state change drops the reads out and their answers; reads start afresh.
    client.set_mig_state(MigrationState::Running).unwrap();
    client.set_mig_state(MigrationState::StopCopy).unwrap();
    assert_eq!(client.mig_data_read_shared(XFER, 16).unwrap(), 16);
    source.close();
}

#[test]
fn writes_sent_ahead_load_in_order_and_a_refusal_comes_with_its_answer() {
    let _serial = SERIAL.lock();
    let stream = inline_stream(pattern(8));
    let mut destination = serve(vec![0; STATE], true);
    let buffer = Arc::new(SharedBuffer::create(2 * XFER).unwrap());
    let client = &mut destination.client;
    client.register_mig_buffer(Arc::clone(&buffer)).unwrap();
    client.set_mig_state(MigrationState::Resuming).unwrap();
    // Two writes out at once, one per half; the older taken before its half is filled again.
    let mut out: Vec<(u64, u32)> = Vec::new();
    for (i, chunk) in stream.chunks(XFER as usize).enumerate() {
        let offset = (i as u64 % 2) * XFER;
        if out.len() == 2 {
            let (offset, size) = out.remove(0);
            // Taking the newer write first is refused, and changes nothing.
            let (newer_offset, newer_size) = out[0];
            let newer = client
                .mig_data_write_shared(newer_offset, newer_size)
                .unwrap_err();
            assert!(matches!(newer, ClientError::Protocol(_)), "{newer}");
            client.mig_data_write_shared(offset, size).unwrap();
        }
        buffer.copy_in(offset, chunk).unwrap();
        let size = chunk.len() as u32;
        client.mig_data_write_ahead(offset, size).unwrap();
        out.push((offset, size));
    }
    for (offset, size) in out {
        client.mig_data_write_shared(offset, size).unwrap();
    }
    client.set_mig_state(MigrationState::Running).unwrap();
    assert!(*destination.memory.lock() == pattern(8), "state differs");

    // A corrupt stream sent ahead: the refusal is the answer taken, and nothing was loaded.
    let client = &mut destination.client;
    client.set_mig_state(MigrationState::Resuming).unwrap();
    *destination.loaded.lock() = 0;
    buffer.copy_in(0, &[0xa5; 4096]).unwrap();
    client.mig_data_write_ahead(0, 4096).unwrap();
    let refused = client.mig_data_write_shared(0, 4096).unwrap_err();
    assert!(matches!(refused, ClientError::Remote { .. }), "{refused}");
    assert_eq!(*destination.loaded.lock(), 0);
    // A reset drops what was sent ahead and not taken; the connection goes on.
    client.mig_data_write_ahead(0, 4096).unwrap();
    client.reset().unwrap();
    client.set_mig_state(MigrationState::Resuming).unwrap();
    buffer.copy_in(0, &stream[..4096]).unwrap();
    client.mig_data_write_shared(0, 4096).unwrap();
    destination.close();
}

#[test]
fn untrusted_buffers_offsets_and_sizes_are_refused_and_the_connection_goes_on() {
    let _serial = SERIAL.lock();
    let state = pattern(3);
    // The stream the device saves, read inline from another server.
    let stream = inline_stream(state.clone());
    leaves_no_fds_or_mappings(|| {
        let mut target = serve(state.clone(), true);
        let feature = Command::DeviceFeature;
        let c = &target.client;
        // Buffers that must not be mapped: unsealed, missing SHRINK or GROW, too small, too
        // large, a regular file, a socket; two fds at once.
        let refused = [
            (memfd(2 * XFER, SealFlags::empty()), libc::EINVAL),
            (
                memfd(2 * XFER, SHARED_SEALS - SealFlags::SHRINK),
                libc::EINVAL,
            ),
            (
                memfd(2 * XFER, SHARED_SEALS - SealFlags::GROW),
                libc::EINVAL,
            ),
            (memfd(100, SHARED_SEALS), libc::E2BIG),
            (
                memfd(MAX_TRANSFERS_PER_BUFFER * XFER + 4096, SHARED_SEALS),
                libc::E2BIG,
            ),
            (
                OwnedFd::from(std::fs::File::open(std::env::current_exe().unwrap()).unwrap()),
                libc::EINVAL,
            ),
            (OwnedFd::from(UnixStream::pair().unwrap().0), libc::EINVAL),
        ];
        for (i, (fd, errno)) in refused.iter().enumerate() {
            assert_eq!(
                raw(c, 0x7000 + i as u16, feature, &register(), &[fd.as_fd()]),
                *errno,
                "case {i}"
            );
        }
        let good = memfd(2 * XFER, SHARED_SEALS);
        let other = memfd(2 * XFER, SHARED_SEALS);
        assert_eq!(
            raw(
                c,
                0x7010,
                feature,
                &register(),
                &[good.as_fd(), other.as_fd()]
            ),
            libc::EINVAL
        );
        // Another feature number with an fd.
        let wrong = DeviceFeature::set(FEATURE_MIG_DATA_BUFFER - 1, Vec::new()).to_bytes();
        assert_eq!(
            raw(c, 0x7011, feature, &wrong, &[good.as_fd()]),
            libc::EINVAL
        );
        drop(refused);
        // Nothing registered: MIG_DATA_READ still answers inline.
        target
            .client
            .set_mig_state(MigrationState::StopCopy)
            .unwrap();
        assert_eq!(target.client.mig_data_read(8).unwrap(), stream[..8]);

        // A good buffer registers once; a second registration is refused.
        let buffer = Arc::new(SharedBuffer::create(2 * XFER).unwrap());
        target
            .client
            .register_mig_buffer(Arc::clone(&buffer))
            .unwrap();
        let c = &target.client;
        assert_eq!(
            raw(c, 0x7020, feature, &register(), &[good.as_fd()]),
            libc::EBUSY
        );
        // Offsets and sizes outside the buffer, overflowing, or above the transfer bound; the
        // inline form; an fd beside the request.
        let read = Command::MigDataRead;
        let len = 2 * XFER;
        for (i, (offset, size, errno)) in [
            (len, 1, libc::ERANGE),
            (len - 4, 8, libc::ERANGE),
            (u64::MAX, 2, libc::ERANGE),
            (XFER + 1, XFER as u32, libc::ERANGE),
            (0, XFER as u32 + 1, libc::E2BIG),
        ]
        .into_iter()
        .enumerate()
        {
            let request = MigDataShared::new(offset, size).to_bytes();
            assert_eq!(
                raw(c, 0x7030 + i as u16, read, &request, &[]),
                errno,
                "read {i}"
            );
        }
        let inline = MigDataRead::new(8).to_bytes();
        assert_eq!(raw(c, 0x7040, read, &inline, &[]), libc::EINVAL);
        let request = MigDataShared::new(0, 8).to_bytes();
        assert_eq!(
            raw(c, 0x7041, read, &request, &[good.as_fd()]),
            libc::EINVAL
        );
        // No byte of the stream was lost to the refused reads.
        assert_eq!(target.client.mig_data_read_shared(XFER, 8).unwrap(), 8);
        let mut got = [0u8; 8];
        buffer.copy_out(XFER, &mut got).unwrap();
        assert_eq!(got, stream[8..16]);

        // The same refusals for writes, while resuming: the device sees nothing.
        target
            .client
            .set_mig_state(MigrationState::Running)
            .unwrap();
        *target.memory.lock() = vec![0; STATE];
        target
            .client
            .set_mig_state(MigrationState::Resuming)
            .unwrap();
        let c = &target.client;
        let write = Command::MigDataWrite;
        for (i, (offset, size, errno)) in [
            (len, 1, libc::ERANGE),
            (len - 4, 8, libc::ERANGE),
            (u64::MAX, 2, libc::ERANGE),
            (0, XFER as u32 + 1, libc::E2BIG),
        ]
        .into_iter()
        .enumerate()
        {
            let request = MigDataShared::new(offset, size).to_bytes();
            assert_eq!(
                raw(c, 0x7050 + i as u16, write, &request, &[]),
                errno,
                "write {i}"
            );
        }
        let inline = MigDataWrite::new(stream[..8].to_vec()).to_bytes();
        assert_eq!(raw(c, 0x7060, write, &inline, &[]), libc::EINVAL);
        assert_eq!(*target.loaded.lock(), 0);
        assert_eq!(target.function.migration_state(), MigrationState::Resuming);

        // The connection goes on: the whole state loads through the buffer.
        target.client.mig_data_write(&stream).unwrap();
        target
            .client
            .set_mig_state(MigrationState::Running)
            .unwrap();
        assert!(*target.memory.lock() == state, "state differs");
        drop((good, other, buffer));
        target.close();
    });
}

fn make_buffer(size: u64) -> Vec<u8> {
    DeviceFeature {
        argsz: 16 + 8,
        feature: FEATURE_MIG_DATA_BUFFER,
        ops: FeatureOps::GET,
        data: MigDataBufferSize { size }.to_bytes(),
    }
    .to_bytes()
}

#[test]
fn a_buffer_the_server_makes_is_written_by_it_alone_and_carries_its_reads() {
    let _serial = SERIAL.lock();
    let expected = inline_stream(pattern(6));
    leaves_no_fds_or_mappings(|| {
        let mut source = serve(pattern(6), true);
        let mut destination = serve(vec![0; STATE], true);
        let feature = Command::DeviceFeature;
        // Sizes out of bounds, data of another length, an fd beside it: refused.
        let c = &source.client;
        let too_large = MAX_TRANSFERS_PER_BUFFER * XFER + 4096;
        assert_eq!(raw(c, 0x7100, feature, &make_buffer(100), &[]), libc::E2BIG);
        assert_eq!(
            raw(c, 0x7101, feature, &make_buffer(too_large), &[]),
            libc::E2BIG
        );
        let mut long = make_buffer(2 * XFER);
        long.extend_from_slice(&[0; 8]);
        long[..4].copy_from_slice(&32u32.to_le_bytes());
        assert_eq!(raw(c, 0x7102, feature, &long, &[]), libc::EINVAL);
        let stray = memfd(4096, SHARED_SEALS);
        assert_eq!(
            raw(c, 0x7103, feature, &make_buffer(2 * XFER), &[stray.as_fd()]),
            libc::EINVAL
        );

        let buffer = source.client.server_mig_buffer(2 * XFER).unwrap();
        assert!(buffer.is_read_only());
        // The client can write it by no means: copies, mappings, write(2), resizing.
        assert!(buffer.copy_in(0, b"x").is_err());
        let fd = rustix::io::fcntl_dupfd_cloexec(buffer.fd(), 0).unwrap();
        assert!(memmap2::MmapOptions::new().len(4096).map_raw(&fd).is_err());
        assert!(rustix::io::pwrite(&fd, b"x", 0).is_err());
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        drop(fd);
        // One buffer per connection, made or registered.
        let c = &source.client;
        assert_eq!(
            raw(c, 0x7104, feature, &make_buffer(2 * XFER), &[]),
            libc::EBUSY
        );

        // Registered with another server, which cannot write it either: a read into it is
        // refused before the device gives up a byte.
        let other = &mut destination.client;
        other.register_mig_buffer(Arc::clone(&buffer)).unwrap();
        other.set_mig_state(MigrationState::StopCopy).unwrap();
        let refused = other.mig_data_read_shared(0, 16).unwrap_err();
        assert_eq!(refused.errno(), libc::EPERM, "{refused}");

        // The stream lands in it as it is saved, whole.
        let client = &mut source.client;
        client.set_mig_state(MigrationState::StopCopy).unwrap();
        let mut stream = Vec::new();
        loop {
            let n = client.mig_data_read_shared(XFER, XFER as u32).unwrap();
            let mut chunk = vec![0; n as usize];
            buffer.copy_out(XFER, &mut chunk).unwrap();
            stream.extend_from_slice(&chunk);
            if n < XFER as u32 {
                break;
            }
        }
        assert!(stream == expected, "the stream differs from the inline one");
        drop(buffer);
        source.close();
        destination.close();
    });
}

#[test]
fn a_connection_that_did_not_agree_refuses_a_buffer() {
    let _serial = SERIAL.lock();
    let fds = open_fds();
    {
        let mut target = serve(vec![0; 16], false);
        assert!(!target.client.negotiated().mig_data_shared);
        let buffer = memfd(2 * XFER, SHARED_SEALS);
        assert_eq!(
            raw(
                &target.client,
                0x7000,
                Command::DeviceFeature,
                &register(),
                &[buffer.as_fd()]
            ),
            libc::EINVAL
        );
        assert_eq!(
            raw(
                &target.client,
                0x7001,
                Command::DeviceFeature,
                &make_buffer(2 * XFER),
                &[]
            ),
            libc::EINVAL
        );
        // Inline migration data goes on as before.
        target
            .client
            .set_mig_state(MigrationState::StopCopy)
            .unwrap();
        assert_eq!(target.client.mig_data_read(4).unwrap().len(), 4);
        drop(buffer);
        target.close();
    }
    assert_eq!(open_fds(), fds, "fds left open");
}

#[test]
fn a_transport_that_cannot_pass_fds_never_agrees() {
    let _serial = SERIAL.lock();
    // The server's end of a TCP connection, served as if it were a Unix socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let function = Bulk::function(Arc::new(Mutex::new(vec![0; 16])), Arc::new(Mutex::new(0)));
    let port = Port::new("bulk", function);
    let server = UnixStream::from(OwnedFd::from(server));
    let served = std::thread::spawn(move || {
        serve_connection(&port, &Arc::new(ServerConfig::default()), server);
    });
    let options = ClientOptions {
        mig_data_shared: true,
        ..ClientOptions::default()
    };
    let client = Client::from_stream(UnixStream::from(OwnedFd::from(client)), options)
        .expect("negotiation over TCP");
    assert!(!client.negotiated().mig_data_shared);
    // The next test counts fds: this one leaves none behind.
    drop((client, listener));
    served.join().unwrap();
}
