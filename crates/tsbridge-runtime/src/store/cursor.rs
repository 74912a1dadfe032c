//! List cursors: the unpadded URL-safe base64 of the last job id of a page.
//! Opaque to clients; a store decodes it back to the id to continue from.

use tsbridge_proto::JobId;
use uuid::Uuid;

use crate::errors::StoreError;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The cursor that continues after `id`.
pub fn encode_cursor(id: JobId) -> String {
    let bytes = id.as_uuid().into_bytes();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The job id a cursor continues after.
pub fn decode_cursor(cursor: &str) -> Result<JobId, StoreError> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(16);
    for c in cursor.bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .ok_or(StoreError::BadCursor)? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    let arr: [u8; 16] = out.try_into().map_err(|_| StoreError::BadCursor)?;
    Ok(JobId::from(Uuid::from_bytes(arr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for _ in 0..50 {
            let id = JobId::new();
            let c = encode_cursor(id);
            assert_eq!(c.len(), 22);
            assert_eq!(decode_cursor(&c).expect("decodes"), id);
        }
        assert!(decode_cursor("not a cursor!").is_err());
        assert!(decode_cursor("AAAA").is_err());
    }
}
