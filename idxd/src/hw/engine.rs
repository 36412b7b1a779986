//! The engine: executes descriptors against the memory of the submitting WQ's address space.
//!
//! Data moves in page-bounded chunks (no chunk crosses a 4 KiB boundary of any buffer), so a
//! fault stops an operation exactly where real hardware would: the completion record says how
//! many bytes completed and which address faulted.

use vfio_variant::backend::DmaAccess;

use super::completion::{COMPLETION_SIZE, Completion, status};
use super::descriptor::{DESCRIPTOR_SIZE, Descriptor, flag, op};

const PAGE: u64 = 4096;

/// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78) lookup tables for slicing by 8:
/// `TABLES[0]` is the byte-at-a-time table, `TABLES[k][b]` the CRC of `b` followed by `k`
/// zero bytes.
const TABLES: [[u32; 256]; 8] = crc32c_tables();

const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        tables[0][i] = c;
        i += 1;
    }
    let mut t = 1;
    while t < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[t - 1][i];
            tables[t][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        t += 1;
    }
    tables
}

/// Continues a raw (not inverted) CRC-32C computation over `data`, eight bytes at a time.
fn crc32c_update(mut state: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = state ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        state = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][usize::from(w[4])]
            ^ TABLES[2][usize::from(w[5])]
            ^ TABLES[1][usize::from(w[6])]
            ^ TABLES[0][usize::from(w[7])];
    }
    for &byte in words.remainder() {
        state = TABLES[0][((state ^ u32::from(byte)) & 0xff) as usize] ^ (state >> 8);
    }
    state
}

/// CRC-32C as DSA computes it with a seed: the seed is inverted before and the result after,
/// so seed 0 gives the standard CRC-32C (`"123456789"` -> `0xe3069283`).
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c_update(!seed, data)
}

/// What a submission produced besides memory writes and completion records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Events {
    /// Interrupt handles of descriptors that asked for a completion interrupt, in order.
    pub interrupts: Vec<u16>,
    /// Errors that could not be reported in a completion record (for SWERR).
    pub software_errors: Vec<u8>,
}

/// A faulting access.
struct Fault {
    addr: u64,
    write: bool,
}

fn read(mem: &dyn DmaAccess, addr: u64, data: &mut [u8]) -> Result<(), Fault> {
    mem.read(addr, data)
        .map_err(|_| Fault { addr, write: false })
}

fn write(mem: &dyn DmaAccess, addr: u64, data: &[u8]) -> Result<(), Fault> {
    mem.write(addr, data)
        .map_err(|_| Fault { addr, write: true })
}

/// The chunk starting `done` bytes into each buffer: up to the next page boundary of any.
fn chunk(addrs: &[u64], done: u64, total: u64) -> usize {
    addrs
        .iter()
        .map(|a| PAGE - (a.wrapping_add(done) % PAGE))
        .fold(total - done, u64::min) as usize
}

/// The chunk ending `done` bytes before the end of each buffer (for descending copies).
fn chunk_back(addrs: &[u64], done: u64, total: u64) -> usize {
    addrs
        .iter()
        .map(|a| match a.wrapping_add(total - done) % PAGE {
            0 => PAGE,
            n => n,
        })
        .fold(total - done, u64::min) as usize
}

fn faulted(fault: Fault, done: u64) -> Completion {
    Completion {
        status: status::PAGE_FAULT | if fault.write { status::FAULT_WRITE } else { 0 },
        bytes_completed: done as u32,
        fault_addr: fault.addr,
        ..Completion::default()
    }
}

fn success(bytes: u64) -> Completion {
    Completion {
        status: status::SUCCESS,
        bytes_completed: bytes as u32,
        ..Completion::default()
    }
}

/// The DSA engine of a group, with the device's limits.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    /// Largest transfer size in bytes.
    pub max_transfer: u32,
    /// Largest number of descriptors in a batch.
    pub max_batch: u32,
}

impl Engine {
    /// Runs one submitted descriptor: executes it, writes its completion record when asked
    /// (or on error when the record address is valid), and collects interrupts and errors.
    pub fn submit(
        &self,
        mem: &dyn DmaAccess,
        desc: &Descriptor,
        events: &mut Events,
    ) -> Completion {
        self.process(mem, desc, false, events)
    }

    fn process(
        &self,
        mem: &dyn DmaAccess,
        desc: &Descriptor,
        in_batch: bool,
        events: &mut Events,
    ) -> Completion {
        let completion = if in_batch && desc.opcode == op::BATCH {
            Completion::with_status(status::BAD_OPCODE)
        } else {
            self.execute(mem, desc, events)
        };
        let ok = matches!(completion.code(), status::SUCCESS | status::SUCCESS_PRED);
        if desc.flags & flag::CRAV != 0 && (desc.flags & flag::RCR != 0 || !ok) {
            if !desc.completion_addr.is_multiple_of(COMPLETION_SIZE as u64) {
                events.software_errors.push(status::CRA_ALIGN);
            } else if mem
                .write(desc.completion_addr, &completion.encode())
                .is_err()
            {
                events.software_errors.push(status::CRA_XLAT);
            }
        } else if !ok {
            events.software_errors.push(completion.code());
        }
        if desc.flags & flag::RCI != 0 {
            events.interrupts.push(desc.int_handle);
        }
        completion
    }

    fn execute(&self, mem: &dyn DmaAccess, d: &Descriptor, events: &mut Events) -> Completion {
        match d.opcode {
            op::NOP | op::DRAIN => return success(0),
            op::BATCH => return self.batch(mem, d, events),
            op::MEMMOVE
            | op::FILL
            | op::COMPARE
            | op::COMPARE_PATTERN
            | op::DUALCAST
            | op::CRC_GEN
            | op::COPY_CRC
            | op::CACHE_FLUSH => {}
            _ => return Completion::with_status(status::BAD_OPCODE),
        }
        if d.size == 0 || d.size > self.max_transfer {
            return Completion::with_status(status::XFER_ERANGE);
        }
        let size = u64::from(d.size);
        match d.opcode {
            op::MEMMOVE => memmove(mem, d.src, d.dst, size),
            op::FILL => fill(mem, d.dst, d.src.to_le_bytes(), size),
            op::COMPARE => compare(mem, d, Source::Buffer(d.dst), size),
            op::COMPARE_PATTERN => compare(mem, d, Source::Pattern(d.dst.to_le_bytes()), size),
            op::DUALCAST if !(d.dst ^ d.extra).is_multiple_of(PAGE) => {
                Completion::with_status(status::DCAST_ERR)
            }
            op::DUALCAST => copy(mem, d.src, &[d.dst, d.extra], size, None),
            op::CRC_GEN => copy(mem, d.src, &[], size, Some(d.extra as u32)),
            op::COPY_CRC => copy(mem, d.src, &[d.dst], size, Some(d.extra as u32)),
            _ => cache_flush(mem, d.dst, size),
        }
    }

    fn batch(&self, mem: &dyn DmaAccess, d: &Descriptor, events: &mut Events) -> Completion {
        if d.size < 2 || d.size > self.max_batch {
            return Completion::with_status(status::DESC_CNT_ERANGE);
        }
        if !d.src.is_multiple_of(DESCRIPTOR_SIZE as u64) {
            return Completion::with_status(status::DESCLIST_ALIGN);
        }
        let mut failed = false;
        let mut completed = 0u32;
        for i in 0..u64::from(d.size) {
            let addr = d.src.wrapping_add(i * DESCRIPTOR_SIZE as u64);
            let mut bytes = [0u8; DESCRIPTOR_SIZE];
            if mem.read(addr, &mut bytes).is_err() {
                return Completion {
                    status: status::BATCH_PAGE_FAULT,
                    bytes_completed: completed,
                    fault_addr: addr,
                    ..Completion::default()
                };
            }
            let sub = Descriptor::decode(&bytes);
            if failed && sub.flags & flag::FENCE != 0 {
                break;
            }
            let c = self.process(mem, &sub, true, events);
            failed |= !matches!(c.code(), status::SUCCESS | status::SUCCESS_PRED);
            completed += 1;
        }
        Completion {
            status: if failed {
                status::BATCH_FAIL
            } else {
                status::SUCCESS
            },
            bytes_completed: completed,
            ..Completion::default()
        }
    }
}

fn memmove(mem: &dyn DmaAccess, src: u64, dst: u64, size: u64) -> Completion {
    // The whole move at once when every byte is reachable (the common case, at memory speed);
    // after a fault, page by page again to say exactly how far it got.
    if let Ok(len) = usize::try_from(size)
        && src.checked_add(size).is_some()
        && dst.checked_add(size).is_some()
        && mem.copy(src, dst, len).is_ok()
    {
        return success(size);
    }
    let descending = dst > src && dst < src.wrapping_add(size);
    let mut buffer = [0u8; PAGE as usize];
    let mut done = 0;
    while done < size {
        let (len, at) = if descending {
            let len = chunk_back(&[src, dst], done, size);
            (len, size - done - len as u64)
        } else {
            (chunk(&[src, dst], done, size), done)
        };
        let part = &mut buffer[..len];
        let moved = read(mem, src.wrapping_add(at), part)
            .and_then(|()| write(mem, dst.wrapping_add(at), part));
        if let Err(fault) = moved {
            return faulted(fault, done);
        }
        done += len as u64;
    }
    success(size)
}

fn fill(mem: &dyn DmaAccess, dst: u64, pattern: [u8; 8], size: u64) -> Completion {
    let mut buffer = [0u8; PAGE as usize];
    let mut done = 0;
    while done < size {
        let len = chunk(&[dst], done, size);
        for (i, byte) in buffer[..len].iter_mut().enumerate() {
            *byte = pattern[(done as usize + i) % 8];
        }
        if let Err(fault) = write(mem, dst.wrapping_add(done), &buffer[..len]) {
            return faulted(fault, done);
        }
        done += len as u64;
    }
    success(size)
}

enum Source {
    Buffer(u64),
    Pattern([u8; 8]),
}

fn compare(mem: &dyn DmaAccess, d: &Descriptor, other: Source, size: u64) -> Completion {
    let mut a = [0u8; PAGE as usize];
    let mut b = [0u8; PAGE as usize];
    let addrs: &[u64] = match other {
        Source::Buffer(src2) => &[d.src, src2],
        Source::Pattern(_) => &[d.src],
    };
    let mut done = 0;
    let mut difference = None;
    while done < size && difference.is_none() {
        let len = chunk(addrs, done, size);
        if let Err(fault) = read(mem, d.src.wrapping_add(done), &mut a[..len]) {
            return faulted(fault, done);
        }
        match other {
            Source::Buffer(src2) => {
                if let Err(fault) = read(mem, src2.wrapping_add(done), &mut b[..len]) {
                    return faulted(fault, done);
                }
            }
            Source::Pattern(pattern) => {
                for (i, byte) in b[..len].iter_mut().enumerate() {
                    *byte = pattern[(done as usize + i) % 8];
                }
            }
        }
        difference = a[..len]
            .iter()
            .zip(&b[..len])
            .position(|(x, y)| x != y)
            .map(|i| done + i as u64);
        done += len as u64;
    }
    let result = u8::from(difference.is_some());
    let expected = (d.extra & 1) as u8;
    Completion {
        status: if d.flags & flag::CHECK_RESULT != 0 && result != expected {
            status::SUCCESS_PRED
        } else {
            status::SUCCESS
        },
        result,
        bytes_completed: difference.unwrap_or(0) as u32,
        ..Completion::default()
    }
}

/// Reads `src` and writes it to every destination; with a seed, computes CRC-32C over it.
fn copy(mem: &dyn DmaAccess, src: u64, dsts: &[u64], size: u64, seed: Option<u32>) -> Completion {
    let mut addrs = vec![src];
    addrs.extend_from_slice(dsts);
    let mut buffer = [0u8; PAGE as usize];
    let mut crc = seed.map(|s| !s);
    let mut done = 0;
    while done < size {
        let len = chunk(&addrs, done, size);
        let part = &mut buffer[..len];
        let mut moved = read(mem, src.wrapping_add(done), part);
        for dst in dsts {
            moved = moved.and_then(|()| write(mem, dst.wrapping_add(done), part));
        }
        if let Err(fault) = moved {
            let mut c = faulted(fault, done);
            c.crc = crc.map_or(0, |s| u64::from(!s));
            return c;
        }
        crc = crc.map(|s| crc32c_update(s, part));
        done += len as u64;
    }
    let mut c = success(size);
    c.crc = crc.map_or(0, |s| u64::from(!s));
    c
}

/// Flushes a range: the model has no caches, but the range must translate.
fn cache_flush(mem: &dyn DmaAccess, dst: u64, size: u64) -> Completion {
    let mut buffer = [0u8; PAGE as usize];
    let mut done = 0;
    while done < size {
        let len = chunk(&[dst], done, size);
        if let Err(fault) = read(mem, dst.wrapping_add(done), &mut buffer[..len]) {
            return faulted(fault, done);
        }
        done += len as u64;
    }
    success(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testing::PagedMemory;

    const BASE: u64 = 0x10_0000;
    const CR: u64 = BASE;
    const SRC: u64 = BASE + 0x1000;
    const DST: u64 = BASE + 0x4000;

    fn engine() -> Engine {
        Engine {
            max_transfer: 1 << 21,
            max_batch: 32,
        }
    }

    fn memory() -> PagedMemory {
        PagedMemory::new(BASE, 16)
    }

    fn desc(opcode: u8, src: u64, dst: u64, size: u32) -> Descriptor {
        Descriptor {
            opcode,
            flags: flag::CRAV | flag::RCR,
            completion_addr: CR,
            src,
            dst,
            size,
            ..Descriptor::default()
        }
    }

    fn run(mem: &PagedMemory, d: &Descriptor) -> (Completion, Events) {
        let mut events = Events::default();
        let returned = engine().submit(mem, d, &mut events);
        let mut record = [0u8; COMPLETION_SIZE];
        record.copy_from_slice(&mem.get(d.completion_addr, COMPLETION_SIZE));
        assert_eq!(Completion::decode(&record), returned, "record written");
        (returned, events)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Bit-at-a-time CRC-32C, the definition the tables must agree with.
    fn crc32c_bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn crc32c_tables_agree_with_the_bitwise_definition() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 131 + 7) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 1000] {
            assert_eq!(
                crc32c(0, &data[..len]),
                crc32c_bitwise(&data[..len]),
                "{len}"
            );
        }
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
        let (a, b) = b"123456789".split_at(4);
        assert_eq!(crc32c(crc32c(0, a), b), 0xe306_9283, "seed continues");
    }

    #[test]
    fn nop_and_drain_succeed_and_interrupt_on_request() {
        let mem = memory();
        for opcode in [op::NOP, op::DRAIN] {
            let mut d = desc(opcode, 0, 0, 0);
            d.flags |= flag::RCI;
            d.int_handle = 3;
            let (c, events) = run(&mem, &d);
            assert_eq!(c.status, status::SUCCESS);
            assert_eq!(events.interrupts, vec![3]);
        }
    }

    #[test]
    fn memmove_copies_across_pages_and_overlapping() {
        let mem = memory();
        let data = pattern(0x2100);
        mem.put(SRC + 0x80, &data);
        let (c, _) = run(&mem, &desc(op::MEMMOVE, SRC + 0x80, DST + 0x10, 0x2100));
        assert_eq!((c.status, c.bytes_completed), (status::SUCCESS, 0x2100));
        assert_eq!(mem.get(DST + 0x10, 0x2100), data);
        // Overlapping, destination above the source: memmove semantics.
        let (c, _) = run(&mem, &desc(op::MEMMOVE, DST + 0x10, DST + 0x110, 0x2100));
        assert_eq!(c.status, status::SUCCESS);
        assert_eq!(mem.get(DST + 0x110, 0x2100), data);
        // And below.
        let (c, _) = run(&mem, &desc(op::MEMMOVE, DST + 0x110, DST + 0x8, 0x2100));
        assert_eq!(c.status, status::SUCCESS);
        assert_eq!(mem.get(DST + 0x8, 0x2100), data);
    }

    #[test]
    fn memmove_fault_reports_progress_and_address() {
        let mem = memory();
        mem.unmap(SRC + 0x2000);
        let (c, _) = run(&mem, &desc(op::MEMMOVE, SRC + 0x800, DST + 0x4000, 0x3000));
        assert_eq!(c.status, status::PAGE_FAULT);
        assert_eq!(c.bytes_completed, 0x1800);
        assert_eq!(c.fault_addr, SRC + 0x2000);
        // Write fault: status bit 7.
        mem.unmap(DST + 0x1000);
        let (c, _) = run(&mem, &desc(op::MEMMOVE, SRC, DST, 0x1800));
        assert_eq!(c.status, status::PAGE_FAULT | status::FAULT_WRITE);
        assert_eq!((c.bytes_completed, c.fault_addr), (0x1000, DST + 0x1000));
    }

    #[test]
    fn fill_repeats_the_pattern() {
        let mem = memory();
        let (c, _) = run(
            &mem,
            &desc(op::FILL, 0x0807_0605_0403_0201, DST + 3, 0x1003),
        );
        assert_eq!(c.status, status::SUCCESS);
        let out = mem.get(DST + 3, 0x1003);
        assert!(out.iter().enumerate().all(|(i, &b)| b == (i % 8) as u8 + 1));
        assert_eq!(mem.get(DST, 3), vec![0; 3]);
    }

    #[test]
    fn compare_reports_the_first_difference_and_checks_the_result() {
        let mem = memory();
        let data = pattern(0x1800);
        mem.put(SRC, &data);
        mem.put(DST, &data);
        let (c, _) = run(&mem, &desc(op::COMPARE, SRC, DST, 0x1800));
        assert_eq!((c.status, c.result), (status::SUCCESS, 0));
        mem.put(DST + 0x1234, &[!data[0x1234]]);
        let (c, _) = run(&mem, &desc(op::COMPARE, SRC, DST, 0x1800));
        assert_eq!(
            (c.status, c.result, c.bytes_completed),
            (status::SUCCESS, 1, 0x1234)
        );
        let mut checked = desc(op::COMPARE, SRC, DST, 0x1800);
        checked.flags |= flag::CHECK_RESULT;
        let (c, _) = run(&mem, &checked);
        assert_eq!(
            c.status,
            status::SUCCESS_PRED,
            "expected equal, got different"
        );
        checked.extra = 1;
        let (c, _) = run(&mem, &checked);
        assert_eq!(c.status, status::SUCCESS);
    }

    #[test]
    fn compare_pattern_and_its_fault() {
        let mem = memory();
        let p = 0x1122_3344_5566_7788u64;
        let (c, _) = run(&mem, &desc(op::FILL, p, DST, 0x2000));
        assert_eq!(c.status, status::SUCCESS);
        let (c, _) = run(&mem, &desc(op::COMPARE_PATTERN, DST, p, 0x2000));
        assert_eq!((c.status, c.result), (status::SUCCESS, 0));
        let (c, _) = run(&mem, &desc(op::COMPARE_PATTERN, DST, p + 1, 0x2000));
        assert_eq!((c.result, c.bytes_completed), (1, 0));
        mem.unmap(DST + 0x1000);
        let (c, _) = run(&mem, &desc(op::COMPARE_PATTERN, DST, p, 0x2000));
        assert_eq!(
            (c.status, c.bytes_completed, c.fault_addr),
            (status::PAGE_FAULT, 0x1000, DST + 0x1000)
        );
    }

    #[test]
    fn dualcast_writes_both_destinations_with_equal_page_offsets() {
        let mem = memory();
        let data = pattern(0x1400);
        mem.put(SRC, &data);
        let mut d = desc(op::DUALCAST, SRC, DST + 0x40, 0x1400);
        d.extra = DST + 0x4040;
        let (c, _) = run(&mem, &d);
        assert_eq!(c.status, status::SUCCESS);
        assert_eq!(mem.get(DST + 0x40, 0x1400), data);
        assert_eq!(mem.get(DST + 0x4040, 0x1400), data);
        d.extra = DST + 0x4080;
        let (c, _) = run(&mem, &d);
        assert_eq!(c.status, status::DCAST_ERR);
    }

    #[test]
    fn crc_gen_and_copy_crc() {
        let mem = memory();
        mem.put(SRC + 0xffc, b"123456789");
        let (c, _) = run(&mem, &desc(op::CRC_GEN, SRC + 0xffc, 0, 9));
        assert_eq!((c.status, c.crc), (status::SUCCESS, 0xe306_9283));
        let mut d = desc(op::COPY_CRC, SRC + 0xffc, DST, 9);
        d.extra = 0x1234;
        let (c, _) = run(&mem, &d);
        assert_eq!(c.crc, u64::from(crc32c(0x1234, b"123456789")));
        assert_eq!(mem.get(DST, 9), b"123456789");
    }

    #[test]
    fn cache_flush_needs_a_translation() {
        let mem = memory();
        let (c, _) = run(&mem, &desc(op::CACHE_FLUSH, 0, DST, 0x2000));
        assert_eq!((c.status, c.bytes_completed), (status::SUCCESS, 0x2000));
        let (c, _) = run(&mem, &desc(op::CACHE_FLUSH, 0, BASE + 0x10_0000, 64));
        assert_eq!(
            (c.status, c.fault_addr),
            (status::PAGE_FAULT, BASE + 0x10_0000)
        );
    }

    #[test]
    fn invalid_descriptors_get_error_records() {
        let mem = memory();
        let (c, _) = run(&mem, &desc(0x07, SRC, DST, 64));
        assert_eq!(c.status, status::BAD_OPCODE);
        let (c, _) = run(&mem, &desc(op::MEMMOVE, SRC, DST, 0));
        assert_eq!(c.status, status::XFER_ERANGE);
        let (c, _) = run(&mem, &desc(op::MEMMOVE, SRC, DST, (1 << 21) + 1));
        assert_eq!(c.status, status::XFER_ERANGE);
        // No record requested: still written on error, since the address is valid.
        let mut d = desc(0xff, 0, 0, 0);
        d.flags = flag::CRAV;
        let (c, events) = run(&mem, &d);
        assert_eq!(c.status, status::BAD_OPCODE);
        assert!(events.software_errors.is_empty());
        // No valid record address: the error goes to SWERR.
        d.flags = 0;
        let mut events = Events::default();
        engine().submit(&mem, &d, &mut events);
        assert_eq!(events.software_errors, vec![status::BAD_OPCODE]);
        // Misaligned or unmapped record address.
        let mut d = desc(op::NOP, 0, 0, 0);
        d.completion_addr = CR + 8;
        let mut events = Events::default();
        engine().submit(&mem, &d, &mut events);
        assert_eq!(events.software_errors, vec![status::CRA_ALIGN]);
        d.completion_addr = 0x40;
        let mut events = Events::default();
        engine().submit(&mem, &d, &mut events);
        assert_eq!(events.software_errors, vec![status::CRA_XLAT]);
    }

    #[test]
    fn batch_runs_its_list_and_reports_failures() {
        let mem = memory();
        let list = BASE + 0x8000;
        mem.put(SRC, &pattern(256));
        let mut subs = vec![
            desc(op::MEMMOVE, SRC, DST, 256),
            desc(op::FILL, 0xaaaa_aaaa_aaaa_aaaa, DST + 0x1000, 64),
            desc(op::NOP, 0, 0, 0),
        ];
        subs[0].completion_addr = BASE + 0x20;
        subs[1].completion_addr = BASE + 0x40;
        subs[1].flags |= flag::RCI;
        subs[1].int_handle = 7;
        subs[2].completion_addr = BASE + 0x60;
        let write_list = |subs: &[Descriptor]| {
            for (i, s) in subs.iter().enumerate() {
                mem.put(list + 64 * i as u64, &s.encode());
            }
        };
        write_list(&subs);
        let (c, events) = run(&mem, &desc(op::BATCH, list, 0, 3));
        assert_eq!((c.status, c.bytes_completed), (status::SUCCESS, 3));
        assert_eq!(events.interrupts, vec![7]);
        assert_eq!(mem.get(DST, 256), pattern(256));
        assert_eq!(mem.get(DST + 0x1000, 64), vec![0xaa; 64]);
        assert_eq!(mem.get(BASE + 0x60, 1), vec![status::SUCCESS]);
        // A failing member fails the batch; a fenced one after it is not run.
        subs[0].opcode = op::BATCH;
        subs[2].flags |= flag::FENCE;
        write_list(&subs);
        let (c, _) = run(&mem, &desc(op::BATCH, list, 0, 3));
        assert_eq!((c.status, c.bytes_completed), (status::BATCH_FAIL, 2));
        assert_eq!(mem.get(BASE + 0x20, 1), vec![status::BAD_OPCODE]);
        // Count, alignment, and a list on an unmapped page.
        let (c, _) = run(&mem, &desc(op::BATCH, list, 0, 1));
        assert_eq!(c.status, status::DESC_CNT_ERANGE);
        let (c, _) = run(&mem, &desc(op::BATCH, list, 0, 33));
        assert_eq!(c.status, status::DESC_CNT_ERANGE);
        let (c, _) = run(&mem, &desc(op::BATCH, list + 8, 0, 2));
        assert_eq!(c.status, status::DESCLIST_ALIGN);
        let (c, _) = run(&mem, &desc(op::BATCH, BASE + 0x20_0000, 0, 2));
        assert_eq!(
            (c.status, c.fault_addr),
            (status::BATCH_PAGE_FAULT, BASE + 0x20_0000)
        );
    }

    #[test]
    fn random_descriptors_never_panic() {
        let mem = memory();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let address = |r: u64| match r % 4 {
            0 => BASE + r % (16 * 4096),
            1 => r,
            2 => u64::MAX - r % 4096,
            _ => BASE + (r % 16) * 4096 - 32,
        };
        for _ in 0..3000 {
            let (a, b, c, d) = (next(), next(), next(), next());
            let desc = Descriptor {
                pasid: 0,
                flags: (a >> 8) as u32 & 0xff_ffff,
                opcode: match a % 3 {
                    0 => op::SUPPORTED[(a >> 40) as usize % op::SUPPORTED.len()],
                    _ => (a >> 32) as u8,
                },
                completion_addr: address(b),
                src: address(c),
                dst: address(d),
                size: (next() % (80 << 10)) as u32,
                int_handle: 0,
                extra: address(next()),
            };
            // A list of random descriptors for BATCH.
            mem.put(BASE + 0x8000, &desc.encode());
            let mut events = Events::default();
            let c = engine().submit(&mem, &desc, &mut events);
            assert_ne!(c.status, 0);
        }
    }
}
