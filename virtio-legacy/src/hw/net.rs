//! virtio-net backed by a Unix datagram socket the host holds the other end of: frames the
//! driver transmits are sent on the socket, datagrams the host sends are delivered on the
//! receive queue behind a virtio_net_hdr.
//!
//! Queue 0 receives, queue 1 transmits. The header is 12 bytes with VIRTIO_F_VERSION_1
//! (`num_buffers` included) and 10 bytes for a legacy driver.

use std::io::ErrorKind;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use vfio_variant::backend::DmaAccess;

use super::virtqueue::{Virtqueue, VirtqueueError};
use super::{DEVICE_TYPE_NET, VIRTIO_F_VERSION_1, VirtioDevice};

/// Feature: the device has a MAC address in its config.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Feature: the config has a link status.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;
/// Largest frame (with a 64 KiB datagram limit).
pub const MAX_FRAME: usize = 65536;

/// Header length for the negotiated features.
pub fn header_len(features: u64) -> usize {
    if features & VIRTIO_F_VERSION_1 != 0 {
        12
    } else {
        10
    }
}

/// A virtio-net device on a datagram socket.
pub struct NetDevice {
    socket: UnixDatagram,
    mac: [u8; 6],
    pending: Option<Vec<u8>>,
    /// For a bound socket: where the last datagram came from (where frames go).
    peer: Option<SocketAddr>,
}

impl NetDevice {
    /// A device with `mac`, and the host's end of its link.
    pub fn new(mac: [u8; 6]) -> std::io::Result<(Self, UnixDatagram)> {
        let (device, host) = UnixDatagram::pair()?;
        device.set_nonblocking(true)?;
        Ok((
            Self {
                socket: device,
                mac,
                pending: None,
                peer: None,
            },
            host,
        ))
    }

    /// A handle on the link that becomes readable when a frame arrives from the host (for
    /// [`crate::hw::vf::VirtioFunction::spawn_poller`] to wait on).
    pub fn wake_source(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(self.socket.try_clone()?.into())
    }

    /// A device with `mac` whose link is a datagram socket bound at `path`: the host sends
    /// frames to it from a bound socket of its own, and transmitted frames go to the last
    /// sender (they are dropped until someone has sent).
    pub fn bind(mac: [u8; 6], path: &Path) -> std::io::Result<Self> {
        let socket = UnixDatagram::bind(path)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            mac,
            pending: None,
            peer: None,
        })
    }

    fn send(&self, frame: &[u8]) {
        // A full socket or a gone peer drops the frame, as a link would.
        let _ = match &self.peer {
            Some(peer) => self.socket.send_to_addr(frame, peer),
            None => self.socket.send(frame),
        };
    }

    fn transmit(
        &mut self,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        features: u64,
    ) -> Result<bool, VirtqueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            let packet = chain.read_all(mem)?;
            if let Some(frame) = packet.get(header_len(features)..) {
                self.send(frame);
            }
            queue.push_used(mem, chain.head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn receive(
        &mut self,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        features: u64,
    ) -> Result<bool, VirtqueueError> {
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None => {
                    let mut buffer = vec![0u8; MAX_FRAME];
                    match self.socket.recv_from(&mut buffer) {
                        Ok((n, from)) => {
                            if from.as_pathname().is_some() {
                                self.peer = Some(from);
                            }
                            buffer.truncate(n);
                            buffer
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(used),
                        Err(_) => return Ok(used),
                    }
                }
            };
            let Some(chain) = queue.pop(mem)? else {
                self.pending = Some(frame);
                return Ok(used);
            };
            let hlen = header_len(features);
            let mut packet = vec![0u8; hlen];
            if hlen == 12 {
                packet[10] = 1; // num_buffers
            }
            packet.extend_from_slice(&frame);
            // A frame larger than the buffers is truncated, as a NIC without mergeable
            // buffers drops what does not fit.
            let written = chain.write_at(mem, 0, &packet)?;
            queue.push_used(mem, chain.head, written as u32)?;
            used = true;
        }
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn num_queues(&self) -> u16 {
        2
    }

    /// `mac[6]`, status (le16, link up), max_virtqueue_pairs (le16).
    fn config(&self) -> Vec<u8> {
        let mut config = self.mac.to_vec();
        config.extend_from_slice(&1u16.to_le_bytes());
        config.extend_from_slice(&1u16.to_le_bytes());
        config
    }

    /// Another NIC's MAC is taken over (the VM keeps its address); the rest must match.
    fn accepts_config(&self, config: &[u8]) -> bool {
        let own = self.config();
        config.len() == own.len() && config[6..] == own[6..]
    }

    fn restore_config(&mut self, config: &[u8]) {
        if let Some(mac) = config.get(..6) {
            self.mac.copy_from_slice(mac);
        }
    }

    fn process(
        &mut self,
        index: u16,
        queue: &mut Virtqueue,
        mem: &dyn DmaAccess,
        features: u64,
    ) -> Result<bool, VirtqueueError> {
        match index {
            RX_QUEUE => self.receive(queue, mem, features),
            TX_QUEUE => self.transmit(queue, mem, features),
            _ => Ok(false),
        }
    }

    fn polled_queues(&self) -> &[u16] {
        &[RX_QUEUE]
    }

    fn reset(&mut self) {
        self.pending = None;
    }
}
