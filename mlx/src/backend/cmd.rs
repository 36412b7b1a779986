//! The driver side of the PF's command queue: host memory laid out for the queue, mailboxes
//! and a state buffer; one command at a time, as a driver posts it: input into the entry and
//! the input mailboxes, output mailboxes linked, ownership to the hardware, doorbell, then
//! the entry read back for its delivery status and the output for its status and syndrome.

use std::sync::Arc;

use parking_lot::Mutex;
use vfio_variant::backend::DmaAccess;
use vfio_variant::physical::{PhysicalError, PhysicalFunction};

use crate::hw::cmdq::{fill_chain, link_chain, mailboxes_for, read_chain};
use crate::hw::ifc::*;
use vfio_variant::backend::emulated::HostMemory;

/// Where the command queue is in host memory.
pub const CMDQ_ADDRESS: u64 = 0;
/// Where the input mailboxes start (one per [`MAILBOX_ALIGN`]).
pub const INPUT_MAILBOXES: u64 = 0x1000;
/// Where the output mailboxes start.
pub const OUTPUT_MAILBOXES: u64 = INPUT_MAILBOXES + MAILBOX_COUNT as u64 * MAILBOX_ALIGN;
/// Mailboxes per direction (enough for [`MAX_MESSAGE`]).
pub const MAILBOX_COUNT: usize = MAX_MESSAGE / MAILBOX_DATA;
/// Where the state buffer is (SAVE and LOAD move state through it).
pub const STATE_BUFFER: u64 = 0x10_0000;
/// Size of the state buffer: one chunk.
pub const STATE_BUFFER_SIZE: u32 = MAX_CHUNK_SIZE;
/// Host memory the driver needs.
pub const HOST_MEMORY_SIZE: usize = STATE_BUFFER as usize + STATE_BUFFER_SIZE as usize;

/// A command that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The hardware refused to deliver it.
    #[error("opcode {opcode:#x}: delivery status {status:#x}")]
    Delivery {
        /// Opcode.
        opcode: u16,
        /// Delivery status.
        status: u8,
    },
    /// The hardware did not hand the entry back.
    #[error("opcode {0:#x}: the hardware kept the command")]
    NotCompleted(u16),
    /// The firmware failed the command.
    #[error("opcode {opcode:#x}: status {status:#x}, syndrome {syndrome:#x}")]
    Status {
        /// Opcode.
        opcode: u16,
        /// Status.
        status: u8,
        /// Syndrome.
        syndrome: u32,
    },
    /// A message does not fit the mailboxes, or the state buffer.
    #[error("{0}")]
    TooLarge(String),
    /// Host memory could not be reached.
    #[error("host memory: {0}")]
    Memory(String),
    /// The PF's registers could not be reached.
    #[error("PF: {0}")]
    Physical(String),
    /// The PF speaks another command interface.
    #[error("command interface revision {0}, expected {CMDIF_REV}")]
    Revision(u16),
}

impl From<PhysicalError> for CommandError {
    fn from(e: PhysicalError) -> Self {
        Self::Physical(e.to_string())
    }
}

/// The PF's command queue, driven through its BAR 0 and host memory.
pub struct CommandQueue {
    pf: Arc<dyn PhysicalFunction>,
    memory: Arc<HostMemory>,
    /// Serializes commands (one entry in use) and the token.
    token: Mutex<u8>,
    /// Serializes users of the state buffer.
    state: Mutex<()>,
}

fn memory_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::Memory(e.to_string())
}

impl CommandQueue {
    /// Sets up the command queue of `pf` in `memory` (at least [`HOST_MEMORY_SIZE`] bytes,
    /// the PF's DMA space).
    pub fn new(
        pf: Arc<dyn PhysicalFunction>,
        memory: Arc<HostMemory>,
    ) -> Result<Self, CommandError> {
        if memory.size() < HOST_MEMORY_SIZE {
            return Err(CommandError::TooLarge(format!(
                "host memory of {} bytes, the driver needs {HOST_MEMORY_SIZE}",
                memory.size()
            )));
        }
        let mut b = [0u8; 4];
        pf.bar_read(0, INIT_CMDIF_REV, &mut b)?;
        let revision = (u32::from_be_bytes(b) >> 16) as u16;
        if revision != CMDIF_REV {
            return Err(CommandError::Revision(revision));
        }
        pf.bar_write(
            0,
            INIT_CMDQ_ADDR_H,
            &((CMDQ_ADDRESS >> 32) as u32).to_be_bytes(),
        )?;
        pf.bar_write(0, INIT_CMDQ_ADDR_L_SZ, &(CMDQ_ADDRESS as u32).to_be_bytes())?;
        Ok(Self {
            pf,
            memory,
            token: Mutex::new(0),
            state: Mutex::new(()),
        })
    }

    /// Runs a command with `input`; returns `outlen` bytes of output, or the failure.
    pub fn execute(&self, input: &[u8], outlen: usize) -> Result<Vec<u8>, CommandError> {
        let opcode = be16(input, IN_OPCODE);
        if input.len() > MAX_MESSAGE || outlen > MAX_MESSAGE {
            return Err(CommandError::TooLarge(format!(
                "opcode {opcode:#x}: {} bytes in, {outlen} out",
                input.len()
            )));
        }
        let outlen = outlen.max(HEADER_BYTES);
        let mut token = self.token.lock();
        *token = token.wrapping_add(1).max(1);
        let inputs: Vec<u64> = (0..mailboxes_for(input.len()))
            .map(|i| INPUT_MAILBOXES + i as u64 * MAILBOX_ALIGN)
            .collect();
        let outputs: Vec<u64> = (0..mailboxes_for(outlen))
            .map(|i| OUTPUT_MAILBOXES + i as u64 * MAILBOX_ALIGN)
            .collect();
        let delivery = |status| CommandError::Delivery { opcode, status };
        link_chain(&*self.memory, &inputs, *token).map_err(delivery)?;
        fill_chain(&*self.memory, &inputs, input).map_err(delivery)?;
        link_chain(&*self.memory, &outputs, *token).map_err(delivery)?;

        let mut entry = [0u8; ENTRY_SIZE];
        entry[ENTRY_TYPE] = CMD_TYPE_PCIE;
        put_be32(&mut entry, ENTRY_INLEN, input.len() as u32);
        put_be64(
            &mut entry,
            ENTRY_IN_PTR,
            inputs.first().copied().unwrap_or(0),
        );
        let inline = input.len().min(INLINE_BYTES);
        entry[ENTRY_IN..ENTRY_IN + inline].copy_from_slice(&input[..inline]);
        put_be64(
            &mut entry,
            ENTRY_OUT_PTR,
            outputs.first().copied().unwrap_or(0),
        );
        put_be32(&mut entry, ENTRY_OUTLEN, outlen as u32);
        entry[ENTRY_TOKEN] = *token;
        entry[ENTRY_STATUS_OWN] = OWNER_HW;
        self.memory
            .write(CMDQ_ADDRESS, &entry)
            .map_err(memory_error)?;
        self.pf.bar_write(0, INIT_CMD_DBELL, &1u32.to_be_bytes())?;
        self.memory
            .read(CMDQ_ADDRESS, &mut entry)
            .map_err(memory_error)?;
        if entry[ENTRY_STATUS_OWN] & OWNER_HW != 0 {
            return Err(CommandError::NotCompleted(opcode));
        }
        let status = entry[ENTRY_STATUS_OWN] >> 1;
        if status != DELIVERY_OK {
            return Err(delivery(status));
        }
        let output = read_chain(
            &*self.memory,
            &outputs,
            &entry[ENTRY_OUT..ENTRY_OUT + INLINE_BYTES],
            outlen,
        )
        .map_err(delivery)?;
        if output[OUT_STATUS] != STATUS_OK {
            return Err(CommandError::Status {
                opcode,
                status: output[OUT_STATUS],
                syndrome: be32(&output, OUT_SYNDROME),
            });
        }
        Ok(output)
    }

    /// Runs `input` (SAVE_VHCA_STATE) with the state buffer; `read_back(output)` says how
    /// many bytes the command wrote, which are appended to `out`.
    pub fn with_state_out(
        &self,
        input: &mut [u8],
        outlen: usize,
        read_back: impl FnOnce(&[u8]) -> usize,
        out: &mut Vec<u8>,
    ) -> Result<Vec<u8>, CommandError> {
        let _state = self.state.lock();
        put_be64(input, STATE_IN_ADDRESS, STATE_BUFFER);
        let output = self.execute(input, outlen)?;
        let n = read_back(&output);
        if n > STATE_BUFFER_SIZE as usize {
            return Err(CommandError::TooLarge(format!(
                "the firmware claims {n} bytes in a buffer of {STATE_BUFFER_SIZE}"
            )));
        }
        let at = out.len();
        out.resize(at + n, 0);
        self.memory
            .read(STATE_BUFFER, &mut out[at..])
            .map_err(memory_error)?;
        Ok(output)
    }

    /// Puts `data` in the state buffer and runs `input` (LOAD_VHCA_STATE) on it.
    pub fn with_state_in(
        &self,
        input: &mut [u8],
        outlen: usize,
        data: &[u8],
    ) -> Result<Vec<u8>, CommandError> {
        if data.len() > STATE_BUFFER_SIZE as usize {
            return Err(CommandError::TooLarge(format!(
                "{} bytes of state, the buffer has {STATE_BUFFER_SIZE}",
                data.len()
            )));
        }
        let _state = self.state.lock();
        self.memory
            .write(STATE_BUFFER, data)
            .map_err(memory_error)?;
        put_be64(input, STATE_IN_ADDRESS, STATE_BUFFER);
        put_be32(input, STATE_IN_SIZE, data.len() as u32);
        self.execute(input, outlen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::firmware::FirmwareCaps;
    use crate::hw::pci::Generation;
    use crate::hw::pf::MlxPf;

    fn queue() -> CommandQueue {
        let memory = Arc::new(HostMemory::new(HOST_MEMORY_SIZE));
        let pf = Arc::new(MlxPf::new(
            "pf",
            Generation::One,
            2,
            FirmwareCaps::default(),
            memory.clone(),
        ));
        CommandQueue::new(pf, memory).unwrap()
    }

    #[test]
    fn commands_cross_mailboxes_and_failures_carry_status_and_syndrome() {
        let q = queue();
        let mut input = command(
            QUERY_HCA_CAP,
            (CAP_GENERAL << 1) | HCA_CAP_OPMOD_GET_CUR,
            16,
        );
        put_be16(&mut input, CAP_IN_OTHER_FUNCTION, 0x8000);
        put_be16(&mut input, CAP_IN_FUNCTION_ID, 2);
        let out = q.execute(&input, QUERY_HCA_CAP_OUTLEN).unwrap();
        assert_eq!(be16(&out[CAP_BODY..], GENERAL_NUM_VFS), 2);
        assert_eq!(be16(&out[CAP_BODY..], GENERAL_VHCA_ID), 0x102);
        put_be16(&mut input, CAP_IN_FUNCTION_ID, 3);
        assert_eq!(
            q.execute(&input, QUERY_HCA_CAP_OUTLEN),
            Err(CommandError::Status {
                opcode: QUERY_HCA_CAP,
                status: STATUS_BAD_PARAM,
                syndrome: SYNDROME_NO_FUNCTION
            })
        );
        assert!(matches!(
            q.execute(&command(0x7ff, 0, 16), 16),
            Err(CommandError::Status {
                status: STATUS_BAD_OP,
                ..
            })
        ));
        assert!(matches!(
            q.execute(&vec![0; MAX_MESSAGE + 1], 16),
            Err(CommandError::TooLarge(_))
        ));
    }

    #[test]
    fn a_pf_of_another_interface_revision_is_refused() {
        struct Old;
        impl PhysicalFunction for Old {
            fn name(&self) -> String {
                "old".into()
            }
            fn config_size(&self) -> u16 {
                256
            }
            fn config_read(&self, _: u16, _: &mut [u8]) -> Result<(), PhysicalError> {
                Ok(())
            }
            fn config_write(&self, _: u16, _: &[u8]) -> Result<(), PhysicalError> {
                Ok(())
            }
            fn bar(&self, _: u8) -> Option<vfio_variant::physical::PhysicalBar> {
                None
            }
            fn bar_read(&self, _: u8, _: u64, data: &mut [u8]) -> Result<(), PhysicalError> {
                data.copy_from_slice(&(3u32 << 16).to_be_bytes());
                Ok(())
            }
            fn bar_write(&self, _: u8, _: u64, _: &[u8]) -> Result<(), PhysicalError> {
                Ok(())
            }
            fn reset(&self) -> Result<(), PhysicalError> {
                Ok(())
            }
        }
        let memory = Arc::new(HostMemory::new(HOST_MEMORY_SIZE));
        assert!(matches!(
            CommandQueue::new(Arc::new(Old), memory),
            Err(CommandError::Revision(3))
        ));
    }
}
