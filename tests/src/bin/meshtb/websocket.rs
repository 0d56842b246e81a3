//! The little of WebSocket (RFC 6455) the test bed speaks: the handshake's
//! accept key and single frames, encoded and decoded as pure functions so
//! the blocking client and the async server share them.

/// The GUID every server appends to the client's key (RFC 6455, 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames larger than this are refused: the tests send short messages.
pub const MAX_PAYLOAD: u64 = 1 << 20;

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64(digest.as_ref())
}

/// Standard base64 with padding (RFC 4648, 4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One final frame: `opcode`, `payload`, masked with `mask` (clients must
/// mask, servers must not).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | (opcode & 0x0f)];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(masked | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

/// The first frame in `buf` and the bytes it took; `Ok(None)` while it is
/// incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let [first, second, rest @ ..] = buf else {
        return Ok(None);
    };
    let opcode = first & 0x0f;
    let masked = second & 0x80 != 0;
    let (length, mut at) = match second & 0x7f {
        126 if rest.len() >= 2 => (u64::from(u16::from_be_bytes([rest[0], rest[1]])), 4),
        127 if rest.len() >= 8 => (
            u64::from_be_bytes(rest[..8].try_into().expect("eight bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if length > MAX_PAYLOAD {
        return Err(format!(
            "frame of {length} bytes, over the {MAX_PAYLOAD} this peer reads"
        ));
    }
    let key = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let end = at + length as usize;
    let Some(data) = buf.get(at..end) else {
        return Ok(None);
    };
    let payload = match key {
        Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => data.to_vec(),
    };
    Ok(Some((
        Frame {
            opcode,
            masked,
            payload,
        },
        end,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn frames_round_trip_masked_or_not_and_wait_for_their_end() {
        for len in [0, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let wire = encode(TEXT, &payload, mask);
                assert_eq!(decode(&wire[..wire.len() - 1]).unwrap(), None, "{len}");
                let (frame, used) = decode(&wire).unwrap().unwrap();
                assert_eq!(used, wire.len());
                assert_eq!(frame.payload, payload);
                assert_eq!(frame.masked, mask.is_some());
                assert_eq!(frame.opcode, TEXT);
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut wire = vec![0x81, 127];
        wire.extend_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert!(decode(&wire).is_err());
    }
}
