//! Client-made message ids.
//!
//! Every message carries a 16-byte id made by its sender before the first attempt to
//! send it. The server stores a message once per id (a retransmit returns the original
//! result) and receivers drop ids they have seen: this id is what turns
//! at-least-once transmission into exactly-once delivery.
//!
//! The layout follows UUIDv7 (48-bit unix milliseconds, then random bits), so ids sort
//! roughly by creation time, which keeps database indexes append-mostly. Creation takes
//! the time and the random source as arguments: this crate never reads a clock.

use std::fmt;

use rand::RngCore;

/// The wall clock in unix milliseconds (0 if it reads before 1970), for message ids
/// and timestamps. For the drivers: the state machines in this crate take time as an
/// argument instead.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A 16-byte client message id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientMsgId(pub [u8; 16]);

/// The bytes are not a valid id (wrong length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client message id must be 16 bytes, got {0}")]
pub struct BadClientMsgId(pub usize);

impl ClientMsgId {
    /// A new id for a message created at `unix_ms`, with 74 random bits.
    pub fn generate(unix_ms: u64, rng: &mut impl RngCore) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        b[6] = (b[6] & 0x0f) | 0x70; // version 7
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        ClientMsgId(b)
    }

    /// Parses the wire form.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, BadClientMsgId> {
        <[u8; 16]>::try_from(bytes)
            .map(ClientMsgId)
            .map_err(|_| BadClientMsgId(bytes.len()))
    }

    /// The creation time encoded in the id (unix ms).
    pub fn unix_ms(&self) -> u64 {
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(t)
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ClientMsgId(b))
    }
}

impl fmt::Debug for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientMsgId({})", self.to_hex())
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Longest user (and group) id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` is a valid user or group id: 1 to 64 characters of ASCII letters,
/// digits, `.`, `_`, `-` and `@`. Both ends check it, so it lives here.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("alice"));
        assert!(is_valid_user_id("bob.smith@example-1_x"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("a b"));
        assert!(!is_valid_user_id("ünïcode"));
        assert!(!is_valid_user_id(&"x".repeat(65)));
    }
    use rand::SeedableRng;

    #[test]
    fn layout_and_round_trips() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let id = ClientMsgId::generate(1_700_000_000_123, &mut rng);
        assert_eq!(id.unix_ms(), 1_700_000_000_123);
        assert_eq!(id.0[6] >> 4, 7);
        assert_eq!(ClientMsgId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ClientMsgId::from_slice(&id.0), Ok(id));
        assert_eq!(ClientMsgId::from_slice(&[0; 15]), Err(BadClientMsgId(15)));
        let later = ClientMsgId::generate(1_700_000_000_124, &mut rng);
        assert!(later > id, "ids sort by creation time");
    }
}
