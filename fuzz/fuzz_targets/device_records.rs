//! Arbitrary bytes as a backend's typed device records, fed to the reader in pieces: never a
//! panic; the outcome does not depend on how the bytes were split; every record handed over
//! is of a known kind, at a version and size its kind allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfio_variant::migration::record::{Record, RecordError, RecordKind, RecordReader};

/// Small bounds so that the size checks are reached often.
static KINDS: [RecordKind; 2] = [
    RecordKind {
        tag: 0,
        name: "DATA",
        version: 2,
        oldest: 1,
        min_payload: 0,
        max_payload: 256,
        optional: false,
    },
    RecordKind {
        tag: 1,
        name: "SIZE",
        version: 0,
        oldest: 0,
        min_payload: 8,
        max_payload: 8,
        optional: true,
    },
];

fn read(pieces: &mut dyn Iterator<Item = &[u8]>) -> (Result<(), RecordError>, Vec<Record>, bool) {
    let mut reader = RecordReader::new(&KINDS);
    let mut found = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        result = reader.feed(piece, |record| {
            found.push(record);
            Ok::<_, RecordError>(())
        });
        if result.is_err() {
            break;
        }
    }
    (result, found, reader.at_boundary())
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = read(&mut std::iter::once(bytes));
    let pieces = read(&mut bytes.chunks(usize::from(split).max(1)));
    assert_eq!(whole.0, pieces.0);
    assert_eq!(whole.1, pieces.1);
    if whole.0.is_ok() {
        assert_eq!(whole.2, pieces.2);
    }
    for record in &whole.1 {
        let kind = record.kind;
        assert!((kind.oldest..=kind.version).contains(&record.version));
        let size = record.payload.len() as u64;
        assert!((kind.min_payload..=kind.max_payload).contains(&size));
    }
});
