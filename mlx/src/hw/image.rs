//! A VF's saved state as the firmware writes and reads it (the opaque bytes a driver carries
//! in FW_DATA records): a fixed header with the function's features and data-plane state,
//! then, when the header says so, the function's device context memory.
//!
//! The context memory stands for the large on-device state of a real function (steering
//! tables, queue contexts). It is *generated*, not held: page `p` of a context with seed `s`
//! is a 4 KiB pattern derived from `s` with `(s, p)` stamped in its first 16 bytes. Saving
//! generates the pages as they are written out and loading checks every page as it arrives,
//! so a state of several GiB moves without being held in memory, and a page lost, repeated,
//! reordered or corrupted on the way fails the load.
//!
//! Header (80 bytes, big-endian): `"MLXI"`, version, flags (bit 0: context follows),
//! 2 reserved, features (be32), ring base (be64), ring size (be32), enabled (be32), producer,
//! consumer (be32), seq, accum (be64), error, ctx_pages, ctx_seed (be32), 4 reserved, and a
//! checksum of the first 76 bytes (be32).

use super::dataplane::DataPlane;
use super::ifc::{SYNDROME_BAD_IMAGE, be32, be64, put_be32, put_be64};

/// Bytes of an image header.
pub const HEADER_BYTES: usize = 80;
/// Bytes of a context page.
pub const PAGE_BYTES: usize = 4096;
/// Header flag: the context memory follows.
pub const FLAG_CONTEXT: u8 = 1;
const MAGIC: &[u8; 4] = b"MLXI";
const VERSION: u8 = 1;
const CHECKSUM_AT: usize = HEADER_BYTES - 4;

/// The state a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The function's enabled features.
    pub features: u32,
    /// The data plane.
    pub plane: DataPlane,
    /// Whether the context memory follows.
    pub with_context: bool,
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        let p = &self.plane;
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = if self.with_context { FLAG_CONTEXT } else { 0 };
        put_be32(&mut b, 8, self.features);
        put_be64(&mut b, 12, p.base);
        put_be32(&mut b, 20, p.size);
        put_be32(&mut b, 24, u32::from(p.enabled));
        put_be32(&mut b, 28, p.producer);
        put_be32(&mut b, 32, p.consumer);
        put_be64(&mut b, 36, p.seq);
        put_be64(&mut b, 44, p.accum);
        put_be32(&mut b, 52, p.error);
        put_be32(&mut b, 56, p.ctx_pages);
        put_be32(&mut b, 60, p.ctx_seed);
        let sum = checksum(&b[..CHECKSUM_AT]);
        put_be32(&mut b, CHECKSUM_AT, sum);
        b
    }

    /// Reads a header; `None` when it is not one (magic, version, checksum, fields).
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Option<Self> {
        if &b[..4] != MAGIC
            || b[4] != VERSION
            || b[5] & !FLAG_CONTEXT != 0
            || checksum(&b[..CHECKSUM_AT]) != be32(b, CHECKSUM_AT)
        {
            return None;
        }
        let enabled = be32(b, 24);
        let size = be32(b, 20);
        if enabled > 1 || (enabled == 1 && !size.is_power_of_two()) {
            return None;
        }
        Some(Self {
            features: be32(b, 8),
            with_context: b[5] & FLAG_CONTEXT != 0,
            plane: DataPlane {
                base: be64(b, 12),
                size,
                enabled: enabled == 1,
                producer: be32(b, 28),
                consumer: be32(b, 32),
                seq: be64(b, 36),
                accum: be64(b, 44),
                error: be32(b, 52),
                ctx_pages: be32(b, 56),
                ctx_seed: be32(b, 60),
            },
        })
    }

    /// Bytes of the image this header starts.
    pub fn image_len(&self) -> u64 {
        let context = if self.with_context {
            u64::from(self.plane.ctx_pages) * PAGE_BYTES as u64
        } else {
            0
        };
        HEADER_BYTES as u64 + context
    }
}

/// The pages of a context memory with one seed.
pub struct Context {
    seed: u32,
    pattern: Vec<u8>,
}

impl Context {
    /// The context with `seed`.
    pub fn new(seed: u32) -> Self {
        let mut x = u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15;
        let mut pattern = vec![0u8; PAGE_BYTES];
        for word in pattern.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        Self { seed, pattern }
    }

    /// Writes bytes `at..at + out.len()` of the context (as many pages as needed).
    pub fn generate(&self, at: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let position = at + done as u64;
            let page = position / PAGE_BYTES as u64;
            let within = (position % PAGE_BYTES as u64) as usize;
            let n = (PAGE_BYTES - within).min(out.len() - done);
            if within == 0 && n == PAGE_BYTES {
                self.page(page, &mut out[done..done + n]);
            } else {
                let mut full = vec![0u8; PAGE_BYTES];
                self.page(page, &mut full);
                out[done..done + n].copy_from_slice(&full[within..within + n]);
            }
            done += n;
        }
    }

    fn page(&self, page: u64, out: &mut [u8]) {
        out.copy_from_slice(&self.pattern);
        out[..4].copy_from_slice(&self.seed.to_le_bytes());
        out[8..16].copy_from_slice(&page.to_le_bytes());
    }

    /// Whether `data` is bytes `at..at + data.len()` of the context.
    pub fn matches(&self, at: u64, data: &[u8]) -> bool {
        let mut done = 0;
        let mut expected = vec![0u8; PAGE_BYTES.min(data.len())];
        while done < data.len() {
            let position = at + done as u64;
            let within = (position % PAGE_BYTES as u64) as usize;
            let n = (PAGE_BYTES - within).min(data.len() - done);
            self.generate(position, &mut expected[..n]);
            if expected[..n] != data[done..done + n] {
                return false;
            }
            done += n;
        }
        true
    }
}

/// Writes one image out in pieces.
pub struct ImageWriter {
    header: [u8; HEADER_BYTES],
    context: Option<Context>,
    len: u64,
    position: u64,
}

impl ImageWriter {
    /// The image of `header`.
    pub fn new(header: &Header) -> Self {
        Self {
            header: header.encode(),
            context: header
                .with_context
                .then(|| Context::new(header.plane.ctx_seed)),
            len: header.image_len(),
            position: 0,
        }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> u64 {
        self.len - self.position
    }

    /// Writes the next bytes into `out`; returns how many.
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        let n = usize::try_from(self.remaining()).map_or(out.len(), |r| r.min(out.len()));
        let mut done = 0;
        if self.position < HEADER_BYTES as u64 {
            let from = self.position as usize;
            let m = (HEADER_BYTES - from).min(n);
            out[..m].copy_from_slice(&self.header[from..from + m]);
            done = m;
        }
        if done < n
            && let Some(context) = &self.context
        {
            let at = self.position + done as u64 - HEADER_BYTES as u64;
            context.generate(at, &mut out[done..n]);
        }
        self.position += n as u64;
        n
    }
}

/// Reads images one after another as their bytes arrive, checking every byte.
#[derive(Default)]
pub struct ImageReader {
    header: Vec<u8>,
    current: Option<(Header, Option<Context>)>,
    context_at: u64,
    last: Option<Header>,
}

impl ImageReader {
    /// Takes the next bytes; a corrupt image fails with [`SYNDROME_BAD_IMAGE`].
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), u32> {
        while !data.is_empty() {
            match &self.current {
                None => {
                    let n = (HEADER_BYTES - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() == HEADER_BYTES {
                        let mut raw = [0u8; HEADER_BYTES];
                        raw.copy_from_slice(&self.header);
                        self.header.clear();
                        let header = Header::decode(&raw).ok_or(SYNDROME_BAD_IMAGE)?;
                        let context = header
                            .with_context
                            .then(|| Context::new(header.plane.ctx_seed));
                        self.context_at = 0;
                        self.current = Some((header, context));
                        self.finish_if_done();
                    }
                }
                Some((header, context)) => {
                    let left = header.image_len() - HEADER_BYTES as u64 - self.context_at;
                    let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                    if let Some(context) = context
                        && !context.matches(self.context_at, &data[..n])
                    {
                        return Err(SYNDROME_BAD_IMAGE);
                    }
                    self.context_at += n as u64;
                    data = &data[n..];
                    self.finish_if_done();
                }
            }
        }
        Ok(())
    }

    fn finish_if_done(&mut self) {
        if let Some((header, _)) = &self.current
            && header.image_len() == HEADER_BYTES as u64 + self.context_at
        {
            self.last = Some(*header);
            self.current = None;
        }
    }

    /// Whether no image is partly read.
    pub fn at_boundary(&self) -> bool {
        self.current.is_none() && self.header.is_empty()
    }

    /// The header of the last complete image.
    pub fn last(&self) -> Option<&Header> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pages: u32, with_context: bool) -> Header {
        Header {
            features: 1,
            with_context,
            plane: DataPlane {
                base: 0x1000,
                size: 8,
                enabled: true,
                producer: 9,
                consumer: 7,
                seq: 7,
                accum: 0xabc,
                error: 0,
                ctx_pages: pages,
                ctx_seed: 42,
            },
        }
    }

    fn write_all(writer: &mut ImageWriter, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = writer.fill(&mut buf);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn images_round_trip_in_any_pieces_and_back_to_back() {
        let h = header(3, true);
        let image = write_all(&mut ImageWriter::new(&h), 1000);
        assert_eq!(image.len() as u64, h.image_len());
        let delta = write_all(&mut ImageWriter::new(&header(3, false)), 7);
        let mut reader = ImageReader::default();
        for piece in image.chunks(333).chain(delta.chunks(50)) {
            reader.feed(piece).unwrap();
        }
        assert!(reader.at_boundary());
        assert_eq!(reader.last(), Some(&header(3, false)));
    }

    #[test]
    fn a_changed_byte_anywhere_fails_the_load() {
        let h = header(2, true);
        let image = write_all(&mut ImageWriter::new(&h), 4096);
        for at in [0, 5, 40, 79, 80, 100, 4200, image.len() - 1] {
            let mut bad = image.clone();
            bad[at] ^= 0x10;
            let mut reader = ImageReader::default();
            assert_eq!(reader.feed(&bad), Err(SYNDROME_BAD_IMAGE), "byte {at}");
        }
        let mut cut = ImageReader::default();
        cut.feed(&image[..image.len() - 1]).unwrap();
        assert!(!cut.at_boundary());
        assert_eq!(cut.last(), None);
    }
}
