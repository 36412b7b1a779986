//! Arbitrary bytes from a migration source, read by the destination side of the link
//! (`serve_destination`, what `vfio-variant migrate-agent` runs inside its TLS link once the
//! source is authenticated; the TLS records themselves are rustls's) into a device
//! that checks the calls it gets: never a panic, never a device call out of order (data only
//! while resuming, resume only after HELLO), and the device put back unless the destination
//! answered RESUMED.
#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use vfio_variant::migration::{MigrationFlags, MigrationState};
use vfio_variant::migration_driver::link::Message;
use vfio_variant::migration_driver::{CallError, MigratableDevice, Served, serve_destination};

/// The source's bytes in, the destination's answers out.
struct Link {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Device {
    state: Option<MigrationState>,
    loaded: usize,
    recovered: bool,
}

impl MigratableDevice for Device {
    fn flags(&mut self) -> Result<MigrationFlags, CallError> {
        Ok(MigrationFlags::STOP_COPY)
    }
    fn set_state(&mut self, state: MigrationState) -> Result<(), CallError> {
        match state {
            MigrationState::Resuming => assert_eq!(self.state, None, "resuming twice"),
            MigrationState::Running => {
                assert_eq!(
                    self.state,
                    Some(MigrationState::Resuming),
                    "resumed unloaded"
                )
            }
            other => panic!("unexpected state {other:?}"),
        }
        self.state = Some(state);
        Ok(())
    }
    fn read(&mut self, _: u32) -> Result<Vec<u8>, CallError> {
        panic!("a destination never reads");
    }
    fn write(&mut self, data: &[u8]) -> Result<(), CallError> {
        assert_eq!(
            self.state,
            Some(MigrationState::Resuming),
            "data while not resuming"
        );
        self.loaded += data.len();
        Ok(())
    }
    fn chunk_size(&self) -> u32 {
        4096
    }
    fn recover(&mut self) -> Result<(), CallError> {
        self.recovered = true;
        self.state = None;
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    // Each message on its own first: the parser.
    let mut cursor = Cursor::new(input);
    while let Ok(message) = Message::read_from(&mut cursor) {
        let mut bytes = Vec::new();
        message
            .write_to(&mut bytes)
            .expect("a parsed message encodes");
        assert_eq!(
            Message::read_from(&mut bytes.as_slice()).ok(),
            Some(message)
        );
    }
    // Then the whole exchange.
    let mut link = Link {
        input: Cursor::new(input.to_vec()),
        output: Vec::new(),
    };
    let mut device = Device::default();
    let served = serve_destination(&mut link, |name| {
        if name.is_empty() {
            Err("no such function".to_string())
        } else {
            Ok(std::mem::take(&mut device))
        }
    });
    if let Ok(Served::Resumed { bytes }) = served {
        let mut answers = link.output.as_slice();
        let mut last = None;
        while let Ok(message) = Message::read_from(&mut answers) {
            last = Some(message);
        }
        assert_eq!(last, Some(Message::Resumed));
        let _ = bytes;
    }
});
