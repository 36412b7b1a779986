//! What a config-space write reports to the layers above (interrupts, reset, power).

/// A guest-visible change caused by a config-space write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigEvent {
    /// The COMMAND register changed (memory/I/O decoding, bus mastering, INTx disable).
    Command {
        /// Value before the write.
        old: u16,
        /// Value after the write.
        new: u16,
    },
    /// MSI enable or the number of enabled vectors changed.
    Msi {
        /// MSI enabled.
        enabled: bool,
        /// Vectors enabled (1, 2, 4 ... 32).
        vectors: u8,
    },
    /// MSI-X enable or function mask changed.
    Msix {
        /// MSI-X enabled.
        enabled: bool,
        /// All vectors masked.
        function_mask: bool,
    },
    /// The guest asked for a function level reset (PCIe DEVCTL bit 15).
    FunctionLevelReset,
    /// The power state in PMCSR changed (0 = D0 .. 3 = D3hot).
    PowerState(u8),
}
