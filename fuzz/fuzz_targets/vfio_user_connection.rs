//! Arbitrary bytes as everything a client sends on one connection to the device server, served
//! by `serve_connection` against a small function (four registers in an emulated BAR, the same
//! registers in a legacy I/O BAR, an emulated ROM, MSI, INTx, FLR, migration with pre-copy and a
//! device-side dirty tracker, so that DEVICE_FEATURE reaches the migration, DMA logging and
//! PRECOPY_INFO code): no panic on any thread (libfuzzer-sys aborts on one), and the server
//! closes the connection once the client has.
//!
//! The first byte chooses what goes before the rest: bit 0 a valid VERSION, so that the
//! commands after it are served rather than refused; bit 1 then a config write turning on
//! memory, I/O and bus mastering, so that BAR accesses and DMA reach the function; bit 2 (with
//! bit 0) has the VERSION propose twin-socket mode: the next byte then says which share of
//! the rest goes to the twin socket the reply brings, queued there at once (replies, commands
//! or garbage, read by the server's twin reader while the main socket's commands run and its
//! DMA requests go out on the twin socket), the remainder to the main socket as before.
//! Bit 3 (with bit 0) has the VERSION propose `mig_data_shared`; whatever the VERSION, bits 4
//! and 5 then register a shared migration data buffer first (DEVICE_FEATURE
//! MIG_DATA_BUFFER with an fd), before the rest: a memfd sealed as the extension wants, one
//! unsealed, or a socket, of the size the next input byte chooses (in 16 KiB, so that it may
//! pass the bound), to be taken, refused as untrusted, or refused as not agreed. Once one is
//! taken, the MIG_DATA_READ and MIG_DATA_WRITE in the rest name offsets and sizes in it. The
//! rest may also ask the server to make the buffer (DEVICE_FEATURE MIG_DATA_BUFFER GET: seed
//! `mig_data_server_buffer`), which it then saves reads into straight.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::fs::{MemfdFlags, SealFlags};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vfio_variant::backend::{Function, FunctionContext, FunctionError, Interrupt};
use vfio_variant::config::ConfigTemplate;
use vfio_variant::device::{CONFIG_REGION, VirtualFunction};
use vfio_variant::migration::{
    DirtyTracker, MigrationError, MigrationFlags, MigrationHooks, MigrationState, PrecopyInfo,
};
use vfio_variant::server::{Port, ServerConfig, serve_connection};
use vfio_variant::vfio_user::access::RegionWrite;
use vfio_variant::vfio_user::feature::{DeviceFeature, FEATURE_MIG_DATA_BUFFER};
use vfio_variant::vfio_user::shared_buf::SHARED_SEALS;
use vfio_variant::vfio_user::version::TwinSocket;
use vfio_variant::vfio_user::version::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use vfio_variant::vfio_user::{
    Capabilities, Command, Header, Limits, Payload, Version, read_message, write_message,
};
use vfio_variant::vpci::{compile::compile, parse_layout};

/// The function's vPCI layout.
const LAYOUT: &str = r#"
[vpci]
format = 1
name = "fuzz"
description = "four registers, mirrored in a legacy I/O BAR"
config_size = 4096
unowned = "zero"

[identity]
vendor_id = 0x1234
device_id = 0x11f9
class_code = 0x00ff00

[header]
interrupt_pin = "A"

[[bar]]
index = 0
kind = "mem32"
size = "4K"
backing = "emulated"

[[bar]]
index = 1
kind = "io"
size = 32
backing = "legacy-io"

[rom]
size = "2K"
backing = "emulated"

[[capability]]
kind = "msi"
offset = 0x40
vectors = 4

[[capability]]
kind = "pcie"
offset = 0x50
device_type = "endpoint"
flr = true

[[capability]]
kind = "pm"
offset = 0x90
"#;

/// Register: reads [`ID_VALUE`].
const ID: u64 = 0x0;
/// The value of [`ID`].
const ID_VALUE: u32 = 0x5a5a_0001;
/// Register: reads back what was written; cleared by reset.
const SCRATCH: u64 = 0x4;
/// Register: writing an address copies the 4 bytes of guest memory there to the 4 after.
const DMA: u64 = 0x8;
/// Register: writing raises an interrupt chosen by the value (see [`Registers::raise`]).
const RAISE: u64 = 0xc;
/// Bytes of registers at the start of the BAR; the rest of it refuses accesses.
const REGISTERS: u64 = 0x10;

/// Largest input written to the connection: all of it goes into the socket buffer before the
/// server starts, so the client never writes to a connection the server closed (SIGPIPE).
const MAX_INPUT: usize = 64 << 10;

/// The function: four 32-bit registers; its migration state is the scratch register.
#[derive(Default)]
struct Registers {
    scratch: AtomicU32,
    context: OnceLock<FunctionContext>,
    /// Whether the scratch register was saved in this saving session.
    saved: AtomicBool,
}

impl Registers {
    /// The register at `offset` if the access is one whole register.
    fn register(offset: u64, len: usize) -> Result<u64, FunctionError> {
        if len == 4 && offset.is_multiple_of(4) && offset < REGISTERS {
            Ok(offset)
        } else {
            Err(FunctionError::BadAccess(format!(
                "{len} bytes at {offset:#x}"
            )))
        }
    }

    fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        let value = match Self::register(offset, data.len())? {
            ID => ID_VALUE,
            SCRATCH => self.scratch.load(Ordering::SeqCst),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        let register = Self::register(offset, data.len())?;
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match register {
            SCRATCH => self.scratch.store(value, Ordering::SeqCst),
            DMA => self.copy(u64::from(value)),
            RAISE => self.raise(value),
            _ => {}
        }
        Ok(())
    }

    /// Copies 4 bytes of guest memory at `address` to `address + 4`; faults are ignored, as a
    /// device would only report them.
    fn copy(&self, address: u64) {
        let Some(context) = self.context.get() else {
            return;
        };
        let mut word = [0u8; 4];
        if context.dma.read(address, &mut word).is_ok() {
            let _ = context.dma.write(address + 4, &word);
        }
    }

    /// Bits 0-1 of `value` choose INTx (level in bit 2), MSI, MSI-X (vector in bits 2-31) or
    /// the error (bit 2 clear) or request interrupt; vectors are not checked here.
    fn raise(&self, value: u32) {
        let Some(context) = self.context.get() else {
            return;
        };
        let interrupt = match value & 3 {
            0 => Interrupt::Intx(value & 4 != 0),
            1 => Interrupt::Msi(value >> 2),
            2 => Interrupt::Msix(value >> 2),
            _ if value & 4 == 0 => Interrupt::Error,
            _ => Interrupt::Request,
        };
        context.interrupts.raise(interrupt);
    }
}

impl Function for Registers {
    fn attach(&self, context: FunctionContext) {
        let _ = self.context.set(context);
    }

    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        match bar {
            0 => self.read(offset, data),
            _ => Err(FunctionError::BadAccess(format!("BAR {bar}"))),
        }
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        match bar {
            0 => self.write(offset, data),
            _ => Err(FunctionError::BadAccess(format!("BAR {bar}"))),
        }
    }

    fn legacy_io_read(&self, offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        self.read(offset, data)
    }

    fn legacy_io_write(&self, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        self.write(offset, data)
    }

    fn rom_read(&self, _offset: u64, data: &mut [u8]) -> Result<(), FunctionError> {
        data.fill(0xff);
        Ok(())
    }

    fn reset(&self) -> Result<(), FunctionError> {
        self.scratch.store(0, Ordering::SeqCst);
        Ok(())
    }

    fn migration(&self) -> Option<&dyn MigrationHooks> {
        Some(self)
    }
}

impl MigrationHooks for Registers {
    fn flags(&self) -> MigrationFlags {
        MigrationFlags::all()
    }

    fn transition(&self, _from: MigrationState, to: MigrationState) -> Result<(), MigrationError> {
        if matches!(to, MigrationState::PreCopy | MigrationState::StopCopy) {
            self.saved.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> Result<usize, MigrationError> {
        if buf.len() < 4 || self.saved.swap(true, Ordering::SeqCst) {
            return Ok(0);
        }
        buf[..4].copy_from_slice(&self.scratch.load(Ordering::SeqCst).to_le_bytes());
        Ok(4)
    }

    fn load(&self, data: &[u8]) -> Result<(), MigrationError> {
        let bytes: [u8; 4] = data
            .try_into()
            .map_err(|_| MigrationError::InvalidData(format!("{} bytes", data.len())))?;
        self.scratch
            .store(u32::from_le_bytes(bytes), Ordering::SeqCst);
        Ok(())
    }

    fn precopy_info(&self) -> Result<PrecopyInfo, MigrationError> {
        Ok(PrecopyInfo {
            initial_bytes: if self.saved.load(Ordering::SeqCst) {
                0
            } else {
                4
            },
            dirty_bytes: 0,
        })
    }

    fn stop_copy_size(&self) -> Result<u64, MigrationError> {
        Ok(4)
    }

    fn dirty_tracker(&self) -> Option<&dyn DirtyTracker> {
        Some(self)
    }
}

/// The device side of dirty tracking: reports the first page of every report dirty while the
/// scratch register is not zero.
impl DirtyTracker for Registers {
    fn start(&self, page_size: u64, _ranges: &[Range<u64>]) -> Result<u64, MigrationError> {
        Ok(page_size)
    }

    fn report(
        &self,
        _iova: u64,
        _length: u64,
        _page_size: u64,
        bitmap: &mut [u64],
    ) -> Result<(), MigrationError> {
        if let Some(first) = bitmap.first_mut()
            && self.scratch.load(Ordering::SeqCst) != 0
        {
            *first |= 1;
        }
        Ok(())
    }

    fn stop(&self) {}
}

/// The compiled layout, shared by every run (it is never changed).
fn template() -> Arc<ConfigTemplate> {
    static TEMPLATE: OnceLock<Arc<ConfigTemplate>> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let layout = parse_layout("fuzz.toml", LAYOUT).expect("the fuzz layout parses");
        Arc::new(compile(Arc::new(layout)))
    });
    Arc::clone(template)
}

/// The server's settings: a DMA request the client does not answer fails at once.
fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        Arc::new(ServerConfig {
            dma_timeout: Duration::from_micros(100),
            ..ServerConfig::default()
        })
    });
    Arc::clone(config)
}

/// A message: `header` with its size, then `payload`.
fn message(header: Header, payload: &[u8]) -> Vec<u8> {
    [&header.encode()[..], payload].concat()
}

/// What the first input byte puts before the rest.
fn prefix(mode: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    if mode & 1 != 0 {
        let twin_socket = (mode & 4 != 0).then_some(TwinSocket {
            supported: true,
            fd_index: None,
        });
        let mig_data_shared = (mode & 8 != 0).then_some(true);
        let version = Version {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            capabilities: Capabilities {
                twin_socket,
                mig_data_shared,
                ..Capabilities::qemu_proposal()
            },
        }
        .to_bytes();
        bytes.extend(message(
            Header::request(0, Command::Version, version.len()),
            &version,
        ));
        if mode & 2 != 0 {
            // COMMAND: I/O, memory and bus master enable.
            let write = RegionWrite {
                offset: 4,
                region: CONFIG_REGION,
                data: vec![0x07, 0x00],
            }
            .to_bytes();
            bytes.extend(message(
                Header::request(1, Command::RegionWrite, write.len()),
                &write,
            ));
        }
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let function = VirtualFunction::new(template(), Box::new(Registers::default()))
        .expect("the fuzz layout needs no physical function");
    let port = Port::new("fuzz", Arc::new(function));
    let (client, server) = UnixStream::pair().expect("socketpair");
    let rest = &rest[..rest.len().min(MAX_INPUT)];
    let twin = mode & 5 == 5;
    let (twin_input, rest) = match rest.split_first() {
        Some((&share, rest)) if twin => rest.split_at(rest.len() * usize::from(share) / 256),
        _ => (&[][..], rest),
    };

    // Everything the client sends is queued before the server runs: a full buffer drops the
    // rest instead of blocking.
    queue(&client, &prefix(mode));
    let rest = match (mode >> 4) & 3 {
        0 => rest,
        kind => send_fd(&client, kind, rest),
    };
    queue(&client, rest);
    client.shutdown(Shutdown::Write).expect("shutdown");

    let config = config();
    let serving = std::thread::spawn(move || serve_connection(&port, &config, server));
    // In twin-socket mode the VERSION reply, first, brings the twin socket: its input is
    // queued there, and what the server sends on it is drained until the server closes it
    // with the connection.
    let draining = twin.then(|| twin_socket(&client)).flatten().map(|twin| {
        queue(&twin, twin_input);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut &twin, &mut std::io::sink());
        })
    });
    // Replies until the server closes its end, which it must once the input is consumed (or
    // refused: closing with input unread makes the end of the replies ECONNRESET).
    let _ = std::io::copy(&mut &client, &mut std::io::sink());
    serving.join().expect("the server thread");
    if let Some(draining) = draining {
        draining.join().expect("the twin socket's drain");
    }
});

/// Registers a shared buffer with an fd of `kind` (1: a memfd sealed against resizing, 2:
/// an unsealed memfd, 3: a socket) whose size comes from the first byte of `rest` (in 16 KiB);
/// returns the rest after it.
fn send_fd<'a>(client: &UnixStream, kind: u8, rest: &'a [u8]) -> &'a [u8] {
    let (size, rest) = rest.split_at(rest.len().min(1));
    let len = u64::from(size.first().copied().unwrap_or(1)) << 14;
    let fd: OwnedFd = match kind {
        1 | 2 => {
            let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
            let fd = rustix::fs::memfd_create("fuzz", flags).expect("memfd");
            rustix::fs::ftruncate(&fd, len).expect("ftruncate");
            let seals = if kind == 1 {
                SHARED_SEALS
            } else {
                SealFlags::empty()
            };
            rustix::fs::fcntl_add_seals(&fd, seals).expect("seals");
            fd
        }
        _ => UnixStream::pair().expect("socketpair").0.into(),
    };
    let request = DeviceFeature::set(FEATURE_MIG_DATA_BUFFER, Vec::new()).to_bytes();
    let header = Header::request(0x7fff, Command::DeviceFeature, request.len());
    let _ = write_message(client, &header, &request, &[fd.as_fd()]);
    rest
}

/// Writes what fits of `bytes` into `socket`'s buffer without blocking.
fn queue(socket: &UnixStream, bytes: &[u8]) {
    socket.set_nonblocking(true).expect("non-blocking");
    let _ = (&*socket).write_all(bytes);
    socket.set_nonblocking(false).expect("blocking");
}

/// The twin socket the VERSION reply brought, if it did.
fn twin_socket(client: &UnixStream) -> Option<UnixStream> {
    let reply = read_message(client, &Limits::default()).ok()?;
    reply.fds.into_iter().next().map(UnixStream::from)
}
