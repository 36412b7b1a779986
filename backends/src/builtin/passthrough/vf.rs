//! SR-IOV VF profiles applied before a VF is exposed: MAC, VLAN, spoof checking, trust and
//! transmit rate limits, set on the PF's netdev over rtnetlink (what `ip link set PF vf N ...`
//! sends), and restored when the function is destroyed.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate,
    VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Where a VF is managed: its PF's netdev and its number there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfLocation {
    /// The PF's network interface name.
    pub netdev: String,
    /// Its interface index.
    pub ifindex: u32,
    /// The VF's number on the PF (`virtfnN`).
    pub vf: u32,
}

/// What create asks to set on a VF (attributes `mac`, `vlan`, `spoofchk`, `trust`,
/// `max_tx_rate`, `min_tx_rate`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfProfile {
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// VLAN ID (0 clears it).
    pub vlan: Option<u16>,
    /// Spoof checking.
    pub spoofchk: Option<bool>,
    /// Trusted VF.
    pub trust: Option<bool>,
    /// Most transmit rate, in Mb/s (0: no limit).
    pub max_tx_rate: Option<u32>,
    /// Guaranteed transmit rate, in Mb/s (0: none).
    pub min_tx_rate: Option<u32>,
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_rate(key: &str, text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .map_err(|_| format!("`{key}` is a rate in Mb/s (0: none), not `{text}`"))
}

fn parse_switch(key: &str, text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{key}` is `on` or `off`, not `{text}`")),
    }
}

impl VfProfile {
    /// Reads the attributes of a create request.
    pub fn from_attributes(attributes: &[(String, String)]) -> Result<Self, String> {
        let mut profile = Self::default();
        for (key, value) in attributes {
            match key.as_str() {
                "mac" => {
                    let mac = parse_mac(value)
                        .ok_or_else(|| format!("`mac` is not a MAC address: `{value}`"))?;
                    if mac[0] & 1 != 0 {
                        return Err(format!("`mac` {value} is a multicast address"));
                    }
                    profile.mac = Some(mac);
                }
                "vlan" => {
                    let vlan = value
                        .parse::<u16>()
                        .ok()
                        .filter(|v| *v < 4095)
                        .ok_or_else(|| format!("`vlan` is 0-4094, not `{value}`"))?;
                    profile.vlan = Some(vlan);
                }
                "spoofchk" => profile.spoofchk = Some(parse_switch(key, value)?),
                "trust" => profile.trust = Some(parse_switch(key, value)?),
                "max_tx_rate" => profile.max_tx_rate = Some(parse_rate(key, value)?),
                "min_tx_rate" => profile.min_tx_rate = Some(parse_rate(key, value)?),
                other => {
                    return Err(format!(
                        "the passthrough backend has no attribute `{other}` (have: mac, vlan, \
                         spoofchk, trust, max_tx_rate, min_tx_rate)"
                    ));
                }
            }
        }
        if let (Some(min), Some(max)) = (profile.min_tx_rate, profile.max_tx_rate)
            && max != 0
            && min > max
        {
            return Err(format!(
                "`min_tx_rate` {min} is above `max_tx_rate` {max} (Mb/s)"
            ));
        }
        Ok(profile)
    }

    /// Whether there is nothing to set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The settings as VF infos for VF `vf`, each named for messages. The kernel takes both
    /// rates in one message: a rate this profile leaves alone keeps its value in `current`.
    fn infos(&self, vf: u32, current: &VfProfile) -> Vec<(&'static str, VfInfo)> {
        let mut infos = Vec::new();
        if let Some(mac) = self.mac {
            infos.push(("mac", VfInfo::Mac(VfInfoMac::new(vf, &mac))));
        }
        if let Some(vlan) = self.vlan {
            infos.push((
                "vlan",
                VfInfo::Vlan(VfInfoVlan::new(vf, u32::from(vlan), 0)),
            ));
        }
        if let Some(on) = self.spoofchk {
            infos.push((
                "spoofchk",
                VfInfo::SpoofCheck(VfInfoSpoofCheck::new(vf, on)),
            ));
        }
        if let Some(on) = self.trust {
            infos.push(("trust", VfInfo::Trust(VfInfoTrust::new(vf, on))));
        }
        if self.max_tx_rate.is_some() || self.min_tx_rate.is_some() {
            let min = self.min_tx_rate.or(current.min_tx_rate).unwrap_or(0);
            let max = self.max_tx_rate.or(current.max_tx_rate).unwrap_or(0);
            infos.push(("rate", VfInfo::Rate(VfInfoRate::new(vf, min, max))));
        }
        infos
    }
}

/// Sends one request and waits for its answer: the messages, until the kernel's ACK.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buffer = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
            if length == 0 {
                break;
            }
            at += length.next_multiple_of(4);
        }
    }
}

fn link_message(ifindex: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    message.attributes = attributes;
    message
}

/// What a VF has now, as far as this module sets it, so it can be put back.
pub fn current(location: &VfLocation) -> io::Result<VfProfile> {
    let message = link_message(
        location.ifindex,
        vec![LinkAttribute::ExtMask(vec![LinkExtentMask::Vf])],
    );
    let answers = request(RouteNetlinkMessage::GetLink(message), 0)?;
    let mut state = VfProfile::default();
    let vfs = answers.iter().flat_map(|m| match m {
        RouteNetlinkMessage::NewLink(link) => link.attributes.as_slice(),
        _ => &[],
    });
    for attribute in vfs {
        let LinkAttribute::VfInfoList(list) = attribute else {
            continue;
        };
        for LinkVfInfo(infos) in list {
            let mine = infos.iter().any(|i| match i {
                VfInfo::Mac(m) => m.vf_id == location.vf,
                _ => false,
            });
            if !mine {
                continue;
            }
            for info in infos {
                match info {
                    VfInfo::Mac(m) => state.mac = m.mac[..6].try_into().ok(),
                    VfInfo::Vlan(v) => state.vlan = u16::try_from(v.vlan_id).ok(),
                    VfInfo::SpoofCheck(s) => state.spoofchk = Some(s.enabled),
                    VfInfo::Trust(t) => state.trust = Some(t.enabled),
                    VfInfo::Rate(r) => {
                        state.min_tx_rate = Some(r.min_tx_rate);
                        state.max_tx_rate = Some(r.max_tx_rate);
                    }
                    _ => {}
                }
            }
        }
    }
    // A kernel that reports no rates has none set.
    state.min_tx_rate.get_or_insert(0);
    state.max_tx_rate.get_or_insert(0);
    if state.mac.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} reports no VF {}", location.netdev, location.vf),
        ));
    }
    Ok(state)
}

/// Why a profile could not be applied; what was set before the refusal is undone.
#[derive(Debug, thiserror::Error)]
#[error("{netdev} refused {what} of VF {vf}: {source}")]
pub struct VfError {
    /// The PF's netdev.
    pub netdev: String,
    /// The VF.
    pub vf: u32,
    /// Which setting (`mac`, `vlan`, `spoofchk`, `trust`, `rate`, reading the settings).
    pub what: String,
    /// The kernel's error.
    #[source]
    pub source: io::Error,
}

/// Sets each setting of `profile` on the VF in turn; on a refusal, puts back `previous` for
/// what was already set, and fails naming the setting.
pub fn apply(
    location: &VfLocation,
    profile: &VfProfile,
    previous: &VfProfile,
) -> Result<(), VfError> {
    let previous_infos = previous.infos(location.vf, previous);
    let infos = profile.infos(location.vf, previous);
    for (n, (what, info)) in infos.iter().enumerate() {
        if let Err(source) = set(location, info.clone()) {
            let done: Vec<&str> = infos.iter().take(n).map(|(w, _)| *w).collect();
            for (name, old) in &previous_infos {
                if done.contains(name)
                    && let Err(e) = set(location, old.clone())
                {
                    tracing::warn!(
                        "{}: putting back {name} of VF {}: {e}",
                        location.netdev,
                        location.vf
                    );
                }
            }
            return Err(VfError {
                netdev: location.netdev.clone(),
                vf: location.vf,
                what: what.to_string(),
                source,
            });
        }
    }
    Ok(())
}

/// Puts back what [`apply`] changed: the settings of `previous` that `profile` set.
pub fn restore(location: &VfLocation, profile: &VfProfile, previous: &VfProfile) {
    let changed: Vec<&str> = profile
        .infos(location.vf, previous)
        .iter()
        .map(|(w, _)| *w)
        .collect();
    for (what, info) in previous.infos(location.vf, previous) {
        if changed.contains(&what)
            && let Err(e) = set(location, info)
        {
            tracing::warn!(
                "{}: restoring {what} of VF {}: {e}",
                location.netdev,
                location.vf
            );
        }
    }
}

fn set(location: &VfLocation, info: VfInfo) -> io::Result<()> {
    let message = link_message(
        location.ifindex,
        vec![LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![info])])],
    );
    request(RouteNetlinkMessage::SetLink(message), 0).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_are_read_and_checked() {
        let p = VfProfile::from_attributes(&attrs(&[
            ("mac", "52:54:00:12:34:56"),
            ("vlan", "5"),
            ("spoofchk", "off"),
            ("trust", "on"),
            ("max_tx_rate", "100"),
        ]))
        .unwrap();
        assert_eq!(p.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(
            (p.vlan, p.spoofchk, p.trust),
            (Some(5), Some(false), Some(true))
        );
        assert_eq!(p.max_tx_rate, Some(100));
        assert_eq!(p.infos(3, &VfProfile::default()).len(), 5);
        for bad in [
            ("mac", "52:54:00:12:34"),
            ("mac", "01:00:5e:00:00:01"),
            ("vlan", "4095"),
            ("trust", "yes"),
            ("rate", "10"),
            ("max_tx_rate", "-1"),
            ("min_tx_rate", "fast"),
        ] {
            assert!(
                VfProfile::from_attributes(&attrs(&[bad])).is_err(),
                "{bad:?}"
            );
        }
        assert!(VfProfile::from_attributes(&[]).unwrap().is_empty());
        let e = VfProfile::from_attributes(&attrs(&[("min_tx_rate", "20"), ("max_tx_rate", "10")]))
            .unwrap_err();
        assert!(e.contains("above"), "{e}");
    }

    #[test]
    fn a_rate_left_alone_keeps_its_current_value() {
        let current = VfProfile {
            min_tx_rate: Some(10),
            max_tx_rate: Some(500),
            ..VfProfile::default()
        };
        let only_max = VfProfile {
            max_tx_rate: Some(100),
            ..VfProfile::default()
        };
        let infos = only_max.infos(2, &current);
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].0, "rate");
        assert_eq!(infos[0].1, VfInfo::Rate(VfInfoRate::new(2, 10, 100)));
        // Put back as it was.
        assert_eq!(
            current.infos(2, &current)[0].1,
            VfInfo::Rate(VfInfoRate::new(2, 10, 500))
        );
        // Nothing known: the kernel's defaults (no limits).
        let only_min = VfProfile {
            min_tx_rate: Some(5),
            ..VfProfile::default()
        };
        assert_eq!(
            only_min.infos(0, &VfProfile::default())[0].1,
            VfInfo::Rate(VfInfoRate::new(0, 5, 0))
        );
    }

    #[test]
    fn a_netdev_without_vfs_refuses_and_the_error_names_the_setting() {
        // The loopback device has no VFs: the kernel refuses, as a PF refusing a setting.
        let lo = VfLocation {
            netdev: "lo".into(),
            ifindex: 1,
            vf: 0,
        };
        assert!(current(&lo).is_err());
        let profile = VfProfile {
            mac: Some([0x52, 0x54, 0, 0, 0, 1]),
            ..VfProfile::default()
        };
        let e = apply(&lo, &profile, &VfProfile::default()).unwrap_err();
        assert_eq!(e.what, "mac");
        assert!(e.to_string().starts_with("lo refused mac of VF 0"), "{e}");
    }
}
