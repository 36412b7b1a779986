//! What the e2e expects, and the checks of one boot: the compiled layout of the sample function
//! ([`Layout`]), what the guest printed ([`Report`]), and the comparisons between them.

use std::fmt::Write as _;

use super::json::Json;
use crate::e2e::guest::{Console, GuestError};

/// `IORESOURCE_IO` in a sysfs `resource` line's flags.
const IORESOURCE_IO: u64 = 0x100;
/// `IORESOURCE_MEM`.
const IORESOURCE_MEM: u64 = 0x200;
/// `IORESOURCE_PREFETCH`.
const IORESOURCE_PREFETCH: u64 = 0x2000;
/// `IORESOURCE_MEM_64`.
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The value of the sample function's ID register (`VFIO`).
pub const ID_VALUE: u32 = 0x4f49_4656;
/// INT_STATUS bit: a DMA transfer with "interrupt when done" completed.
const INT_DMA_DONE: u32 = 1 << 0;
/// INT_STATUS bit: raised through the RAISE register.
const INT_RAISED: u32 = 1 << 1;
/// COMMAND bits the guest sets: memory decode and bus mastering.
const COMMAND_MEMORY_AND_MASTER: u32 = 0x6;

/// One BAR of the layout.
#[derive(Debug)]
pub struct Bar {
    /// BAR index (0-5).
    index: usize,
    /// `mem32`, `mem64` or `io`.
    kind: String,
    /// Whether it is prefetchable.
    prefetchable: bool,
    /// Its size in bytes.
    size: u64,
}

/// The sample function as `vfio-variant vpci check --json` compiles its layout.
pub struct Layout {
    /// Reset values of the config space.
    pub config: Vec<u8>,
    /// Bits software may write.
    write_mask: Vec<u8>,
    /// Bits that clear when 1 is written.
    rw1c_mask: Vec<u8>,
    /// The BARs.
    bars: Vec<Bar>,
}

impl Layout {
    /// Reads the output of `vpci check --json`.
    pub fn from_check_json(text: &str) -> Result<Layout, String> {
        let json = Json::parse(text)?;
        let hex = |key: &str| {
            json.get(key)
                .and_then(Json::as_str)
                .ok_or_else(|| format!("no string `{key}`"))
                .and_then(decode_hex)
                .map_err(|e| format!("`{key}`: {e}"))
        };
        let (config, write_mask, rw1c_mask) =
            (hex("config")?, hex("write_mask")?, hex("rw1c_mask")?);
        if config.len() != write_mask.len() || config.len() != rw1c_mask.len() {
            return Err(format!(
                "config ({}), write_mask ({}) and rw1c_mask ({}) differ in length",
                config.len(),
                write_mask.len(),
                rw1c_mask.len()
            ));
        }
        let mut bars = Vec::new();
        for bar in json
            .get("bars")
            .and_then(Json::as_array)
            .unwrap_or_default()
        {
            let field = |key: &str| bar.get(key).ok_or_else(|| format!("a BAR without `{key}`"));
            let index = field("index")?
                .as_u64()
                .filter(|index| *index < 6)
                .ok_or("a BAR index is not 0-5")?;
            bars.push(Bar {
                index: index as usize,
                kind: field("kind")?
                    .as_str()
                    .ok_or("a BAR kind is not a string")?
                    .into(),
                prefetchable: field("prefetchable")?
                    .as_bool()
                    .ok_or("a BAR's `prefetchable` is not a boolean")?,
                size: field("size")?
                    .as_u64()
                    .ok_or("a BAR size is not a number")?,
            });
        }
        Ok(Layout {
            config,
            write_mask,
            rw1c_mask,
            bars,
        })
    }

    /// The BARs, for the summary: `BAR0 4096 mem32, ...`.
    pub fn describe_bars(&self) -> String {
        let parts: Vec<String> = self
            .bars
            .iter()
            .map(|bar| {
                let prefetch = if bar.prefetchable {
                    " prefetchable"
                } else {
                    ""
                };
                format!(
                    "BAR{} {} {}{prefetch}",
                    bar.index,
                    size_text(bar.size),
                    bar.kind
                )
            })
            .collect();
        parts.join(", ")
    }
}

/// A size as `4K`, `64K`, `1M` when it is a whole number of those, else in bytes.
fn size_text(size: u64) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}K", s >> 10),
        s => format!("{s} bytes"),
    }
}

/// Decodes a hex string, two digits per byte.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", text.len()));
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex at {at}"))
        })
        .collect()
}

/// The `key=value` lines of one section.
pub struct Fields<'a> {
    /// The section's name, for messages.
    section: &'static str,
    /// The lines, split at the first `=`.
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    /// The `key=value` lines of `lines`; others are ignored.
    pub fn new(section: &'static str, lines: &[&'a str]) -> Self {
        Fields {
            section,
            pairs: lines
                .iter()
                .filter_map(|line| line.split_once('='))
                .collect(),
        }
    }

    /// The value of `key`.
    pub fn text(&self, key: &str) -> Result<&'a str, String> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value.trim())
            .ok_or_else(|| {
                format!(
                    "the guest printed no `{key}=` in section `{}`",
                    self.section
                )
            })
    }

    /// The value of `key` as a hex register value (`0x4F494656`, as busybox devmem prints).
    pub fn register(&self, key: &str) -> Result<u32, String> {
        let text = self.text(key)?;
        text.strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .ok_or_else(|| {
                format!(
                    "`{key}={text}` in section `{}` is not a hex value",
                    self.section
                )
            })
    }

    /// The value of `key` as a decimal number.
    pub fn number(&self, key: &str) -> Result<u64, String> {
        let text = self.text(key)?;
        text.parse().map_err(|_| {
            format!(
                "`{key}={text}` in section `{}` is not a number",
                self.section
            )
        })
    }
}

/// What the guest printed in one boot.
pub struct Report<'a> {
    /// The function's PCI address.
    bdf: &'a str,
    /// Its sysfs device path.
    path: &'a str,
    /// Its config space, all of it.
    config: Vec<u8>,
    /// Its sysfs `resource` file.
    resource: Vec<&'a str>,
    /// Register accesses.
    pub mmio: Fields<'a>,
    /// The shared-memory BAR.
    pub shm: Fields<'a>,
    /// The DMA transfer.
    pub dma: Fields<'a>,
    /// The interrupt through uio.
    pub irq: Fields<'a>,
}

impl<'a> Report<'a> {
    /// Reads the sections the guest printed; fails unless it got to the end.
    pub fn parse(console: &'a Console) -> Result<Report<'a>, GuestError> {
        console.section("done")?;
        let function = Fields::new("function", &console.section("function")?);
        let field = |key| function.text(key).map_err(|e| console.error(e));
        let bdf = field("bdf")?;
        if bdf == "none" {
            return Err(console.error("the guest found no PCI function 1234:11f8"));
        }
        let hex: String = console.section("config")?.concat();
        let config = decode_hex(&hex)
            .map_err(|e| console.error(format!("the config space the guest printed: {e}")))?;
        Ok(Report {
            bdf,
            path: field("path")?,
            config,
            resource: console.section("resource")?,
            mmio: Fields::new("mmio", &console.section("mmio")?),
            shm: Fields::new("shm", &console.section("shm")?),
            dma: Fields::new("dma", &console.section("dma")?),
            irq: Fields::new("irq", &console.section("irq")?),
        })
    }

    /// The function sits right behind the root port at bus 0 `slot` (so QEMU sees a PCIe bus).
    pub fn check_placement(&self, slot: u8) -> Result<String, String> {
        let expected = format!("/sys/devices/pci0000:00/0000:00:{slot:02x}.0/");
        let below = self.path.strip_prefix(&expected);
        if below.is_some_and(|rest| !rest.contains('/')) {
            Ok(format!(
                "function {} is behind the root port at 00:{slot:02x}.0",
                self.bdf
            ))
        } else {
            Err(format!(
                "the function is at {}, expected right below {expected}",
                self.path
            ))
        }
    }

    /// The config space equals the layout's reset values in every bit nobody may change:
    /// `(guest ^ layout) & !(write_mask | rw1c_mask)` is zero in all the bytes.
    ///
    /// No exceptions: behind a `pcie-root-port`, QEMU 11.1's `vfio-user-pci` passes every
    /// read-only bit of this layout through unchanged (measured). On the root bus `pcie.0` it
    /// would not: it turns the endpoint into a root-complex integrated endpoint (PCIe flags at
    /// 0x52: type 0x0 becomes 0x9) and clears the link registers such a function does not have
    /// (LNKCAP at 0x5c, LNKSTA at 0x62, LNKCAP2 at 0x7c, LNKCTL2 at 0x80), which is why the e2e
    /// places the function behind a root port.
    pub fn check_config(&self, layout: &Layout) -> Result<String, String> {
        compare_config(&self.config, layout)
    }

    /// The guest's `resource` file shows each BAR of the layout with its type and size, and
    /// nothing else (the upper half of a 64-bit BAR shows as empty).
    pub fn check_bars(&self, layout: &Layout) -> Result<String, String> {
        let mut problems = String::new();
        for index in 0..7 {
            let line = self.resource.get(index).copied().unwrap_or_default();
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|field| u64::from_str_radix(field.strip_prefix("0x")?, 16).ok())
                .collect();
            let &[start, end, flags] = fields.as_slice() else {
                let _ = writeln!(problems, "  resource line {index} is `{line}`");
                continue;
            };
            let Some(bar) = layout.bars.iter().find(|bar| bar.index == index) else {
                if (start, end, flags) != (0, 0, 0) {
                    let _ = writeln!(problems, "  BAR{index} should be absent: `{line}`");
                }
                continue;
            };
            let size = end.wrapping_sub(start).wrapping_add(1);
            let io = flags & IORESOURCE_IO != 0;
            let mem = flags & IORESOURCE_MEM != 0;
            let wide = flags & IORESOURCE_MEM_64 != 0;
            let prefetchable = flags & IORESOURCE_PREFETCH != 0;
            let kind_ok = match bar.kind.as_str() {
                "io" => io && !mem,
                "mem32" => mem && !io && !wide,
                "mem64" => mem && !io && wide,
                _ => false,
            };
            if start == 0
                || size != bar.size
                || !kind_ok
                || (bar.kind != "io" && prefetchable != bar.prefetchable)
            {
                let _ = writeln!(
                    problems,
                    "  BAR{index}: guest `{line}` (size {size:#x}), layout {} {:#x}{}",
                    bar.kind,
                    bar.size,
                    if bar.prefetchable {
                        " prefetchable"
                    } else {
                        ""
                    }
                );
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "BARs as the layout has them: {}",
                layout.describe_bars()
            ))
        } else {
            Err(format!(
                "the guest's BARs differ from the layout ({}):\n{}",
                layout.describe_bars(),
                problems.trim_end()
            ))
        }
    }
}

/// Checks that `key` in `fields` is the register value `expected`.
pub fn check_register(
    fields: &Fields,
    key: &str,
    expected: u32,
    what: &str,
) -> Result<String, String> {
    let value = fields.register(key)?;
    if value == expected {
        Ok(format!("{what}: {value:#010x}"))
    } else {
        Err(format!(
            "{what}: read {value:#010x}, expected {expected:#010x}"
        ))
    }
}

/// The guest turned on memory decode and bus mastering through sysfs and reads them back.
pub fn check_command(mmio: &Fields) -> Result<String, String> {
    let command = mmio.register("command")?;
    if command & COMMAND_MEMORY_AND_MASTER == COMMAND_MEMORY_AND_MASTER {
        Ok(format!(
            "COMMAND written through sysfs reads back {command:#06x}"
        ))
    } else {
        Err(format!(
            "COMMAND reads {command:#06x} after writing {COMMAND_MEMORY_AND_MASTER:#06x}"
        ))
    }
}

/// The guest's writes to the shared-memory BAR read back, and the device saw them: SHM_SUM (the
/// sum of the BAR's first 1024 words) went from 0 (a reset clears the memory) to the sum of the
/// `words` words written, `seed + i`.
pub fn check_shared_memory(shm: &Fields, seed: u32, words: usize) -> Result<String, String> {
    let at_boot = shm.register("sum_at_boot")?;
    if at_boot != 0 {
        return Err(format!(
            "SHM_SUM is {at_boot:#x} at boot; the reset should have cleared the shared memory"
        ));
    }
    let mut sum = 0u32;
    for i in 0..words {
        let expected = seed.wrapping_add(i as u32);
        let read = shm.register(&format!("word{i}"))?;
        if read != expected {
            return Err(format!(
                "shared-memory word {i} reads {read:#010x} after writing {expected:#010x}"
            ));
        }
        sum = sum.wrapping_add(expected);
    }
    let seen = shm.register("sum")?;
    if seen != sum {
        return Err(format!(
            "SHM_SUM is {seen:#010x}, expected {sum:#010x}: the device does not see what the \
             guest wrote to BAR 2"
        ));
    }
    Ok(format!(
        "shared-memory BAR: {words} words read back and SHM_SUM {sum:#010x} matches"
    ))
}

/// The DMA engine copied `words` words starting at `seed` (word `i` = `seed + i * 0x01010101`)
/// with status 0, counted the transfer, and flagged (then cleared) its interrupt status.
pub fn check_dma(dma: &Fields, seed: u32, words: usize) -> Result<String, String> {
    let status = dma.register("status")?;
    if status != 0 {
        return Err(format!(
            "DMA_STATUS is {status} (0 ok, 1 too long, 2 read fault, 3 write fault, 4 bus mastering off)"
        ));
    }
    let (before, after) = (dma.register("count_before")?, dma.register("count")?);
    if after != before.wrapping_add(1) {
        return Err(format!(
            "DMA_COUNT went from {before} to {after}, expected one more"
        ));
    }
    let mut wrong = String::new();
    for i in 0..words {
        let expected = seed.wrapping_add((i as u32).wrapping_mul(0x0101_0101));
        let (src, dst) = (
            dma.register(&format!("src{i}"))?,
            dma.register(&format!("dst{i}"))?,
        );
        if src != expected || dst != expected {
            let _ = writeln!(
                wrong,
                "  word {i}: source {src:#010x}, destination {dst:#010x}, expected {expected:#010x}"
            );
        }
    }
    if !wrong.is_empty() {
        return Err(format!(
            "the DMA did not copy the pattern:\n{}",
            wrong.trim_end()
        ));
    }
    let (flagged, acked) = (
        dma.register("int_status")?,
        dma.register("int_status_acked")?,
    );
    if flagged & INT_DMA_DONE == 0 || acked & INT_DMA_DONE != 0 {
        return Err(format!(
            "INT_STATUS after the DMA is {flagged:#x} and after writing 1 to clear {acked:#x}; \
             expected bit 0 set, then clear"
        ));
    }
    Ok(format!(
        "DMA copied {} bytes guest RAM to guest RAM, status 0, DMA_COUNT {after}, INT_STATUS bit 0 set and cleared",
        4 * words
    ))
}

/// An INTx interrupt raised through RAISE reached uio_pci_generic: reading `/dev/uioN` returned a
/// higher event count than before, and INT_STATUS bit 1 was set, then cleared.
pub fn check_interrupt(irq: &Fields) -> Result<String, String> {
    let uio = irq
        .text("uio")
        .map_err(|_| "uio_pci_generic could not be loaded or bound to the function")?;
    if uio.is_empty() {
        return Err("uio_pci_generic bound, but the function has no uio device".into());
    }
    let before = irq.number("event_before")?;
    let read = irq.text("read")?;
    if read.is_empty() {
        return Err(format!(
            "reading /dev/{uio} returned nothing within 10 s: no interrupt arrived"
        ));
    }
    let read = irq.number("read")?;
    let after = irq.number("event_after")?;
    if read <= before || after <= before {
        return Err(format!(
            "no new interrupt: event count {before} before, {read} read from /dev/{uio}, {after} after"
        ));
    }
    let (raised, acked) = (
        irq.register("int_status")?,
        irq.register("int_status_acked")?,
    );
    if raised & INT_RAISED == 0 || acked & INT_RAISED != 0 {
        return Err(format!(
            "INT_STATUS after RAISE is {raised:#x} and after writing 2 to clear {acked:#x}; \
             expected bit 1 set, then clear"
        ));
    }
    let line = irq.text("interrupts")?;
    if line.is_empty() {
        return Err("the function's IRQ is not in /proc/interrupts".into());
    }
    Ok(format!(
        "INTx reached uio_pci_generic: /dev/{uio} event count {before} -> {read}; /proc/interrupts: {line}"
    ))
}

/// Whether `guest` (a config space as a guest read it) equals the layout's reset values in every
/// bit nobody may change: `(guest ^ layout) & !(write_mask | rw1c_mask)` is zero in all bytes.
pub fn compare_config(guest: &[u8], layout: &Layout) -> Result<String, String> {
    if guest.len() != layout.config.len() {
        return Err(format!(
            "the guest read {} bytes of config space, the layout has {}",
            guest.len(),
            layout.config.len()
        ));
    }
    let mut differences = String::new();
    let mut fixed_bits = 0u32;
    for (at, &guest) in guest.iter().enumerate() {
        let expected = layout.config[at];
        let fixed = !(layout.write_mask[at] | layout.rw1c_mask[at]);
        fixed_bits += fixed.count_ones();
        let wrong = (guest ^ expected) & fixed;
        if wrong != 0 {
            let _ = writeln!(
                differences,
                "  {at:#05x}: guest {guest:02x}, layout {expected:02x}, wrong bits {wrong:02x} \
                 (writable {:02x}, rw1c {:02x})",
                layout.write_mask[at], layout.rw1c_mask[at]
            );
        }
    }
    if differences.is_empty() {
        Ok(format!(
            "config space ({} bytes) matches the layout in all {fixed_bits} read-only bits",
            guest.len()
        ))
    } else {
        Err(format!(
            "the config space the guest read differs from the layout in read-only bits:\n{}",
            differences.trim_end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{Fields, Layout, decode_hex, size_text};

    #[test]
    fn hex_is_decoded() {
        assert_eq!(decode_hex("00ff1a").unwrap(), [0, 0xff, 0x1a]);
        assert!(decode_hex("0").is_err());
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn fields_are_read() {
        let lines = ["id=0x4F494656", "n=3", "junk", "empty="];
        let fields = Fields::new("test", &lines);
        assert_eq!(fields.register("id").unwrap(), 0x4f49_4656);
        assert_eq!(fields.number("n").unwrap(), 3);
        assert_eq!(fields.text("empty").unwrap(), "");
        assert!(fields.register("n").is_err());
        assert!(fields.text("missing").is_err());
    }

    #[test]
    fn layouts_are_read_from_check_json() {
        let json = r#"{"bars":[{"index":2,"kind":"mem64","prefetchable":true,"size":65536}],
            "config":"3412","write_mask":"0000","rw1c_mask":"0000"}"#;
        let layout = Layout::from_check_json(json).unwrap();
        assert_eq!(layout.config, [0x34, 0x12]);
        assert_eq!(layout.describe_bars(), "BAR2 64K mem64 prefetchable");
        assert!(
            Layout::from_check_json(r#"{"config":"00","write_mask":"","rw1c_mask":"00"}"#).is_err()
        );
        assert_eq!(size_text(4096), "4K");
        assert_eq!(size_text(100), "100 bytes");
    }
}
