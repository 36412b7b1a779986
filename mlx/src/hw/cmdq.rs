//! Command queue entries and mailbox chains in DMA memory, as the firmware reads and writes
//! them (`struct mlx5_cmd_layout` and `struct mlx5_cmd_prot_block`).
//!
//! An entry carries the first 16 bytes of input and of output inline; the rest travels in
//! chains of 512-byte mailboxes, each naming the next (`next`, 0 ends the chain), numbered
//! from 0 (`block_num`) and carrying the entry's token. The firmware takes the input, runs the
//! command, writes the output the same way, sets the delivery status and hands the entry back
//! by clearing the ownership bit. A fault in delivering (length, alignment, block number,
//! token, unreachable memory) is reported in the delivery status; the command is not run.
//!
//! Simplifications: the entry and mailbox signatures are neither checked nor computed (Linux
//! leaves them off by default), mailboxes are 1 KiB aligned, and a message is at most
//! [`MAX_MESSAGE`] bytes.

use vfio_variant::backend::DmaAccess;

use super::ifc::*;

/// The fields of an entry the firmware acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFields {
    /// Input length.
    pub inlen: usize,
    /// First input mailbox.
    pub in_ptr: u64,
    /// Output length.
    pub outlen: usize,
    /// First output mailbox.
    pub out_ptr: u64,
    /// Token the mailboxes carry.
    pub token: u8,
}

/// Reads the fields of `entry`, or the delivery status refusing it.
pub fn parse_entry(entry: &[u8; ENTRY_SIZE]) -> Result<EntryFields, u8> {
    if entry[ENTRY_TYPE] != CMD_TYPE_PCIE {
        return Err(DELIVERY_CMD_IF_VER_ERR);
    }
    let inlen = be32(entry, ENTRY_INLEN) as usize;
    let outlen = be32(entry, ENTRY_OUTLEN) as usize;
    if !(HEADER_BYTES..=MAX_MESSAGE).contains(&inlen) {
        return Err(DELIVERY_IN_LENGTH_ERR);
    }
    if !(HEADER_BYTES..=MAX_MESSAGE).contains(&outlen) {
        return Err(DELIVERY_OUT_LENGTH_ERR);
    }
    Ok(EntryFields {
        inlen,
        in_ptr: be64(entry, ENTRY_IN_PTR),
        outlen,
        out_ptr: be64(entry, ENTRY_OUT_PTR),
        token: entry[ENTRY_TOKEN],
    })
}

/// Mailboxes a message of `len` bytes needs beyond the inline part.
pub fn mailboxes_for(len: usize) -> usize {
    len.saturating_sub(INLINE_BYTES).div_ceil(MAILBOX_DATA)
}

/// Walks a chain of `count` mailboxes from `first`, calling `visit(address, index)` for each
/// after checking its alignment, block number and token; `align_err` is the delivery status
/// of a misaligned mailbox.
fn walk_chain(
    mem: &dyn DmaAccess,
    first: u64,
    count: usize,
    token: u8,
    align_err: u8,
    mut visit: impl FnMut(u64, usize) -> Result<(), u8>,
) -> Result<(), u8> {
    let mut address = first;
    for index in 0..count {
        if address == 0 || !address.is_multiple_of(MAILBOX_ALIGN) {
            return Err(align_err);
        }
        let mut trailer = [0u8; MAILBOX_SIZE - MAILBOX_NEXT];
        mem.read(address + MAILBOX_NEXT as u64, &mut trailer)
            .map_err(|_| DELIVERY_FW_ERR)?;
        let block = be32(&trailer, MAILBOX_BLOCK_NUM - MAILBOX_NEXT);
        if block as usize != index {
            return Err(DELIVERY_BAD_BLOCK_NUM_ERR);
        }
        if trailer[MAILBOX_TOKEN - MAILBOX_NEXT] != token {
            return Err(DELIVERY_TOKEN_ERR);
        }
        visit(address, index)?;
        address = be64(&trailer, 0);
    }
    Ok(())
}

/// Gathers a command's input: the inline part, then the input mailboxes.
pub fn gather_input(
    mem: &dyn DmaAccess,
    entry: &[u8; ENTRY_SIZE],
    fields: &EntryFields,
) -> Result<Vec<u8>, u8> {
    let mut input = vec![0u8; fields.inlen];
    let inline = fields.inlen.min(INLINE_BYTES);
    input[..inline].copy_from_slice(&entry[ENTRY_IN..ENTRY_IN + inline]);
    let count = mailboxes_for(fields.inlen);
    walk_chain(
        mem,
        fields.in_ptr,
        count,
        fields.token,
        DELIVERY_IN_PTR_ALIGN_ERR,
        |address, index| {
            let start = INLINE_BYTES + index * MAILBOX_DATA;
            let end = (start + MAILBOX_DATA).min(fields.inlen);
            mem.read(address, &mut input[start..end])
                .map_err(|_| DELIVERY_FW_ERR)
        },
    )?;
    Ok(input)
}

/// Scatters a command's output (cut or zero-padded to the entry's output length): the inline
/// part into `entry`, the rest into the output mailboxes.
pub fn scatter_output(
    mem: &dyn DmaAccess,
    entry: &mut [u8; ENTRY_SIZE],
    fields: &EntryFields,
    output: &[u8],
) -> Result<(), u8> {
    let mut out = vec![0u8; fields.outlen];
    let n = output.len().min(fields.outlen);
    out[..n].copy_from_slice(&output[..n]);
    let inline = fields.outlen.min(INLINE_BYTES);
    entry[ENTRY_OUT..ENTRY_OUT + INLINE_BYTES].fill(0);
    entry[ENTRY_OUT..ENTRY_OUT + inline].copy_from_slice(&out[..inline]);
    walk_chain(
        mem,
        fields.out_ptr,
        mailboxes_for(fields.outlen),
        fields.token,
        DELIVERY_OUT_PTR_ALIGN_ERR,
        |address, index| {
            let start = INLINE_BYTES + index * MAILBOX_DATA;
            let end = (start + MAILBOX_DATA).min(fields.outlen);
            mem.write(address, &out[start..end])
                .map_err(|_| DELIVERY_FW_ERR)
        },
    )
}

/// Runs one hardware-owned entry: parses it, gathers the input, runs `execute` on it,
/// scatters the output, then writes the delivery status and hands the entry back to software.
/// A command refused in delivery is not run.
pub fn deliver(
    mem: &dyn DmaAccess,
    entry: &mut [u8; ENTRY_SIZE],
    execute: impl FnOnce(&[u8]) -> Vec<u8>,
) {
    let status = parse_entry(entry).and_then(|fields| {
        let input = gather_input(mem, entry, &fields)?;
        let output = execute(&input);
        scatter_output(mem, entry, &fields, &output)
    });
    let delivery = match status {
        Ok(()) => DELIVERY_OK,
        Err(code) => code,
    };
    entry[ENTRY_STATUS_OWN] = delivery << 1;
}

/// Links `addresses` into a chain of mailboxes carrying `token` (the driver's side): block
/// numbers from 0, each naming the next, the last naming none.
pub fn link_chain(mem: &dyn DmaAccess, addresses: &[u64], token: u8) -> Result<(), u8> {
    for (index, &address) in addresses.iter().enumerate() {
        let mut trailer = [0u8; MAILBOX_SIZE - MAILBOX_NEXT];
        put_be64(
            &mut trailer,
            0,
            addresses.get(index + 1).copied().unwrap_or(0),
        );
        put_be32(&mut trailer, MAILBOX_BLOCK_NUM - MAILBOX_NEXT, index as u32);
        trailer[MAILBOX_TOKEN - MAILBOX_NEXT] = token;
        mem.write(address + MAILBOX_NEXT as u64, &trailer)
            .map_err(|_| DELIVERY_FW_ERR)?;
    }
    Ok(())
}

/// Writes the data part of a message (what follows the inline bytes) into linked mailboxes.
pub fn fill_chain(mem: &dyn DmaAccess, addresses: &[u64], message: &[u8]) -> Result<(), u8> {
    let rest = message.get(INLINE_BYTES..).unwrap_or(&[]);
    for (chunk, &address) in rest.chunks(MAILBOX_DATA).zip(addresses) {
        mem.write(address, chunk).map_err(|_| DELIVERY_FW_ERR)?;
    }
    Ok(())
}

/// Reads the data part of a message of `len` bytes from linked mailboxes, after the inline
/// bytes `inline`.
pub fn read_chain(
    mem: &dyn DmaAccess,
    addresses: &[u64],
    inline: &[u8],
    len: usize,
) -> Result<Vec<u8>, u8> {
    let mut message = vec![0u8; len];
    let n = len.min(INLINE_BYTES).min(inline.len());
    message[..n].copy_from_slice(&inline[..n]);
    if len > INLINE_BYTES {
        for (chunk, &address) in message[INLINE_BYTES..]
            .chunks_mut(MAILBOX_DATA)
            .zip(addresses)
        {
            mem.read(address, chunk).map_err(|_| DELIVERY_FW_ERR)?;
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_variant::backend::emulated::HostMemory;

    fn entry(inlen: usize, outlen: usize, in_ptr: u64, out_ptr: u64) -> [u8; ENTRY_SIZE] {
        let mut e = [0u8; ENTRY_SIZE];
        e[ENTRY_TYPE] = CMD_TYPE_PCIE;
        put_be32(&mut e, ENTRY_INLEN, inlen as u32);
        put_be32(&mut e, ENTRY_OUTLEN, outlen as u32);
        put_be64(&mut e, ENTRY_IN_PTR, in_ptr);
        put_be64(&mut e, ENTRY_OUT_PTR, out_ptr);
        e[ENTRY_TOKEN] = 0x5a;
        e[ENTRY_STATUS_OWN] = OWNER_HW;
        e
    }

    #[test]
    fn input_and_output_cross_mailbox_chains() {
        let mem = HostMemory::new(64 << 10);
        let message: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
        let inputs = [0x1000, 0x2000, 0x3000];
        let outputs = [0x8000, 0x9000, 0xa000];
        link_chain(&mem, &inputs, 0x5a).unwrap();
        fill_chain(&mem, &inputs, &message).unwrap();
        link_chain(&mem, &outputs, 0x5a).unwrap();
        let mut e = entry(message.len(), 1100, inputs[0], outputs[0]);
        e[ENTRY_IN..ENTRY_IN + INLINE_BYTES].copy_from_slice(&message[..INLINE_BYTES]);
        let mut seen = Vec::new();
        deliver(&mem, &mut e, |input| {
            seen = input.to_vec();
            input.iter().rev().copied().collect()
        });
        assert_eq!(e[ENTRY_STATUS_OWN], 0, "delivered, owned by software");
        assert_eq!(seen, message);
        let out = read_chain(&mem, &outputs, &e[ENTRY_OUT..ENTRY_OUT + 16], 1100).unwrap();
        let expected: Vec<u8> = message.iter().rev().copied().take(1100).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn delivery_faults_are_reported_and_the_command_is_not_run() {
        let mem = HostMemory::new(64 << 10);
        link_chain(&mem, &[0x1000, 0x2000], 0x5a).unwrap();
        let cases = [
            (entry(600, 16, 0x1000, 0), DELIVERY_OK),
            (entry(1200, 16, 0x1000, 0), DELIVERY_IN_PTR_ALIGN_ERR),
            (entry(100, 16, 0x1100, 0), DELIVERY_IN_PTR_ALIGN_ERR),
            (entry(100, 100, 0x1000, 0), DELIVERY_OUT_PTR_ALIGN_ERR),
            (entry(4, 16, 0, 0), DELIVERY_IN_LENGTH_ERR),
            (entry(16, MAX_MESSAGE + 1, 0, 0), DELIVERY_OUT_LENGTH_ERR),
            (entry(100, 16, 0x2000, 0), DELIVERY_BAD_BLOCK_NUM_ERR),
            (entry(100, 16, 0x100_0000, 0), DELIVERY_FW_ERR),
        ];
        for (mut e, expected) in cases {
            let mut ran = false;
            deliver(&mem, &mut e, |_| {
                ran = true;
                vec![0; 16]
            });
            assert_eq!(e[ENTRY_STATUS_OWN] >> 1, expected);
            assert_eq!(e[ENTRY_STATUS_OWN] & OWNER_HW, 0);
            // The output chain check comes after running, as a device writes its answer.
            assert_eq!(
                ran,
                expected == DELIVERY_OK || expected == DELIVERY_OUT_PTR_ALIGN_ERR
            );
        }
        let mut bad_token = entry(100, 16, 0x1000, 0);
        bad_token[ENTRY_TOKEN] = 1;
        deliver(&mem, &mut bad_token, |_| Vec::new());
        assert_eq!(bad_token[ENTRY_STATUS_OWN] >> 1, DELIVERY_TOKEN_ERR);
        let mut bad_type = entry(16, 16, 0, 0);
        bad_type[ENTRY_TYPE] = 0;
        deliver(&mem, &mut bad_type, |_| Vec::new());
        assert_eq!(bad_type[ENTRY_STATUS_OWN] >> 1, DELIVERY_CMD_IF_VER_ERR);
    }
}
