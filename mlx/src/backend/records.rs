//! The device-data records of an mlx function, as Linux's mlx5 vfio driver frames them: the
//! framework's typed records ([`vfio_variant::migration::record`], whose layout is mlx5's) at
//! version 0. FW_DATA (tag 0) carries the firmware's image bytes, one record per save (a chunk
//! in chunk mode); STOP_COPY_SIZE (tag 1, optional) carries the expected stop-copy size
//! (le64) and comes first. A reader skips unknown optional records and fails on unknown
//! mandatory ones.

use vfio_variant::migration::MigrationError;
use vfio_variant::migration::record::{Record, RecordKind};

/// Largest FW_DATA payload a reader takes (one chunk).
pub const MAX_FW_DATA: u64 = crate::hw::ifc::MAX_CHUNK_SIZE as u64;

/// Firmware image bytes.
pub const FW_DATA: RecordKind = RecordKind {
    tag: 0,
    name: "FW_DATA",
    version: 0,
    oldest: 0,
    min_payload: 0,
    max_payload: MAX_FW_DATA,
    optional: false,
};

/// The expected stop-copy size.
pub const STOP_COPY_SIZE: RecordKind = RecordKind {
    tag: 1,
    name: "STOP_COPY_SIZE",
    version: 0,
    oldest: 0,
    min_payload: 8,
    max_payload: 8,
    optional: true,
};

/// Every record an mlx function writes and reads.
pub static KINDS: [RecordKind; 2] = [FW_DATA, STOP_COPY_SIZE];

/// What a record means to an mlx function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlxRecord {
    /// The expected stop-copy size.
    StopCopySize(u64),
    /// A whole FW_DATA payload.
    FwData(Vec<u8>),
}

impl TryFrom<Record> for MlxRecord {
    type Error = MigrationError;

    /// The meaning of a record the reader checked against [`KINDS`].
    fn try_from(record: Record) -> Result<Self, MigrationError> {
        match record.kind.tag {
            tag if tag == FW_DATA.tag => Ok(Self::FwData(record.payload)),
            tag if tag == STOP_COPY_SIZE.tag => {
                let size: [u8; 8] = record.payload.as_slice().try_into().map_err(|_| {
                    MigrationError::InvalidData("STOP_COPY_SIZE is not 8 bytes".into())
                })?;
                Ok(Self::StopCopySize(u64::from_le_bytes(size)))
            }
            tag => Err(MigrationError::InvalidData(format!(
                "record tag {tag} is not an mlx record"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use vfio_variant::migration::record::{
        FLAG_OPTIONAL, RECORD_HEADER_BYTES, RecordError, RecordReader, RecordWriter,
    };

    use super::*;

    fn read_all(stream: &[u8], piece: usize) -> Result<Vec<MlxRecord>, MigrationError> {
        let mut reader = RecordReader::new(&KINDS);
        let mut found = Vec::new();
        for chunk in stream.chunks(piece) {
            reader.feed(chunk, |r| {
                found.push(MlxRecord::try_from(r)?);
                Ok::<_, MigrationError>(())
            })?;
        }
        assert!(reader.at_boundary());
        Ok(found)
    }

    #[test]
    fn records_keep_the_mlx5_layout_and_read_back() {
        let mut writer = RecordWriter::default();
        writer
            .push(&STOP_COPY_SIZE, &12345u64.to_le_bytes())
            .unwrap();
        writer.push(&FW_DATA, b"abc").unwrap();
        let mut stream = vec![0u8; writer.pending()];
        assert_eq!(writer.read(&mut stream), stream.len());
        // {le64 size, le32 flags (bit 0 optional), le32 tag}, as Linux's driver writes them.
        assert_eq!(&stream[..8], &8u64.to_le_bytes());
        assert_eq!(&stream[8..12], &FLAG_OPTIONAL.to_le_bytes());
        assert_eq!(&stream[12..16], &1u32.to_le_bytes());
        let fw = RECORD_HEADER_BYTES + 8;
        assert_eq!(&stream[fw..fw + 8], &3u64.to_le_bytes());
        assert_eq!(&stream[fw + 8..fw + 16], &[0; 8]);
        for piece in [1, 5, 1000] {
            assert_eq!(
                read_all(&stream, piece).unwrap(),
                [
                    MlxRecord::StopCopySize(12345),
                    MlxRecord::FwData(b"abc".to_vec())
                ]
            );
        }
    }

    #[test]
    fn a_chunk_larger_than_the_firmwares_is_refused() {
        let mut header = (MAX_FW_DATA + 1).to_le_bytes().to_vec();
        header.extend_from_slice(&[0; 8]);
        assert_eq!(
            read_all(&header, 16).unwrap_err(),
            MigrationError::from(RecordError::Size {
                kind: "FW_DATA",
                size: MAX_FW_DATA + 1,
                min: 0,
                max: MAX_FW_DATA
            })
        );
    }
}
