//! Runs one command of a connection against its function and answers it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::RwLock;

use super::connection::Outbox;
use super::{Port, ServerConfig};
use crate::device::RegionInfo;
use crate::pci::region::REGION_COUNT;
use crate::vfio_user::access::{RegionReadReply, RegionWriteReply, WriteMultiReply};
use crate::vfio_user::device::{DEVICE_INFO_SIZE, DeviceFlags, DeviceInfo};
use crate::vfio_user::dma::{DmaMap, DmaMapFlags, DmaUnmap};
use crate::vfio_user::feature::{
    DeviceFeature, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP,
    FEATURE_MIG_DATA_BUFFER, FeatureOps, MigDataBufferSize, words_as_bytes,
};
use crate::vfio_user::header::{Command, Header};
use crate::vfio_user::irq::{
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INDEX_REQ, IrqInfo, IrqInfoFlags,
    PCI_NUM_IRQS, SetIrqs,
};
use crate::vfio_user::message::Request;
use crate::vfio_user::mig_data::MigDataShared;
use crate::vfio_user::region::{
    IoFdsReply, RegionCap, RegionFlags, RegionInfoReply, SparseMmapArea,
};
use crate::vfio_user::rules;
use crate::vfio_user::shared_buf::{
    MAX_TRANSFERS_PER_BUFFER, MIN_SHARED_BUFFER, SharedBuffer, SharedBufferError,
};
use crate::vfio_user::socket::Message;
use crate::vfio_user::{
    Limits, Negotiated, Payload, ProtocolError, ServerOffer, Version, negotiate,
};

use super::dma_logging::LogReply;
use super::migration;

/// What a command gets back.
enum Answer {
    /// A reply payload and the fds sent with it.
    Reply(Vec<u8>, Vec<Arc<OwnedFd>>),
    /// A reply payload built as words (a dirty bitmap), sent as their bytes.
    Words(Vec<u64>),
    /// A MIG_DATA_READ reply payload, whose buffer goes back for the next one.
    MigData(Vec<u8>),
    /// An error reply with this errno.
    Error(i32),
}

fn reply(payload: impl Payload) -> Answer {
    Answer::Reply(payload.to_bytes(), Vec::new())
}

/// The state of one connection's command stream.
pub(crate) struct Session<'a> {
    port: &'a Port,
    config: &'a ServerConfig,
    outbox: &'a Outbox,
    limits: &'a RwLock<Limits>,
    negotiated: Option<Negotiated>,
    /// The server's end of the twin socket VERSION set up, until the connection takes it.
    twin: Option<UnixStream>,
    /// The shared migration data buffer the client registered (`mig_data_shared`), mapped
    /// until the connection ends.
    mig_buffer: Option<SharedBuffer>,
    /// Where a MIG_DATA_WRITE's bytes are copied out of the shared buffer: kept from one
    /// write to the next, so that no write fills fresh pages.
    mig_scratch: Vec<u8>,
}

impl<'a> Session<'a> {
    pub fn new(
        port: &'a Port,
        config: &'a ServerConfig,
        outbox: &'a Outbox,
        limits: &'a RwLock<Limits>,
    ) -> Self {
        Self {
            port,
            config,
            outbox,
            limits,
            negotiated: None,
            twin: None,
            mig_buffer: None,
            mig_scratch: Vec::new(),
        }
    }

    /// The server's end of the twin socket, once, after the VERSION reply that sent the
    /// client's end.
    pub fn take_twin(&mut self) -> Option<UnixStream> {
        self.twin.take()
    }

    /// Handles one command; false when the connection must close. `spent` receives the
    /// buffer a MIG_DATA_WRITE's data came in, for the reader to reuse.
    pub fn handle(&mut self, mut message: Message, spent: &mut Vec<u8>) -> bool {
        let header = message.header;
        let limits = self.limits.read().clone();
        if header.command == Command::DeviceFeature.raw() {
            let request = DeviceFeature::parse(&message.payload, &limits);
            let buffer = request
                .as_ref()
                .is_ok_and(|r| r.feature == FEATURE_MIG_DATA_BUFFER);
            if buffer || !message.fds.is_empty() {
                let answer = self.buffer_feature(request, message.fds, &limits);
                return self.send(&header, answer);
            }
        }
        let mig_data = header.command == Command::MigDataRead.raw()
            || header.command == Command::MigDataWrite.raw();
        if mig_data && self.mig_buffer.is_some() {
            let answer = self.mig_data_shared(message, &limits);
            return self.send(&header, answer);
        }
        let request = match message.take_request(&limits) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("refused command: {e}");
                return self.outbox.error(&header, e.errno()).is_ok();
            }
        };
        if message.fds.len() > rules::max_fds(&request) {
            // Stray fds are closed with the message.
            tracing::debug!("refused command: {} fds", message.fds.len());
            return self.outbox.error(&header, libc::EINVAL).is_ok();
        }
        let (answer, keep) = match request {
            // VERSION comes once, first; a second one changes nothing.
            Request::Version(_) if self.negotiated.is_some() => (Answer::Error(libc::EINVAL), true),
            Request::Version(proposal) => self.version(&proposal, header.no_reply()),
            _ if self.negotiated.is_none() => (Answer::Error(libc::EINVAL), true),
            other => (self.run(other, message.fds, spent), true),
        };
        self.send(&header, answer) && keep
    }

    /// Sends `answer` to the command of `header` (nothing but a failure's log line for a
    /// posted command); false when the socket failed.
    fn send(&self, header: &Header, answer: Answer) -> bool {
        let header = *header;
        let sent = match answer {
            Answer::Reply(payload, fds) => {
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
                if header.no_reply() {
                    Ok(())
                } else {
                    self.outbox
                        .send(&header.reply(payload.len()), &payload, &borrowed)
                }
            }
            Answer::Words(words) => {
                let sent = if header.no_reply() {
                    Ok(())
                } else {
                    let payload = words_as_bytes(&words);
                    self.outbox.send(&header.reply(payload.len()), payload, &[])
                };
                self.port.logging.recycle(&self.port.function, words);
                sent
            }
            Answer::MigData(payload) => {
                let sent = if header.no_reply() {
                    Ok(())
                } else {
                    self.outbox
                        .send(&header.reply(payload.len()), &payload, &[])
                };
                self.port.migration.recycle(&self.port.function, payload);
                sent
            }
            Answer::Error(errno) => {
                if header.no_reply() {
                    tracing::debug!(errno, "posted command failed");
                }
                self.outbox.error(&header, errno)
            }
        };
        sent.is_ok()
    }

    /// DEVICE_FEATURE carrying fds, or for FEATURE_MIG_DATA_BUFFER: the client's shared
    /// migration data buffer registered (SET, its memfd the one fd), or one the server makes
    /// (GET, [`MigDataBufferSize`], the memfd sent back), when `mig_data_shared` was agreed
    /// and no buffer is there yet; refused otherwise (fds sent are closed).
    fn buffer_feature(
        &mut self,
        request: Result<DeviceFeature, ProtocolError>,
        mut fds: Vec<OwnedFd>,
        limits: &Limits,
    ) -> Answer {
        let allowed = self.negotiated.as_ref().is_some_and(|n| n.mig_data_shared);
        let max = limits
            .max_data_xfer_size
            .saturating_mul(MAX_TRANSFERS_PER_BUFFER);
        let done = request.map_err(|e| e.errno()).and_then(|request| {
            let set = request.ops == FeatureOps::SET && request.data.is_empty() && fds.len() == 1;
            let get = request.ops == FeatureOps::GET
                && request.data.len() == MigDataBufferSize::LEN
                && fds.is_empty();
            if request.feature != FEATURE_MIG_DATA_BUFFER || !(set || get) || !allowed {
                return Err(libc::EINVAL);
            }
            self.port.function.migration_flags().ok_or(libc::ENOTTY)?;
            if self.mig_buffer.is_some() {
                return Err(libc::EBUSY);
            }
            let refused = |e: SharedBufferError| {
                tracing::debug!("migration data buffer refused: {e}");
                e.errno()
            };
            if set {
                let fd = fds.pop().ok_or(libc::EINVAL)?;
                self.mig_buffer = Some(SharedBuffer::check(fd, max).map_err(refused)?);
                return Ok((request.reply_with(Vec::new()).to_bytes(), Vec::new()));
            }
            let wanted = MigDataBufferSize::parse(&request.data, limits).map_err(|e| e.errno())?;
            if !(MIN_SHARED_BUFFER..=max).contains(&wanted.size) {
                return Err(libc::E2BIG);
            }
            let buffer = SharedBuffer::create_exclusive(wanted.size).map_err(refused)?;
            let theirs = buffer
                .fd()
                .try_clone_to_owned()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            self.mig_buffer = Some(buffer);
            let reply = request.reply_with(wanted.to_bytes()).to_bytes();
            Ok((reply, vec![Arc::new(theirs)]))
        });
        match done {
            Ok((payload, fds)) => Answer::Reply(payload, fds),
            Err(errno) => Answer::Error(errno),
        }
    }

    /// MIG_DATA_READ or MIG_DATA_WRITE on a connection with a shared buffer: the request
    /// names bytes in it ([`MigDataShared`]) and carries no fds.
    fn mig_data_shared(&mut self, message: Message, limits: &Limits) -> Answer {
        let header = message.header;
        let Some(shared) = self.mig_buffer.as_mut() else {
            return Answer::Error(libc::EINVAL);
        };
        let request = match MigDataShared::parse(&message.payload, limits) {
            Ok(r) if message.fds.is_empty() => r,
            Ok(_) => return Answer::Error(libc::EINVAL),
            Err(e) => {
                tracing::debug!("refused command: {e}");
                return Answer::Error(e.errno());
            }
        };
        let function = &self.port.function;
        let done = if header.command == Command::MigDataRead.raw() {
            migration::data_read_shared(&self.port.migration, function, shared, &request)
        } else {
            migration::data_write_shared(function, shared, &request, &mut self.mig_scratch)
                .map(|()| Vec::new())
        };
        match done {
            Ok(payload) => Answer::Reply(payload, Vec::new()),
            Err(errno) => Answer::Error(errno),
        }
    }

    /// VERSION: negotiates and, in twin-socket mode, sends the client's end of a fresh
    /// socket pair with the reply (fd 0) and keeps the server's end for the connection.
    /// When no pair can be made the reply says the mode is off.
    fn version(&mut self, proposal: &Version, no_reply: bool) -> (Answer, bool) {
        let mut offer = self.offer();
        let asked = proposal
            .capabilities
            .twin_socket
            .is_some_and(|t| t.supported);
        // A reply that is not sent cannot carry the client's end.
        offer.twin_socket &= asked && !no_reply;
        let pair = if offer.twin_socket {
            // std's pair is CLOEXEC.
            UnixStream::pair()
                .inspect_err(|e| {
                    tracing::warn!("{}: no twin socket: {e}", self.port.name());
                    offer.twin_socket = false;
                })
                .ok()
        } else {
            None
        };
        match negotiate(proposal, &offer) {
            Ok((version, negotiated)) => {
                let limits = negotiated.limits(&self.config.limits);
                self.outbox.fit(&limits);
                *self.limits.write() = limits;
                let fds = match pair {
                    Some((server_end, client_end)) if negotiated.twin_socket => {
                        self.twin = Some(server_end);
                        vec![Arc::new(OwnedFd::from(client_end))]
                    }
                    _ => Vec::new(),
                };
                self.negotiated = Some(negotiated);
                (Answer::Reply(version.to_bytes(), fds), true)
            }
            // The spec: a server that cannot speak the client's major version closes.
            Err(e) => (Answer::Error(e.errno()), false),
        }
    }

    /// What VERSION offers for this function: the `migration` capability only when the
    /// function migrates; `mig_data_shared` only on a connection that passes fds.
    fn offer(&self) -> ServerOffer {
        let migrates = self.port.function.migration_flags().is_some();
        ServerOffer {
            migration_max_bitmap_size: self
                .config
                .offer
                .migration_max_bitmap_size
                .filter(|_| migrates),
            mig_data_shared: self.config.offer.mig_data_shared && self.outbox.passes_fds(),
            ..self.config.offer.clone()
        }
    }

    /// The largest dirty bitmap a REPORT may ask for: the negotiated `max_bitmap_size`, or
    /// the configured limit when the client did not negotiate migration.
    fn max_bitmap_size(&self) -> u64 {
        self.negotiated
            .as_ref()
            .and_then(|n| n.migration)
            .and_then(|m| m.max_bitmap_size)
            .unwrap_or(self.config.limits.max_bitmap_size)
    }

    fn run(&mut self, request: Request, fds: Vec<OwnedFd>, spent: &mut Vec<u8>) -> Answer {
        let vf = &self.port.function;
        match request {
            Request::Version(_) => Answer::Error(libc::EINVAL),
            Request::DmaMap(map) => self.dma_map(&map, fds),
            Request::DmaUnmap(unmap) => {
                if let Some(direct) = vf.direct() {
                    if unmap.is_all() {
                        direct.dma_unmap_all();
                    } else if let Err(e) = direct.dma_unmap(unmap.address, unmap.size) {
                        tracing::warn!("{}: DMA_UNMAP refused: {e}", self.port.name());
                        return Answer::Error(e.errno());
                    }
                } else if unmap.is_all() {
                    self.port.dma.clear();
                } else if let Err(e) = self.port.dma.unmap(unmap.address, unmap.size) {
                    return Answer::Error(e.errno());
                }
                reply(DmaUnmap { ..unmap })
            }
            Request::DeviceGetInfo(_) => reply(DeviceInfo {
                argsz: DEVICE_INFO_SIZE,
                flags: DeviceFlags::PCI | DeviceFlags::RESET,
                num_regions: REGION_COUNT,
                num_irqs: PCI_NUM_IRQS,
            }),
            Request::RegionInfo(request) => {
                let regions = vf.regions();
                let Some(region) = regions.get(request.index as usize) else {
                    return Answer::Error(libc::EINVAL);
                };
                self.region_info(region, request.argsz)
            }
            Request::RegionIoFds(request) => {
                if request.index >= REGION_COUNT {
                    return Answer::Error(libc::EINVAL);
                }
                // No ioeventfds or ioregionfds are offered: every access comes as a message.
                reply(IoFdsReply::new(request.index, Vec::new()).reply_for(request.argsz))
            }
            Request::IrqInfo(info) => {
                if info.index >= PCI_NUM_IRQS {
                    return Answer::Error(libc::EINVAL);
                }
                let direct = vf.direct();
                let flags = match info.index {
                    IRQ_INDEX_INTX => {
                        IrqInfoFlags::EVENTFD | IrqInfoFlags::MASKABLE | IrqInfoFlags::AUTOMASKED
                    }
                    IRQ_INDEX_MSI => IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
                    // The kernel cannot mask an MSI-X vector of a real device, and adding
                    // vectors means re-enabling the index (vfio-pci without dynamic MSI-X).
                    IRQ_INDEX_MSIX if direct.is_some() => {
                        IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE
                    }
                    IRQ_INDEX_MSIX => IrqInfoFlags::EVENTFD | IrqInfoFlags::MASKABLE,
                    _ => IrqInfoFlags::EVENTFD,
                };
                reply(IrqInfo {
                    argsz: info.argsz.max(16),
                    flags,
                    index: info.index,
                    count: self.irq_count(info.index),
                })
            }
            Request::SetIrqs(set) => self.set_irqs(&set, fds),
            Request::RegionRead(read) => {
                let mut data = vec![0u8; read.count as usize];
                match vf.region_read(read.region, read.offset, &mut data) {
                    Ok(()) => reply(RegionReadReply {
                        offset: read.offset,
                        region: read.region,
                        data,
                    }),
                    Err(e) => Answer::Error(e.errno()),
                }
            }
            Request::RegionWrite(write) => {
                match vf.region_write(write.region, write.offset, &write.data) {
                    Ok(()) => reply(RegionWriteReply {
                        offset: write.offset,
                        region: write.region,
                        count: write.data.len() as u32,
                    }),
                    Err(e) => Answer::Error(e.errno()),
                }
            }
            Request::WriteMulti(multi) => {
                if !self.negotiated.as_ref().is_some_and(|n| n.write_multiple) {
                    return Answer::Error(libc::EINVAL);
                }
                for entry in &multi.entries {
                    if let Err(e) = vf.region_write(entry.region, entry.offset, entry.bytes()) {
                        return Answer::Error(e.errno());
                    }
                }
                reply(WriteMultiReply {
                    wr_cnt: multi.entries.len() as u64,
                })
            }
            Request::DeviceReset => match vf.reset() {
                Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
                Err(e) => Answer::Error(e.errno()),
            },
            // All of them answer ENOTTY for a function that does not migrate.
            Request::DeviceFeature(feature) => match feature.feature {
                FEATURE_DMA_LOGGING_START
                | FEATURE_DMA_LOGGING_STOP
                | FEATURE_DMA_LOGGING_REPORT => {
                    match self.port.logging.device_feature(
                        &self.port.function,
                        &feature,
                        self.max_bitmap_size(),
                    ) {
                        Ok(LogReply::Bytes(payload)) => Answer::Reply(payload, Vec::new()),
                        Ok(LogReply::Words(words)) => Answer::Words(words),
                        Err(errno) => Answer::Error(errno),
                    }
                }
                _ => match migration::device_feature(&self.port.function, &feature) {
                    Ok(payload) => Answer::Reply(payload, Vec::new()),
                    Err(errno) => Answer::Error(errno),
                },
            },
            Request::MigDataRead(read) => {
                match migration::data_read(&self.port.migration, &self.port.function, &read) {
                    Ok(payload) => Answer::MigData(payload),
                    Err(errno) => Answer::Error(errno),
                }
            }
            Request::MigDataWrite(write) => {
                let answer = match migration::data_write(&self.port.function, &write) {
                    Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
                    Err(errno) => Answer::Error(errno),
                };
                *spent = write.into_buffer();
                answer
            }
            // Server-to-client commands are not for the server.
            Request::DmaRead(_) | Request::DmaWrite(_) => Answer::Error(libc::EINVAL),
        }
    }

    /// Vectors at IRQ `index`: the layout's, and on a real device no more than it has.
    fn irq_count(&self, index: u32) -> u32 {
        let count = self.port.irqs.count(index);
        match self.port.function.direct() {
            Some(direct) => count.min(direct.irq_count(index)),
            None => count,
        }
    }

    fn set_irqs(&self, set: &SetIrqs, fds: Vec<OwnedFd>) -> Answer {
        let Some(direct) = self.port.function.direct() else {
            return match self.port.irqs.set_irqs(set, fds) {
                Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
                Err(e) => Answer::Error(e.errno()),
            };
        };
        // On a real device the kernel checks the range against the device; the layout may
        // offer fewer vectors than the device has, and those are all the guest may use.
        let available = self.irq_count(set.index);
        if set.index >= PCI_NUM_IRQS
            || set
                .start
                .checked_add(set.count)
                .is_none_or(|end| end > available)
        {
            return Answer::Error(libc::EINVAL);
        }
        // The server raises REQ itself too (destroy --force): keep the client's REQ eventfd.
        if set.index == IRQ_INDEX_REQ {
            let copies: Result<Vec<OwnedFd>, _> = fds.iter().map(|f| f.try_clone()).collect();
            if let Ok(copies) = copies
                && let Err(e) = self.port.irqs.set_irqs(set, copies)
            {
                return Answer::Error(e.errno());
            }
        }
        match direct.set_irqs(set, &fds) {
            Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
            Err(e) => {
                tracing::warn!("{}: SET_IRQS refused: {e}", self.port.name());
                Answer::Error(e.errno())
            }
        }
    }

    fn dma_map(&self, map: &DmaMap, mut fds: Vec<OwnedFd>) -> Answer {
        if fds.len() > 1 {
            return Answer::Error(libc::EINVAL);
        }
        let max = self
            .negotiated
            .as_ref()
            .map_or(self.config.offer.max_dma_maps, |n| n.max_dma_maps);
        // Guest RAM is mapped writable; read-only ranges (ROMs, which QEMU never has in a
        // file) are taken, and only reached by message.
        if fds.is_empty()
            && map.flags.contains(DmaMapFlags::WRITE)
            && self.port.function.needs_shared_memory()
        {
            tracing::warn!(
                "{}: DMA_MAP of {:#x}+{:#x} without a file descriptor refused: this function \
                 needs guest RAM shared with the server; start the VM with a shared memfd \
                 memory backend (-object memory-backend-memfd,id=mem0,size=...,share=on \
                 -numa node,memdev=mem0)",
                self.port.name,
                map.address,
                map.size
            );
            return Answer::Error(libc::ENOTSUP);
        }
        if let Some(direct) = self.port.function.direct() {
            let writable = map.flags.contains(DmaMapFlags::WRITE);
            return match direct.dma_map(map.address, map.size, map.offset, fds.pop(), writable) {
                Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
                Err(e) => {
                    tracing::warn!("{}: DMA_MAP refused: {e}", self.port.name());
                    Answer::Error(e.errno())
                }
            };
        }
        let access = (
            map.flags.contains(DmaMapFlags::READ),
            map.flags.contains(DmaMapFlags::WRITE),
        );
        match self
            .port
            .dma
            .map(map.address, map.size, map.offset, fds.pop(), access, max)
        {
            Ok(()) => Answer::Reply(Vec::new(), Vec::new()),
            Err(e) => {
                tracing::debug!("DMA_MAP refused: {e}");
                Answer::Error(e.errno())
            }
        }
    }

    fn region_info(&self, region: &RegionInfo, argsz: u32) -> Answer {
        let mut flags = RegionFlags::empty();
        if region.read {
            flags |= RegionFlags::READ;
        }
        if region.write {
            flags |= RegionFlags::WRITE;
        }
        let mut caps = Vec::new();
        let mut fds = Vec::new();
        let mut offset = 0;
        let mmap = (region.index < 6)
            .then(|| self.port.function.region_mmap(region.index as u8))
            .flatten();
        if let Some((file, areas)) = mmap {
            // One fd per region: QEMU takes one fd with a region-info reply and maps each
            // sparse area at its offset in it.
            flags |= RegionFlags::MMAP;
            offset = file.offset;
            caps.push(RegionCap::SparseMmap(
                areas
                    .iter()
                    .map(|a| SparseMmapArea {
                        offset: a.offset,
                        size: a.size,
                    })
                    .collect(),
            ));
            fds.push(file.fd);
        }
        let full = RegionInfoReply::new(region.index, flags, region.size, offset, caps);
        let answer = full.reply_for(argsz);
        if answer.is_truncated() {
            fds.clear();
        }
        Answer::Reply(answer.to_bytes(), fds)
    }
}
