//! Twin-socket mode against one server process running the built-in functions: a VMM with
//! private guest RAM (DMA_MAP without an fd) drives the transitional virtio-blk VF with the
//! legacy driver, the framework's client answering the VF's DMA on its twin socket; a relay
//! on the main socket shows no DMA request travels there in that mode (and that one does
//! without it). A hostile client answers on its twin socket with wrong ids, bad replies,
//! commands and garbage, and closes it: each costs that client a DMA or its connection, never
//! the server, another function, an fd or a thread.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use vfio_variant::pci::region::CONFIG_REGION;
use vfio_variant::server::ServerConfig;
use vfio_variant::vfio_user::access::{RegionRead, RegionWrite};
use vfio_variant::vfio_user::client::{Client, ClientOptions, DmaHandler};
use vfio_variant::vfio_user::dma::{DmaMap, DmaMapFlags, DmaRead, DmaReadReply};
use vfio_variant::vfio_user::header::{Command, Header};
use vfio_variant::vfio_user::version::{Capabilities, TwinSocket, Version};
use vfio_variant::vfio_user::{
    Limits, Message, Payload, ReadError, read_message, write_message, write_reply,
};
use vfio_variant_backends::builtin::sample::registers as sample;
use vfio_variant_virtio_legacy::hw::blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vfio_variant_virtio_legacy::hw::transport::legacy;
use vfio_variant_virtio_legacy::hw::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK};

/// Guest memory: 1 MiB at this IOVA, never shared with the server.
const GUEST: u64 = 0x10_0000;
const GUEST_SIZE: u64 = 1 << 20;
/// The legacy queue size (QUEUE_NUM) and the queue's pages: descriptors, available ring,
/// used ring at the third page.
const QUEUE_SIZE: u16 = 256;
const USED: u64 = GUEST + 0x2000;
/// Request buffers, past the queue's three pages.
const HEADER: u64 = GUEST + 0x4000;
const DATA: u64 = GUEST + 0x5000;
const STATUS_BYTE: u64 = GUEST + 0x8000;
/// How long the server waits for a DMA answer here.
const DMA_TIMEOUT: Duration = Duration::from_secs(1);

/// The cases share one process's fd and thread counts: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[path = "common/service.rs"]
mod service;
use service::{TestService as Server, eventually, open_fds, threads};

/// The functions every case here serves: the VF under test, the sample function, and a
/// witness only ever used well.
const FUNCTIONS: [(&str, &str); 3] = [
    ("blk0", "virtio-blk"),
    ("sample0", "sample"),
    ("witness", "sample"),
];

/// A server offering twin-socket mode (the default) with a short DMA timeout.
fn start(tag: &str) -> Server {
    start_with(
        tag,
        ServerConfig {
            dma_timeout: DMA_TIMEOUT,
            ..ServerConfig::default()
        },
    )
}

fn start_with(tag: &str, config: ServerConfig) -> Server {
    Server::start(&format!("twin-{tag}"), config, &FUNCTIONS)
}

/// The guest's RAM, a memfd only the client holds, reached by the server's messages;
/// counts the accesses.
#[derive(Clone)]
struct Ram {
    memory: Arc<OwnedFd>,
    accesses: Arc<AtomicU64>,
}

impl Ram {
    fn new() -> Self {
        let memory = rustix::fs::memfd_create("guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memory, GUEST_SIZE).unwrap();
        Self {
            memory: Arc::new(memory),
            accesses: Arc::default(),
        }
    }

    fn put(&self, iova: u64, data: &[u8]) {
        let n = rustix::io::pwrite(&*self.memory, data, iova - GUEST).unwrap();
        assert_eq!(n, data.len());
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let n = rustix::io::pread(&*self.memory, &mut data, iova - GUEST).unwrap();
        assert_eq!(n, len);
        data
    }

    fn offset(address: u64, len: usize) -> Result<u64, i32> {
        let at = address.checked_sub(GUEST).ok_or(libc::EFAULT)?;
        (at + len as u64 <= GUEST_SIZE)
            .then_some(at)
            .ok_or(libc::EFAULT)
    }
}

impl DmaHandler for Ram {
    fn dma_read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), i32> {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let at = Self::offset(address, buf.len())?;
        rustix::io::pread(&*self.memory, buf, at).map_err(|e| e.raw_os_error())?;
        Ok(())
    }
    fn dma_write(&mut self, address: u64, data: &[u8]) -> Result<(), i32> {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let at = Self::offset(address, data.len())?;
        rustix::io::pwrite(&*self.memory, data, at).map_err(|e| e.raw_os_error())?;
        Ok(())
    }
}

/// A man in the middle on the main socket: forwards every message (fds too) and notes the
/// command and kind of each the server sends.
struct Relay {
    /// (command, is a reply) of each message from the server.
    from_server: Arc<Mutex<Vec<(u16, bool)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Connects to `path`; returns the end the client uses.
    fn connect(path: &Path) -> (UnixStream, Self) {
        let upstream = UnixStream::connect(path).unwrap();
        let (client_side, relay_side) = UnixStream::pair().unwrap();
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let forward = |from: UnixStream, to: UnixStream, seen: Option<Arc<Mutex<Vec<_>>>>| {
            std::thread::spawn(move || {
                let limits = Limits::default();
                while let Ok(message) = read_message(&from, &limits) {
                    if let Some(seen) = &seen {
                        seen.lock()
                            .push((message.header.command, message.header.is_reply()));
                    }
                    let fds: Vec<BorrowedFd<'_>> = message.fds.iter().map(|f| f.as_fd()).collect();
                    if write_message(&to, &message.header, &message.payload, &fds).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            })
        };
        let threads = vec![
            forward(
                relay_side.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                None,
            ),
            forward(upstream, relay_side, Some(Arc::clone(&from_server))),
        ];
        (
            client_side,
            Self {
                from_server,
                threads,
            },
        )
    }

    /// Waits for both directions to end (the client has gone); returns what the server sent.
    fn finish(self) -> Vec<(u16, bool)> {
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.from_server).unwrap().into_inner()
    }
}

/// A legacy virtio-blk driver on the VF's I/O BAR, guest RAM private.
struct Driver {
    client: Client,
    ram: Ram,
    avail_idx: u16,
    last_used: u16,
}

impl Driver {
    fn io_read(&mut self, offset: u8, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.client
            .region_read(0, offset.into(), &mut b[..len])
            .unwrap();
        u64::from_le_bytes(b)
    }

    fn io_write(&mut self, offset: u8, len: usize, value: u64) {
        self.client
            .region_write(0, offset.into(), &value.to_le_bytes()[..len])
            .unwrap();
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, queue 0 in guest RAM, DRIVER_OK, as Linux's
    /// virtio_pci_legacy does it.
    fn init(&mut self) {
        self.client
            .region_write(CONFIG_REGION, 4, &[0x05, 0x00])
            .unwrap();
        self.io_write(legacy::STATUS, 1, 0);
        self.io_write(legacy::STATUS, 1, STATUS_ACKNOWLEDGE.into());
        let driver = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        self.io_write(legacy::STATUS, 1, driver.into());
        let host = self.io_read(legacy::HOST_FEATURES, 4);
        self.io_write(legacy::GUEST_FEATURES, 4, host);
        self.io_write(legacy::QUEUE_SEL, 2, 0);
        assert_eq!(self.io_read(legacy::QUEUE_NUM, 2), u64::from(QUEUE_SIZE));
        self.io_write(legacy::QUEUE_PFN, 4, GUEST >> 12);
        self.io_write(legacy::STATUS, 1, (driver | STATUS_DRIVER_OK).into());
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&addr.to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.ram.put(GUEST + 16 * u64::from(index), &d);
    }

    fn used_idx(&self) -> u16 {
        let idx = self.ram.get(USED + 2, 2);
        u16::from_le_bytes([idx[0], idx[1]])
    }

    /// One request: header, `len` bytes at [`DATA`], status. After the notify, with
    /// `calls_while_waiting` the driver goes on reading a register (a client without a twin
    /// socket answers DMA only while a call waits); without, it only watches its RAM.
    /// Returns the status byte and the used length.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
        calls_while_waiting: bool,
    ) -> (u8, u32) {
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&kind.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        self.ram.put(HEADER, &header);
        self.ram.put(STATUS_BYTE, &[0xff]);
        let data_flags = if kind == VIRTIO_BLK_T_IN { 1 | 2 } else { 1 };
        self.desc(0, HEADER, 16, 1, 1);
        self.desc(1, DATA, len, data_flags, 2);
        self.desc(2, STATUS_BYTE, 1, 2, 0);
        let avail = GUEST + 16 * u64::from(QUEUE_SIZE);
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.ram.put(avail + 4 + 2 * slot, &0u16.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ram.put(avail + 2, &self.avail_idx.to_le_bytes());
        self.io_write(legacy::QUEUE_NOTIFY, 2, 0);
        eventually("the request completes", || {
            if calls_while_waiting {
                self.io_read(legacy::STATUS, 1);
            }
            (self.used_idx() == self.avail_idx).then_some(())
        });
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        self.last_used = self.last_used.wrapping_add(1);
        let element = self.ram.get(USED + 4 + 8 * slot, 8);
        let used_len = u32::from_le_bytes([element[4], element[5], element[6], element[7]]);
        (self.ram.get(STATUS_BYTE, 1)[0], used_len)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// The legacy driver writes a sector and reads it back through private RAM, the client
/// connected through a [`Relay`]; returns what the server sent on the main socket and how
/// many DMA accesses reached the client's memory.
fn legacy_blk_through_a_relay(s: &Server, twin: bool) -> (Vec<(u16, bool)>, u64) {
    let (stream, relay) = Relay::connect(&s.socket("blk0"));
    let options = ClientOptions {
        twin_socket: twin,
        timeout: Some(Duration::from_secs(10)),
        ..ClientOptions::default()
    };
    let mut client = Client::from_stream(stream, options).unwrap();
    assert_eq!(client.twin_socket(), twin);
    assert_eq!(client.negotiated().twin_socket, twin);
    let ram = Ram::new();
    client.set_dma_handler(Box::new(ram.clone()));
    // Answered as QEMU answers them on its one socket: only once the reply it waits for
    // has come. A twin socket's requests wait for nothing.
    client.set_deferred_dma(true);
    client
        .dma_map(
            &DmaMap::new(GUEST, GUEST_SIZE, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
            None,
        )
        .unwrap();
    let mut driver = Driver {
        client,
        ram: ram.clone(),
        avail_idx: 0,
        last_used: 0,
    };
    driver.init();
    let written = pattern(4096, if twin { 7 } else { 3 });
    ram.put(DATA, &written);
    // With a twin socket the driver makes no call while the VF works.
    assert_eq!(
        driver.request(VIRTIO_BLK_T_OUT, 16, 4096, !twin),
        (VIRTIO_BLK_S_OK, 1)
    );
    ram.put(DATA, &[0u8; 4096]);
    assert_eq!(
        driver.request(VIRTIO_BLK_T_IN, 16, 4096, !twin),
        (VIRTIO_BLK_S_OK, 4096 + 1)
    );
    assert_eq!(ram.get(DATA, 4096), written);
    drop(driver);
    let seen = relay.finish();
    s.wait_detached("blk0");
    (seen, ram.accesses.load(Ordering::Relaxed))
}

#[test]
fn private_ram_legacy_blk_over_the_twin_socket_keeps_dma_off_the_main_socket() {
    let _serial = SERIAL.lock();
    let s = start("blk");
    let is_dma = |(command, reply): &(u16, bool)| {
        !reply && [Command::DmaRead.raw(), Command::DmaWrite.raw()].contains(command)
    };

    // One socket: the VF's DMA requests are on the main socket (the relay sees them).
    let (seen, accesses) = legacy_blk_through_a_relay(&s, false);
    let on_main = seen.iter().filter(|m| is_dma(m)).count();
    assert!(on_main > 0 && accesses > 0, "{on_main} {accesses}");

    // Twin socket: the same work, every DMA request elsewhere; the main socket carries
    // replies only.
    let (seen, accesses) = legacy_blk_through_a_relay(&s, true);
    assert!(accesses > 0, "the VF reached guest RAM");
    assert!(seen.len() > 10, "the relay saw the session: {}", seen.len());
    let requests: Vec<_> = seen.iter().filter(|(_, reply)| !reply).collect();
    assert!(
        requests.is_empty(),
        "server requests on the main socket in twin-socket mode: {requests:?}"
    );
    println!(
        "TWIN legacy blk: {accesses} DMA accesses on the twin socket, {on_main} on the main socket without it"
    );
}

/// A client that speaks the protocol by hand, main and twin socket.
struct Raw {
    main: UnixStream,
    twin: UnixStream,
    next_id: u16,
}

impl Raw {
    fn connect(path: &Path) -> Self {
        let main = UnixStream::connect(path).unwrap();
        main.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let proposal = Version {
            capabilities: Capabilities {
                twin_socket: Some(TwinSocket {
                    supported: true,
                    fd_index: None,
                }),
                ..Capabilities::default()
            },
            ..Version::default()
        };
        let payload = proposal.to_bytes();
        write_message(
            &main,
            &Header::request(0, Command::Version, payload.len()),
            &payload,
            &[],
        )
        .unwrap();
        let mut reply = read_message(&main, &Limits::default()).unwrap();
        let version = Version::parse(&reply.payload, &Limits::default()).unwrap();
        assert_eq!(
            version.capabilities.twin_socket,
            Some(TwinSocket {
                supported: true,
                fd_index: Some(0)
            })
        );
        assert_eq!(reply.fds.len(), 1);
        let twin = UnixStream::from(reply.fds.remove(0));
        twin.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            main,
            twin,
            next_id: 1,
        }
    }

    /// Sends a command on the main socket and returns its reply.
    fn call(&mut self, command: Command, payload: &[u8]) -> Message {
        let id = self.next_id;
        self.next_id += 1;
        write_message(
            &self.main,
            &Header::request(id, command, payload.len()),
            payload,
            &[],
        )
        .unwrap();
        let reply = read_message(&self.main, &Limits::default()).unwrap();
        assert!(reply.header.is_reply());
        assert_eq!(reply.header.msg_id, id);
        reply
    }

    fn write32(&mut self, region: u32, offset: u64, value: u32) {
        let write = RegionWrite {
            offset,
            region,
            data: value.to_le_bytes().to_vec(),
        };
        assert!(
            !self
                .call(Command::RegionWrite, &write.to_bytes())
                .header
                .is_error()
        );
    }

    fn read32(&mut self, offset: u64) -> u32 {
        let read = RegionRead {
            offset,
            region: 0,
            count: 4,
        };
        let reply = self.call(Command::RegionRead, &read.to_bytes());
        u32::from_le_bytes(reply.payload[16..20].try_into().unwrap())
    }

    /// Memory on, guest RAM mapped without an fd, a 16-byte copy programmed.
    fn prepare_copy(&mut self) {
        let command = RegionWrite {
            offset: 4,
            region: CONFIG_REGION,
            data: vec![0x06, 0x00],
        };
        self.call(Command::RegionWrite, &command.to_bytes());
        let map = DmaMap::new(GUEST, GUEST_SIZE, 0, DmaMapFlags::READ | DmaMapFlags::WRITE);
        assert!(
            !self
                .call(Command::DmaMap, &map.to_bytes())
                .header
                .is_error()
        );
        self.write32(0, sample::DMA_SRC_LO, GUEST as u32);
        self.write32(0, sample::DMA_DST_LO, (GUEST + 0x1000) as u32);
        self.write32(0, sample::DMA_LEN, 16);
    }

    /// Starts the copy; returns the DMA_READ it sends on the twin socket.
    fn start_copy(&mut self) -> Message {
        self.write32(0, sample::DMA_CMD, sample::DMA_CMD_START);
        let request = read_message(&self.twin, &Limits::default()).unwrap();
        assert_eq!(request.command().unwrap(), Command::DmaRead);
        assert!(!request.header.is_reply());
        request
    }

    /// DMA_STATUS once the copy is over, read on the main socket meanwhile.
    fn copy_status(&mut self) -> u32 {
        eventually("the copy ends", || {
            Some(self.read32(sample::DMA_STATUS)).filter(|&s| s != sample::DMA_STATUS_BUSY)
        })
    }

    /// Whether the server has closed the main socket.
    fn closed_by_server(&self) -> bool {
        matches!(
            read_message(&self.main, &Limits::default()),
            Err(ReadError::Closed)
        )
    }
}

/// A witness client on another function, doing round trips until stopped.
struct Witness {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Witness {
    fn start(path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut client = Client::connect_with(
            path,
            ClientOptions {
                twin_socket: true,
                timeout: Some(Duration::from_secs(10)),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        client
            .region_write(CONFIG_REGION, 4, &[0x02, 0x00])
            .unwrap();
        let thread = {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut id = [0u8; 4];
                    client.region_read(0, sample::ID, &mut id).unwrap();
                    assert_eq!(u32::from_le_bytes(id), sample::ID_VALUE);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Self {
            stop,
            count,
            thread,
        }
    }

    /// Waits until the witness has made `n` more round trips.
    fn advances(&self, n: u64) {
        let from = self.count.load(Ordering::Relaxed);
        eventually("the witness function serves", || {
            (self.count.load(Ordering::Relaxed) >= from + n).then_some(())
        });
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// Gives the client `ram` as its private RAM (mapped without an fd) and has the sample
/// function copy its first 16 bytes 4 KiB further.
fn copy_from_private_ram(client: &mut Client, ram: &Ram) {
    client.set_dma_handler(Box::new(ram.clone()));
    client
        .region_write(CONFIG_REGION, 4, &[0x06, 0x00])
        .unwrap();
    client
        .dma_map(
            &DmaMap::new(GUEST, GUEST_SIZE, 0, DmaMapFlags::READ | DmaMapFlags::WRITE),
            None,
        )
        .unwrap();
    for (register, value) in [
        (sample::DMA_SRC_LO, GUEST as u32),
        (sample::DMA_DST_LO, (GUEST + 0x1000) as u32),
        (sample::DMA_LEN, 16),
        (sample::DMA_CMD, sample::DMA_CMD_START),
    ] {
        client
            .region_write(0, register, &value.to_le_bytes())
            .unwrap();
    }
}

/// A well-behaved twin-socket client has the sample function copy 16 bytes of its private
/// RAM, then leaves.
fn good_copy(s: &Server) {
    let guest = b"sixteen bytes!!!";
    let mut client = Client::connect_with(
        s.socket("sample0"),
        ClientOptions {
            twin_socket: true,
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let ram = Ram::new();
    ram.put(GUEST, guest);
    copy_from_private_ram(&mut client, &ram);
    eventually("the copy lands", || {
        (ram.get(GUEST + 0x1000, 16) == guest).then_some(())
    });
    drop(client);
    s.wait_detached("sample0");
}

#[test]
fn a_hostile_twin_socket_costs_its_client_a_dma_or_its_connection_only() {
    let _serial = SERIAL.lock();
    let s = start("hostile");
    let witness = Witness::start(&s.socket("witness"));
    // The function's DMA engine thread starts with its first copy: before counting.
    good_copy(&s);
    let (fds_before, threads_before) = (open_fds(), threads());
    let guest = b"sixteen bytes!!!";

    let mut c = Raw::connect(&s.socket("sample0"));
    c.prepare_copy();
    let read_reply = |request: &Message| {
        let read = DmaRead::parse(&request.payload, &Limits::default()).unwrap();
        DmaReadReply {
            address: read.address,
            data: guest[..read.count as usize].to_vec(),
        }
        .to_bytes()
    };

    // A reply under another id is dropped: the DMA times out, a read fault; the main
    // socket answers all along.
    let request = c.start_copy();
    let mut wrong = request.header.reply(0);
    wrong.msg_id = request.header.msg_id.wrapping_add(1000);
    write_message(&c.twin, &wrong, &read_reply(&request), &[]).unwrap();
    assert_eq!(c.copy_status(), 2, "no answer: read fault");
    witness.advances(10);

    // The right id with a payload for another range, or a reply to another command: that
    // DMA fails at once.
    let request = c.start_copy();
    let short = DmaReadReply {
        address: GUEST + 0x800,
        data: guest[..4].to_vec(),
    };
    write_reply(&c.twin, &request.header, &short.to_bytes(), &[]).unwrap();
    assert_eq!(c.copy_status(), 2, "reply for another range");
    let request = c.start_copy();
    let mut other = request.header.reply(0);
    other.command = Command::DmaWrite.raw();
    write_message(&c.twin, &other, &[], &[]).unwrap();
    assert_eq!(c.copy_status(), 2, "reply to another command");
    // A reply whose payload cannot be parsed (a count past its data): that DMA fails.
    let request = c.start_copy();
    let mut lying = read_reply(&request);
    lying[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    write_reply(&c.twin, &request.header, &lying, &[]).unwrap();
    assert_eq!(c.copy_status(), 2, "unparsable reply");

    // A command on the twin socket gets an error reply there; then a good copy works.
    let stray = Header::request(77, Command::DeviceReset, 0);
    write_message(&c.twin, &stray, &[], &[]).unwrap();
    let refused = read_message(&c.twin, &Limits::default()).unwrap();
    assert!(refused.header.is_reply() && refused.header.is_error());
    assert_eq!(refused.header.msg_id, 77);
    let request = c.start_copy();
    write_reply(&c.twin, &request.header, &read_reply(&request), &[]).unwrap();
    let write = read_message(&c.twin, &Limits::default()).unwrap();
    assert_eq!(write.command().unwrap(), Command::DmaWrite);
    assert_eq!(&write.payload[16..], guest);
    write_reply(&c.twin, &write.header, &[], &[]).unwrap();
    assert_eq!(c.copy_status(), 0, "a good copy after all that");
    witness.advances(10);

    // Garbage that cannot be framed (a header saying the message is 4 bytes long) ends the
    // connection, and only it.
    c.start_copy();
    let mut garbage = [0u8; 16];
    garbage[4..8].copy_from_slice(&4u32.to_le_bytes());
    rustix::io::write(&c.twin, &garbage).unwrap();
    assert!(c.closed_by_server(), "the server ended the connection");
    drop(c);
    s.wait_detached("sample0");
    witness.advances(10);

    // Closing the twin socket ends the connection, with a DMA waiting on it or not.
    for waiting in [false, true] {
        let mut c = Raw::connect(&s.socket("sample0"));
        c.prepare_copy();
        if waiting {
            c.start_copy();
        }
        c.twin.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(c.closed_by_server(), "waiting: {waiting}");
        drop(c);
        s.wait_detached("sample0");
        witness.advances(10);
    }

    // The function serves a well-behaved twin-socket client after all that.
    good_copy(&s);

    // Every connection's fds and threads (twin readers, client twin threads) are gone.
    let fds_after = eventually("fds back", || {
        let n = open_fds();
        (n <= fds_before).then_some(n)
    });
    let threads_after = eventually("threads back", || {
        let n = threads();
        (n <= threads_before).then_some(n)
    });
    witness.stop();
    println!(
        "TWIN hostile: fds {fds_before} -> {fds_after}, threads {threads_before} -> {threads_after}"
    );
}

/// With the offer turned off, a client asking for the mode gets a reply saying no, and its
/// DMA goes over the main socket as before.
#[test]
fn a_server_that_does_not_offer_it_keeps_one_socket() {
    let _serial = SERIAL.lock();
    let mut config = ServerConfig::default();
    config.offer.twin_socket = false;
    let s = start_with("off", config);
    let mut client = Client::connect_with(
        s.socket("sample0"),
        ClientOptions {
            twin_socket: true,
            timeout: Some(Duration::from_secs(10)),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert!(!client.twin_socket() && !client.negotiated().twin_socket);
    let ram = Ram::new();
    ram.put(GUEST, b"one socket only!");
    copy_from_private_ram(&mut client, &ram);
    // Answered while the client polls DMA_STATUS on the main socket.
    eventually("the copy lands", || {
        let mut status = [0u8; 4];
        client
            .region_read(0, sample::DMA_STATUS, &mut status)
            .unwrap();
        (ram.get(GUEST + 0x1000, 16) == b"one socket only!").then_some(())
    });
    assert!(ram.accesses.load(Ordering::Relaxed) >= 2);
}
