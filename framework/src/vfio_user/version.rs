//! VERSION (command 1): protocol version, JSON capabilities, and the negotiation rules.
//!
//! Rules (docs/interop/vfio-user.rst, "VFIO_USER_VERSION"): the reply has the proposed major,
//! a minor not above the proposed one, and capabilities that are a subset of the proposal.
//! QEMU's client also refuses a reply with `max_msg_fds` above 16 or `max_data_xfer_size`
//! above 64 MiB (hw/vfio-user/protocol.h: VFIO_USER_MAX_MAX_FDS, VFIO_USER_MAX_MAX_XFER).

use serde::{Deserialize, Serialize};

use super::error::ProtocolError;
use super::wire::{Reader, put_u16};
use super::{Limits, Payload};

/// The protocol major version spoken here.
pub const PROTOCOL_MAJOR: u16 = 0;
/// The highest protocol minor version spoken here.
pub const PROTOCOL_MINOR: u16 = 0;

/// `max_msg_fds` when a peer does not state it.
pub const DEFAULT_MAX_MSG_FDS: u64 = 1;
/// `max_data_xfer_size` when a peer does not state it (1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
/// `max_dma_maps` when a peer does not state it.
pub const DEFAULT_MAX_DMA_MAPS: u64 = 65535;
/// `pgsizes` when a peer does not state it (4 KiB pages only).
pub const DEFAULT_PGSIZES: u64 = 4096;
/// `migration.max_bitmap_size` QEMU proposes (256 MiB).
pub const DEFAULT_MAX_BITMAP_SIZE: u64 = 256 << 20;
/// The largest `max_msg_fds` QEMU accepts in a reply.
pub const QEMU_MAX_MSG_FDS: u64 = 16;
/// The largest `max_data_xfer_size` QEMU accepts in a reply (64 MiB).
pub const QEMU_MAX_DATA_XFER_SIZE: u64 = 64 << 20;

const WHAT: &str = "VERSION";

/// The `capabilities` object. Absent members take the protocol defaults (see the accessors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Most file descriptors the sender can receive in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_msg_fds: Option<u64>,
    /// Largest `count` of a data transfer (REGION/DMA READ/WRITE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_xfer_size: Option<u64>,
    /// Most DMA mappings valid at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dma_maps: Option<u64>,
    /// Page sizes supported for DMA maps, or'ed together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgsizes: Option<u64>,
    /// A second socket for server-to-client commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_socket: Option<TwinSocket>,
    /// Whether REGION_WRITE_MULTI is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_multiple: Option<bool>,
    /// Migration parameters (sent by QEMU and libvfio-user, not in the spec's table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationCapability>,
    /// A project extension: the client may register one shared buffer, and MIG_DATA_READ
    /// and MIG_DATA_WRITE then name bytes in it instead of carrying them (same host only;
    /// [`super::shared_buf`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_data_shared: Option<bool>,
}

/// The `twin_socket` capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinSocket {
    /// Whether the sender supports (in a reply: enabled) twin-socket mode.
    #[serde(default)]
    pub supported: bool,
    /// In a reply: index of the server-to-client socket among the message's fds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_index: Option<u64>,
}

/// The `migration` capability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapability {
    /// Page size of dirty bitmaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgsize: Option<u64>,
    /// Largest dirty bitmap, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitmap_size: Option<u64>,
}

impl Capabilities {
    /// What QEMU 10.1 and later propose: 16 fds, 1 MiB transfers, 4 KiB pages, 65535 maps,
    /// write_multiple, migration {pgsize 4096, max_bitmap_size 256 MiB}.
    pub fn qemu_proposal() -> Self {
        Self {
            max_msg_fds: Some(QEMU_MAX_MSG_FDS),
            max_data_xfer_size: Some(DEFAULT_MAX_DATA_XFER_SIZE),
            max_dma_maps: Some(DEFAULT_MAX_DMA_MAPS),
            pgsizes: Some(DEFAULT_PGSIZES),
            twin_socket: None,
            write_multiple: Some(true),
            migration: Some(MigrationCapability {
                pgsize: Some(DEFAULT_PGSIZES),
                max_bitmap_size: Some(DEFAULT_MAX_BITMAP_SIZE),
            }),
            mig_data_shared: None,
        }
    }

    /// `max_msg_fds`, or its default 1.
    pub fn max_msg_fds(&self) -> u64 {
        self.max_msg_fds.unwrap_or(DEFAULT_MAX_MSG_FDS)
    }

    /// `max_data_xfer_size`, or its default 1 MiB.
    pub fn max_data_xfer_size(&self) -> u64 {
        self.max_data_xfer_size
            .unwrap_or(DEFAULT_MAX_DATA_XFER_SIZE)
    }

    /// `max_dma_maps`, or its default 65535.
    pub fn max_dma_maps(&self) -> u64 {
        self.max_dma_maps.unwrap_or(DEFAULT_MAX_DMA_MAPS)
    }

    /// `pgsizes`, or its default 4096.
    pub fn pgsizes(&self) -> u64 {
        self.pgsizes.unwrap_or(DEFAULT_PGSIZES)
    }
}

/// The JSON document after the version numbers: `{"capabilities": {...}}`.
#[derive(Serialize, Deserialize)]
struct VersionJson {
    #[serde(default)]
    capabilities: Capabilities,
}

/// Parses the JSON document. Objects must be objects: serde would also take a JSON array
/// for a struct, which QEMU does not.
fn parse_json(json: &[u8]) -> Result<Capabilities, ProtocolError> {
    let json_error = |e: serde_json::Error| ProtocolError::Json(e.to_string());
    let value: serde_json::Value = serde_json::from_slice(json).map_err(json_error)?;
    let not_object = |what: &str| ProtocolError::Json(format!("{what} is not an object"));
    let doc = value
        .as_object()
        .ok_or_else(|| not_object("the document"))?;
    if let Some(caps) = doc.get("capabilities") {
        let caps = caps.as_object().ok_or_else(|| not_object("capabilities"))?;
        for member in ["twin_socket", "migration"] {
            if caps.get(member).is_some_and(|v| !v.is_object()) {
                return Err(not_object(member));
            }
        }
    }
    Ok(serde_json::from_value::<VersionJson>(value)
        .map_err(json_error)?
        .capabilities)
}

/// The VERSION payload, used for both the proposal and the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Capabilities (absent JSON parses as all defaults).
    pub capabilities: Capabilities,
}

impl Payload for Version {
    fn parse(payload: &[u8], _limits: &Limits) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(WHAT, payload);
        let major = r.u16()?;
        let minor = r.u16()?;
        let data = r.rest();
        let capabilities = match data.split_last() {
            None => Capabilities::default(),
            Some((&last, json)) => {
                if last != 0 {
                    return Err(ProtocolError::invalid(
                        WHAT,
                        "version data is not NUL-terminated",
                    ));
                }
                if json.is_empty() {
                    Capabilities::default()
                } else {
                    parse_json(json)?
                }
            }
        };
        Ok(Self {
            major,
            minor,
            capabilities,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.major);
        put_u16(out, self.minor);
        let doc = VersionJson {
            capabilities: self.capabilities.clone(),
        };
        // Serializing plain structs of integers and booleans cannot fail.
        if let Ok(json) = serde_json::to_vec(&doc) {
            out.extend_from_slice(&json);
        }
        out.push(0);
    }
}

/// What a server can do, the input to [`negotiate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOffer {
    /// Highest minor version the server speaks.
    pub minor: u16,
    /// Most fds the server accepts in one message (clamped to 16 for QEMU).
    pub max_msg_fds: u64,
    /// Largest data transfer the server accepts (clamped to 64 MiB for QEMU).
    pub max_data_xfer_size: u64,
    /// Most DMA mappings the server keeps.
    pub max_dma_maps: u64,
    /// DMA page sizes the server supports.
    pub pgsizes: u64,
    /// Whether the server can set up a twin socket (the caller then creates it and sends
    /// the client's end as fd 0 of the reply).
    pub twin_socket: bool,
    /// Whether the server handles REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// Largest dirty bitmap (DMA_LOGGING_REPORT) the server sends; `None` keeps `migration`
    /// out of the reply. The device server offers it only for functions that migrate.
    pub migration_max_bitmap_size: Option<u64>,
    /// Whether a client may register a shared migration data buffer (the project's
    /// `mig_data_shared`); only a transport that passes fds (a Unix socket) offers it.
    pub mig_data_shared: bool,
}

impl Default for ServerOffer {
    fn default() -> Self {
        Self {
            minor: PROTOCOL_MINOR,
            max_msg_fds: QEMU_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            pgsizes: DEFAULT_PGSIZES,
            twin_socket: false,
            write_multiple: true,
            migration_max_bitmap_size: Some(DEFAULT_MAX_BITMAP_SIZE),
            mig_data_shared: true,
        }
    }
}

/// The parameters of a session, as both sides apply them after VERSION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Most fds in one message.
    pub max_msg_fds: u64,
    /// Largest data transfer.
    pub max_data_xfer_size: u64,
    /// Most DMA mappings.
    pub max_dma_maps: u64,
    /// DMA page sizes.
    pub pgsizes: u64,
    /// Twin-socket mode is on.
    pub twin_socket: bool,
    /// REGION_WRITE_MULTI may be used.
    pub write_multiple: bool,
    /// Migration parameters, when both sides have them.
    pub migration: Option<MigrationCapability>,
    /// The client may register a shared migration data buffer.
    pub mig_data_shared: bool,
}

impl Negotiated {
    /// `base` with the negotiated data transfer size and fd count applied.
    pub fn limits(&self, base: &Limits) -> Limits {
        Limits {
            max_data_xfer_size: self.max_data_xfer_size,
            max_msg_fds: usize::try_from(self.max_msg_fds).unwrap_or(usize::MAX),
            ..base.clone()
        }
    }
}

/// Server side: the reply to a client's proposal and the session parameters.
///
/// Each numeric capability is the minimum of the client's value (or default) and the server's
/// (clamped to what QEMU accepts); `pgsizes` is the intersection. A capability the client did
/// not name is left out of the reply unless its value differs from the protocol default.
/// Boolean capabilities and `migration` appear only if the client proposed them.
/// `mig_data_shared` (the project's extension) is on when the client proposed `true`, the
/// server offers it and the client takes at least one fd.
/// Twin-socket mode is on when the client proposed `twin_socket.supported`, the server offers
/// it and the client takes at least one fd; the reply then names fd 0 (`fd_index` of a
/// proposal means nothing and is ignored).
/// A different major version is [`ProtocolError::UnsupportedVersion`] (the server then
/// closes the connection, per the spec).
pub fn negotiate(
    proposal: &Version,
    offer: &ServerOffer,
) -> Result<(Version, Negotiated), ProtocolError> {
    if proposal.major != PROTOCOL_MAJOR {
        return Err(ProtocolError::UnsupportedVersion {
            major: proposal.major,
            minor: proposal.minor,
        });
    }
    let client = &proposal.capabilities;
    let minor = proposal.minor.min(offer.minor);

    let max_msg_fds = client
        .max_msg_fds()
        .min(offer.max_msg_fds)
        .min(QEMU_MAX_MSG_FDS);
    let max_data_xfer_size = client
        .max_data_xfer_size()
        .min(offer.max_data_xfer_size)
        .min(QEMU_MAX_DATA_XFER_SIZE);
    if max_data_xfer_size == 0 {
        return Err(ProtocolError::invalid(WHAT, "max_data_xfer_size of 0"));
    }
    let max_dma_maps = client.max_dma_maps().min(offer.max_dma_maps);
    let pgsizes = client.pgsizes() & offer.pgsizes;
    if pgsizes == 0 {
        return Err(ProtocolError::invalid(WHAT, "no common DMA page size"));
    }
    // The client's end of the twin socket travels as an fd of the reply: a client that
    // takes no fds cannot have one.
    let twin_socket =
        client.twin_socket.is_some_and(|t| t.supported) && offer.twin_socket && max_msg_fds > 0;
    let write_multiple = client.write_multiple.map(|w| w && offer.write_multiple);
    // The shared buffer travels as an fd: a client that takes no fds cannot have one.
    let mig_data_shared = client
        .mig_data_shared
        .map(|m| m && offer.mig_data_shared && max_msg_fds > 0);
    let migration = match (client.migration, offer.migration_max_bitmap_size) {
        (Some(m), Some(server_max)) => {
            let pgsize = m.pgsize.unwrap_or(DEFAULT_PGSIZES);
            (pgsize.is_power_of_two() && pgsize & pgsizes != 0).then(|| MigrationCapability {
                pgsize: Some(pgsize),
                max_bitmap_size: Some(
                    m.max_bitmap_size
                        .unwrap_or(DEFAULT_MAX_BITMAP_SIZE)
                        .min(server_max),
                ),
            })
        }
        _ => None,
    };

    let keep = |proposed: Option<u64>, value: u64, default: u64| {
        (proposed.is_some() || value != default).then_some(value)
    };
    let capabilities = Capabilities {
        max_msg_fds: keep(client.max_msg_fds, max_msg_fds, DEFAULT_MAX_MSG_FDS),
        max_data_xfer_size: keep(
            client.max_data_xfer_size,
            max_data_xfer_size,
            DEFAULT_MAX_DATA_XFER_SIZE,
        ),
        max_dma_maps: keep(client.max_dma_maps, max_dma_maps, DEFAULT_MAX_DMA_MAPS),
        pgsizes: keep(client.pgsizes, pgsizes, DEFAULT_PGSIZES),
        twin_socket: client.twin_socket.map(|_| TwinSocket {
            supported: twin_socket,
            fd_index: twin_socket.then_some(0),
        }),
        write_multiple,
        migration,
        mig_data_shared,
    };
    let reply = Version {
        major: PROTOCOL_MAJOR,
        minor,
        capabilities,
    };
    let negotiated = Negotiated {
        major: PROTOCOL_MAJOR,
        minor,
        max_msg_fds,
        max_data_xfer_size,
        max_dma_maps,
        pgsizes,
        twin_socket,
        write_multiple: write_multiple.unwrap_or(false),
        mig_data_shared: mig_data_shared.unwrap_or(false),
        migration,
    };
    Ok((reply, negotiated))
}

/// Client side: checks a server's reply against the proposal, as QEMU does, and gives the
/// session parameters (the smaller of both sides' limits).
pub fn accept_reply(proposal: &Version, reply: &Version) -> Result<Negotiated, ProtocolError> {
    if reply.major != proposal.major {
        return Err(ProtocolError::UnsupportedVersion {
            major: reply.major,
            minor: reply.minor,
        });
    }
    if reply.minor > proposal.minor {
        return Err(ProtocolError::invalid(
            WHAT,
            format!(
                "reply minor {} above proposed {}",
                reply.minor, proposal.minor
            ),
        ));
    }
    let ours = &proposal.capabilities;
    let theirs = &reply.capabilities;
    if theirs.max_msg_fds() > QEMU_MAX_MSG_FDS {
        return Err(ProtocolError::too_large(
            "VERSION max_msg_fds",
            theirs.max_msg_fds(),
            QEMU_MAX_MSG_FDS,
        ));
    }
    if theirs.max_data_xfer_size() > QEMU_MAX_DATA_XFER_SIZE {
        return Err(ProtocolError::too_large(
            "VERSION max_data_xfer_size",
            theirs.max_data_xfer_size(),
            QEMU_MAX_DATA_XFER_SIZE,
        ));
    }
    let max_data_xfer_size = theirs.max_data_xfer_size().min(ours.max_data_xfer_size());
    if max_data_xfer_size == 0 {
        return Err(ProtocolError::invalid(WHAT, "max_data_xfer_size of 0"));
    }
    let pgsizes = theirs.pgsizes() & ours.pgsizes();
    if pgsizes == 0 {
        return Err(ProtocolError::invalid(WHAT, "no common DMA page size"));
    }
    let twin_socket = match theirs.twin_socket {
        Some(TwinSocket {
            supported: true,
            fd_index,
        }) => {
            if !ours.twin_socket.is_some_and(|t| t.supported) {
                return Err(ProtocolError::invalid(WHAT, "twin socket not proposed"));
            }
            if fd_index.is_none() {
                return Err(ProtocolError::invalid(WHAT, "twin socket without fd_index"));
            }
            true
        }
        _ => false,
    };
    let write_multiple = theirs.write_multiple == Some(true) && ours.write_multiple == Some(true);
    if theirs.write_multiple.is_some() && ours.write_multiple.is_none() {
        return Err(ProtocolError::invalid(WHAT, "write_multiple not proposed"));
    }
    if theirs.mig_data_shared.is_some() && ours.mig_data_shared.is_none() {
        return Err(ProtocolError::invalid(WHAT, "mig_data_shared not proposed"));
    }
    let max_msg_fds = theirs.max_msg_fds().min(ours.max_msg_fds());
    let mig_data_shared = theirs.mig_data_shared == Some(true)
        && ours.mig_data_shared == Some(true)
        && max_msg_fds > 0;
    let migration = match (ours.migration, theirs.migration) {
        (Some(_), Some(m)) => Some(m),
        (None, Some(_)) => {
            return Err(ProtocolError::invalid(WHAT, "migration not proposed"));
        }
        _ => None,
    };
    Ok(Negotiated {
        major: reply.major,
        minor: reply.minor,
        max_msg_fds,
        max_data_xfer_size,
        max_dma_maps: theirs.max_dma_maps().min(ours.max_dma_maps()),
        pgsizes,
        twin_socket,
        write_multiple,
        migration,
        mig_data_shared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proposal as QEMU 10.1+ puts it on the wire (key order as QEMU's qdict emits it
    /// does not matter).
    const QEMU_JSON: &str = r#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;

    fn payload(major: u16, minor: u16, json: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        put_u16(&mut p, major);
        put_u16(&mut p, minor);
        p.extend_from_slice(json);
        p
    }

    fn qemu_proposal_bytes() -> Vec<u8> {
        let mut json = QEMU_JSON.as_bytes().to_vec();
        json.push(0);
        payload(0, 0, &json)
    }

    #[test]
    fn parses_qemu_proposal() {
        let v = Version::parse(&qemu_proposal_bytes(), &Limits::default()).unwrap();
        assert_eq!((v.major, v.minor), (0, 0));
        assert_eq!(v.capabilities, Capabilities::qemu_proposal());
    }

    #[test]
    fn round_trip() {
        let limits = Limits::default();
        for caps in [
            Capabilities::default(),
            Capabilities::qemu_proposal(),
            Capabilities {
                twin_socket: Some(TwinSocket {
                    supported: true,
                    fd_index: Some(0),
                }),
                ..Capabilities::default()
            },
        ] {
            let v = Version {
                major: 0,
                minor: 3,
                capabilities: caps,
            };
            assert_eq!(Version::parse(&v.to_bytes(), &limits).unwrap(), v);
        }
    }

    #[test]
    fn absent_or_empty_data_means_defaults() {
        let limits = Limits::default();
        let bare = Version::parse(&payload(0, 1, b""), &limits).unwrap();
        assert_eq!(bare.capabilities, Capabilities::default());
        assert_eq!(bare.capabilities.max_msg_fds(), 1);
        assert_eq!(bare.capabilities.max_data_xfer_size(), 1 << 20);
        let nul = Version::parse(&payload(0, 1, b"\0"), &limits).unwrap();
        assert_eq!(nul, bare);
        let no_caps = Version::parse(&payload(0, 1, b"{}\0"), &limits).unwrap();
        assert_eq!(no_caps, bare);
        // Unknown members are ignored (forward compatibility).
        let extra = payload(0, 1, b"{\"capabilities\":{\"future\":[1,2]},\"x\":1}\0");
        let extra = Version::parse(&extra, &limits).unwrap();
        assert_eq!(extra, bare);
    }

    #[test]
    fn refuses_bad_json_missing_nul_and_truncation() {
        let limits = Limits::default();
        let err = Version::parse(&payload(0, 0, b"{\"capabilities\":\0"), &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::Json(_)));
        assert_eq!(err.errno(), 22);
        let err = Version::parse(
            &payload(0, 0, b"{\"capabilities\":{\"max_msg_fds\":\"x\"}}\0"),
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, ProtocolError::Json(_)));
        for not_objects in [
            &b"[]\0"[..],
            b"{\"capabilities\":[]}\0",
            b"{\"capabilities\":{\"migration\":[4096]}}\0",
            b"{\"capabilities\":{\"twin_socket\":true}}\0",
        ] {
            let err = Version::parse(&payload(0, 0, not_objects), &limits).unwrap_err();
            assert!(matches!(err, ProtocolError::Json(_)));
        }
        // NUL inside the document.
        let err = Version::parse(&payload(0, 0, b"{}\0{}\0"), &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::Json(_)));
        let err = Version::parse(&payload(0, 0, QEMU_JSON.as_bytes()), &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::Invalid { .. }));
        assert_eq!(err.errno(), 22);
        let err = Version::parse(&[0, 0, 0], &limits).unwrap_err();
        assert!(matches!(err, ProtocolError::Truncated { .. }));
    }

    #[test]
    fn negotiates_qemu_proposal_within_limits() {
        let proposal = Version::parse(&qemu_proposal_bytes(), &Limits::default()).unwrap();
        let offer = ServerOffer {
            max_msg_fds: 64,
            max_data_xfer_size: 1 << 30,
            migration_max_bitmap_size: Some(1 << 20),
            ..ServerOffer::default()
        };
        let (reply, negotiated) = negotiate(&proposal, &offer).unwrap();
        assert_eq!((reply.major, reply.minor), (0, 0));
        let caps = &reply.capabilities;
        assert_eq!(caps.max_msg_fds, Some(16));
        assert_eq!(caps.max_data_xfer_size, Some(1 << 20));
        assert_eq!(caps.pgsizes, Some(4096));
        assert_eq!(caps.max_dma_maps, Some(65535));
        assert_eq!(caps.write_multiple, Some(true));
        assert_eq!(caps.twin_socket, None);
        assert_eq!(
            caps.migration,
            Some(MigrationCapability {
                pgsize: Some(4096),
                max_bitmap_size: Some(1 << 20)
            })
        );
        assert!(negotiated.write_multiple && !negotiated.twin_socket);
        // The reply is what QEMU would accept, and the client derives the same session.
        let client_view = accept_reply(&proposal, &reply).unwrap();
        assert_eq!(client_view, negotiated);
        // The reply survives the wire.
        assert_eq!(
            Version::parse(&reply.to_bytes(), &Limits::default()).unwrap(),
            reply
        );
    }

    #[test]
    fn negotiation_is_a_subset() {
        // A bare proposal: nothing but defaults may come back, unless lower than the default.
        let proposal = Version::default();
        let offer = ServerOffer {
            max_data_xfer_size: 4096,
            migration_max_bitmap_size: Some(1 << 20),
            ..ServerOffer::default()
        };
        let (reply, negotiated) = negotiate(&proposal, &offer).unwrap();
        assert_eq!(
            reply.capabilities,
            Capabilities {
                max_data_xfer_size: Some(4096),
                ..Capabilities::default()
            }
        );
        assert_eq!(negotiated.max_msg_fds, 1);
        assert!(!negotiated.write_multiple);
        assert_eq!(negotiated.migration, None);

        // A server without write_multiple or migration says so.
        let qemu = Version {
            capabilities: Capabilities::qemu_proposal(),
            ..Version::default()
        };
        let offer = ServerOffer {
            write_multiple: false,
            migration_max_bitmap_size: None,
            ..ServerOffer::default()
        };
        let (reply, negotiated) = negotiate(&qemu, &offer).unwrap();
        assert_eq!(reply.capabilities.write_multiple, Some(false));
        assert_eq!(reply.capabilities.migration, None);
        assert!(!negotiated.write_multiple);

        // Minor never above the client's.
        let newer = Version {
            minor: 7,
            ..Version::default()
        };
        let offer = ServerOffer {
            minor: 2,
            ..ServerOffer::default()
        };
        assert_eq!(negotiate(&newer, &offer).unwrap().0.minor, 2);
    }

    #[test]
    fn negotiation_refusals() {
        let other_major = Version {
            major: 1,
            ..Version::default()
        };
        let err = negotiate(&other_major, &ServerOffer::default()).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::UnsupportedVersion { major: 1, minor: 0 }
        );
        assert_eq!(err.errno(), 95);

        let odd_pages = Version {
            capabilities: Capabilities {
                pgsizes: Some(1 << 21),
                ..Capabilities::default()
            },
            ..Version::default()
        };
        assert!(negotiate(&odd_pages, &ServerOffer::default()).is_err());
    }

    #[test]
    fn twin_socket_negotiation() {
        let proposal = Version {
            capabilities: Capabilities {
                twin_socket: Some(TwinSocket {
                    supported: true,
                    fd_index: None,
                }),
                ..Capabilities::default()
            },
            ..Version::default()
        };
        let (reply, n) = negotiate(&proposal, &ServerOffer::default()).unwrap();
        assert_eq!(
            reply.capabilities.twin_socket,
            Some(TwinSocket {
                supported: false,
                fd_index: None
            })
        );
        assert!(!n.twin_socket);
        let offer = ServerOffer {
            twin_socket: true,
            ..ServerOffer::default()
        };
        let (reply, n) = negotiate(&proposal, &offer).unwrap();
        assert_eq!(reply.capabilities.twin_socket.unwrap().fd_index, Some(0));
        assert!(n.twin_socket);
        assert!(accept_reply(&proposal, &reply).unwrap().twin_socket);
    }

    /// A proposal with `twin_socket` as `json` (and `max_msg_fds` when given), parsed from
    /// the wire as a client would send it.
    fn twin_proposal(json: &str, max_msg_fds: Option<u64>) -> Version {
        let fds = max_msg_fds.map_or(String::new(), |n| format!(",\"max_msg_fds\":{n}"));
        let doc = format!("{{\"capabilities\":{{\"twin_socket\":{json}{fds}}}}}\0");
        Version::parse(&payload(0, 0, doc.as_bytes()), &Limits::default()).unwrap()
    }

    #[test]
    fn twin_socket_edge_cases() {
        let offer = ServerOffer {
            twin_socket: true,
            ..ServerOffer::default()
        };
        let off = TwinSocket {
            supported: false,
            fd_index: None,
        };
        // Proposed without `supported`, or with it false: not enabled, and said so.
        for json in ["{}", r#"{"supported":false}"#, r#"{"fd_index":0}"#] {
            let proposal = twin_proposal(json, None);
            let (reply, n) = negotiate(&proposal, &offer).unwrap();
            assert_eq!(reply.capabilities.twin_socket, Some(off), "{json}");
            assert!(!n.twin_socket, "{json}");
            assert!(!accept_reply(&proposal, &reply).unwrap().twin_socket);
        }
        // A proposal's `fd_index` means nothing: the reply names fd 0.
        let proposal = twin_proposal(r#"{"supported":true,"fd_index":3}"#, None);
        let (reply, n) = negotiate(&proposal, &offer).unwrap();
        assert!(n.twin_socket);
        assert_eq!(
            reply.capabilities.twin_socket,
            Some(TwinSocket {
                supported: true,
                fd_index: Some(0)
            })
        );
        // A client that takes no fds cannot receive the socket.
        let proposal = twin_proposal(r#"{"supported":true}"#, Some(0));
        let (reply, n) = negotiate(&proposal, &offer).unwrap();
        assert_eq!(reply.capabilities.twin_socket, Some(off));
        assert!(!n.twin_socket);
        // Not proposed (QEMU 11): nothing in the reply, whatever the server offers.
        let qemu = Version {
            capabilities: Capabilities::qemu_proposal(),
            ..Version::default()
        };
        let (reply, n) = negotiate(&qemu, &offer).unwrap();
        assert_eq!(reply.capabilities.twin_socket, None);
        assert!(!n.twin_socket);
        // The client: `supported: false` with an index is simply off; enabled without
        // having asked, or without an index, is refused.
        let asked = twin_proposal(r#"{"supported":true}"#, None);
        let mut reply = negotiate(&asked, &offer).unwrap().0;
        reply.capabilities.twin_socket = Some(TwinSocket {
            supported: false,
            fd_index: Some(0),
        });
        assert!(!accept_reply(&asked, &reply).unwrap().twin_socket);
        reply.capabilities.twin_socket = Some(TwinSocket {
            supported: true,
            fd_index: None,
        });
        assert!(accept_reply(&asked, &reply).is_err());
        let unasked = twin_proposal(r#"{"supported":false}"#, None);
        reply.capabilities.twin_socket = Some(TwinSocket {
            supported: true,
            fd_index: Some(0),
        });
        assert!(accept_reply(&unasked, &reply).is_err());
    }

    #[test]
    fn client_refuses_bad_replies() {
        let proposal = Version {
            capabilities: Capabilities::qemu_proposal(),
            ..Version::default()
        };
        let good = negotiate(&proposal, &ServerOffer::default()).unwrap().0;
        assert!(accept_reply(&proposal, &good).is_ok());

        let mut r = good.clone();
        r.capabilities.max_msg_fds = Some(17);
        assert!(matches!(
            accept_reply(&proposal, &r),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut r = good.clone();
        r.capabilities.max_data_xfer_size = Some((64 << 20) + 1);
        assert!(accept_reply(&proposal, &r).is_err());
        let mut r = good.clone();
        r.major = 1;
        assert!(accept_reply(&proposal, &r).is_err());
        let mut r = good.clone();
        r.minor = 1;
        assert!(accept_reply(&proposal, &r).is_err());
        let mut r = good.clone();
        r.capabilities.twin_socket = Some(TwinSocket {
            supported: true,
            fd_index: Some(0),
        });
        assert!(accept_reply(&proposal, &r).is_err());
    }

    #[test]
    fn mig_data_shared_needs_both_sides_and_fds() {
        let proposal = |shared: Option<bool>, fds: u64| Version {
            capabilities: Capabilities {
                mig_data_shared: shared,
                max_msg_fds: Some(fds),
                ..Capabilities::qemu_proposal()
            },
            ..Version::default()
        };
        let offer = ServerOffer::default();
        let asked = proposal(Some(true), 16);
        let (reply, negotiated) = negotiate(&asked, &offer).unwrap();
        assert!(negotiated.mig_data_shared);
        assert!(accept_reply(&asked, &reply).unwrap().mig_data_shared);
        let json = String::from_utf8(reply.to_bytes()[4..].to_vec()).unwrap();
        assert!(json.contains(r#""mig_data_shared":true"#), "{json}");
        let refusing = ServerOffer {
            mig_data_shared: false,
            ..ServerOffer::default()
        };
        let (reply, negotiated) = negotiate(&asked, &refusing).unwrap();
        assert!(!negotiated.mig_data_shared);
        assert!(!accept_reply(&asked, &reply).unwrap().mig_data_shared);
        let no_fds = negotiate(&proposal(Some(true), 0), &offer).unwrap().1;
        assert!(!no_fds.mig_data_shared);
        let quiet = proposal(None, 16);
        let (mut reply, negotiated) = negotiate(&quiet, &offer).unwrap();
        assert!(!negotiated.mig_data_shared);
        assert_eq!(reply.capabilities.mig_data_shared, None);
        reply.capabilities.mig_data_shared = Some(true);
        assert!(accept_reply(&quiet, &reply).is_err());
    }
}
