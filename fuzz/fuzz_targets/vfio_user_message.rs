//! Arbitrary bytes as a stream of vfio-user messages (header + payload): every parser, chosen
//! by command number, must refuse or accept without panicking, and whatever it accepts must
//! encode to bytes that parse to an equal value. A request taken with its payload
//! (`Request::parse_owned`) is accepted or refused as the parsed copy is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_variant::vfio_user::dma::{DmaLayout, DmaReadReply, DmaWrite};
use vfio_variant::vfio_user::feature::{
    DmaLoggingControl, DmaLoggingReport, DmaLoggingReportReply, MigDataSize, MigDeviceState,
    MigrationFeature,
};
use vfio_variant::vfio_user::region::RegionInfoReply;
use vfio_variant::vfio_user::version::{ServerOffer, accept_reply, negotiate};
use vfio_variant::vfio_user::{
    Command, HEADER_SIZE, Header, Limits, Payload, ProtocolError, Reply, Request, Version,
};

/// Small limits so that the size checks are reached often.
fn limits() -> Limits {
    Limits {
        max_data_xfer_size: 4096,
        max_msg_fds: 4,
        max_write_multi: 64,
        max_irq_count: 256,
        max_dma_logging_ranges: 64,
        max_bitmap_size: 4096,
        max_info_size: 4096,
    }
}

/// Parses, and if accepted checks that encoding round-trips.
fn round_trip<T: Payload + PartialEq + std::fmt::Debug>(payload: &[u8], limits: &Limits) {
    if let Ok(value) = T::parse(payload, limits) {
        let again = T::parse(&value.to_bytes(), limits).expect("encoded value parses");
        assert_eq!(again, value);
    }
}

fn check_errno(error: &ProtocolError) {
    assert!(error.errno() > 0);
}

fn check_payload(command: Command, payload: &[u8], limits: &Limits) {
    // Taking the payload (what the server does) accepts and refuses exactly as parsing a copy.
    match (
        Request::parse(command, payload, limits),
        Request::parse_owned(command, payload.to_vec(), limits),
    ) {
        (Ok(copied), Ok(taken)) => assert_eq!(copied, taken),
        (Err(copied), Err(taken)) => assert_eq!(copied.errno(), taken.errno()),
        (copied, taken) => panic!("parse {copied:?} but parse_owned {taken:?}"),
    }
    match Request::parse(command, payload, limits) {
        Ok(request) => {
            assert_eq!(request.command(), command);
            let mut bytes = Vec::new();
            request.encode(&mut bytes);
            let again = Request::parse(command, &bytes, limits).expect("encoded request parses");
            assert_eq!(again, request);
            if let Request::Version(proposal) = &request
                && let Ok((reply, negotiated)) = negotiate(proposal, &ServerOffer::default())
            {
                assert!(reply.minor <= proposal.minor);
                assert!(negotiated.max_msg_fds <= 16);
                assert!(negotiated.max_data_xfer_size <= 64 << 20);
                assert_eq!(
                    accept_reply(proposal, &reply).expect("own reply accepted"),
                    negotiated
                );
            }
        }
        Err(e) => check_errno(&e),
    }
    match Reply::parse(command, payload, limits) {
        Ok(reply) => {
            assert_eq!(reply.command(), command);
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            let again = Reply::parse(command, &bytes, limits).expect("encoded reply parses");
            assert_eq!(again, reply);
            if let Reply::RegionInfo(info) = &reply {
                let short = info.reply_for(32);
                assert_eq!(
                    RegionInfoReply::parse(&short.to_bytes(), limits).as_ref(),
                    Ok(&short)
                );
            }
            if let (Reply::Version(reply), Ok(Request::Version(proposal))) =
                (&reply, Request::parse(command, payload, limits))
            {
                let _ = accept_reply(&proposal, reply);
            }
        }
        Err(e) => check_errno(&e),
    }
    // The feature payloads and QEMU's DMA layout, on the same bytes.
    let data = payload.get(8..).unwrap_or_default();
    round_trip::<MigrationFeature>(data, limits);
    round_trip::<MigDeviceState>(data, limits);
    round_trip::<DmaLoggingControl>(data, limits);
    round_trip::<DmaLoggingReport>(data, limits);
    round_trip::<DmaLoggingReportReply>(data, limits);
    round_trip::<MigDataSize>(data, limits);
    round_trip::<Version>(payload, limits);
    if let Ok(value) = DmaWrite::parse_layout(payload, limits, DmaLayout::Qemu) {
        let mut bytes = Vec::new();
        value.encode_layout(&mut bytes, DmaLayout::Qemu);
        assert_eq!(
            DmaWrite::parse_layout(&bytes, limits, DmaLayout::Qemu).as_ref(),
            Ok(&value)
        );
    }
    if let Ok(value) = DmaReadReply::parse_layout(payload, limits, DmaLayout::Qemu) {
        let mut bytes = Vec::new();
        value.encode_layout(&mut bytes, DmaLayout::Qemu);
        assert_eq!(
            DmaReadReply::parse_layout(&bytes, limits, DmaLayout::Qemu).as_ref(),
            Ok(&value)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    let mut rest = data;
    while let Some((head, tail)) = rest.split_first_chunk::<HEADER_SIZE>() {
        let header = Header::decode(head);
        let parsed = Header::parse(head);
        let len = header.payload_len().min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        if let Ok(h) = parsed {
            assert_eq!(Header::parse(&h.encode()), Ok(h));
        }
        if let Ok(command) = header.command() {
            check_payload(command, payload, &limits);
        }
    }
});
