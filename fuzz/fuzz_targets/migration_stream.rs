//! Arbitrary bytes as a migration stream, fed to the loader in pieces: never a panic; the
//! result does not depend on how the bytes were split; a stream that loads re-encodes to the
//! same bytes and loads again to an equal stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_variant::device::stream::{
    Stream, StreamError, StreamIdentity, StreamLimits, StreamLoader,
};

fn identity() -> StreamIdentity {
    StreamIdentity {
        fingerprint: format!("sha256:{}", "0".repeat(64)),
        backend: "fuzz".into(),
        profile: "basic".into(),
    }
}

/// Small limits so that the size checks are reached often.
fn limits() -> StreamLimits {
    StreamLimits {
        max_record: 1 << 12,
        max_stream: 1 << 16,
    }
}

fn load(pieces: &mut dyn Iterator<Item = &[u8]>) -> Result<Stream, StreamError> {
    let mut loader = StreamLoader::new(identity(), limits());
    for piece in pieces {
        loader.feed(piece)?;
    }
    loader.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = load(&mut std::iter::once(bytes));
    let pieces = load(&mut bytes.chunks(usize::from(split).max(1)));
    assert_eq!(whole.is_ok(), pieces.is_ok());
    if let (Ok(a), Ok(b)) = (&whole, &pieces) {
        assert_eq!(a, b);
        let encoded = a.encode();
        assert_eq!(encoded, bytes);
        assert_eq!(
            load(&mut std::iter::once(encoded.as_slice())).as_ref(),
            Ok(a)
        );
        assert_eq!(a.identity(), &identity());
    }
});
