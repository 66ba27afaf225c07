//! The byte budget of one answer.
//!
//! Every answer that carries a variable number of entries (a sync or history page,
//! conversation summaries, large-group logs, group member lists) is bounded in encoded
//! bytes, not only in entries: a count limit alone lets one user make another's next
//! page larger than the frame limit (five 64 KB messages), and the client then cannot
//! read its own inbox. A page stops at [`PAGE_BYTES`] and says `more`; its first entry
//! always fits, because the largest body a server may accept
//! ([`MAX_BODY_BYTES_LIMIT`]) plus an entry's metadata is below the budget, and the
//! budget is below the frame limit ([`crate::frame::DEFAULT_MAX_FRAME_BODY`]).

/// Encoded bytes of entries in one answer.
pub const PAGE_BYTES: usize = 192 * 1024;

/// The largest `max_body_bytes` a server may be configured with: a message this large,
/// with its metadata (ids, names, timestamps; bounded by the id validation), fits in
/// one page.
pub const MAX_BODY_BYTES_LIMIT: u32 = 160 * 1024;

/// Counts the bytes of one answer as entries are added.
#[derive(Debug, Clone)]
pub struct PageBudget {
    left: usize,
    taken: usize,
}

impl PageBudget {
    /// A budget of [`PAGE_BYTES`].
    pub fn new() -> PageBudget {
        PageBudget::with_bytes(PAGE_BYTES)
    }

    /// A budget of `bytes`.
    pub fn with_bytes(bytes: usize) -> PageBudget {
        PageBudget {
            left: bytes,
            taken: 0,
        }
    }

    /// Takes an entry of `len` encoded bytes if it fits; the first entry always fits
    /// (so a page is never empty while entries remain). `false`: the page is full.
    pub fn take(&mut self, len: usize) -> bool {
        // Each entry also costs its field tag and length prefix.
        let len = len + 4;
        if self.taken > 0 && len > self.left {
            self.left = 0;
            return false;
        }
        self.left = self.left.saturating_sub(len);
        self.taken += 1;
        true
    }

    /// Takes a protobuf message if it fits (see [`PageBudget::take`]).
    pub fn take_msg(&mut self, m: &impl prost::Message) -> bool {
        self.take(m.encoded_len())
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Whether an earlier entry did not fit.
    pub fn full(&self) -> bool {
        self.left == 0 && self.taken > 0
    }
}

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_entry_always_fits_then_bytes_bound_the_page() {
        let mut b = PageBudget::with_bytes(100);
        assert!(b.take(500), "the first entry fits whatever its size");
        assert!(!b.take(1));
        let mut b = PageBudget::with_bytes(100);
        assert!(b.take(40));
        assert!(b.take(40));
        assert!(!b.take(40));
        assert!(!b.take(1), "a full page takes nothing more");
        assert!(b.full());
    }

    #[test]
    fn limits_are_consistent() {
        const { assert!((MAX_BODY_BYTES_LIMIT as usize) + 8 * 1024 < PAGE_BYTES) };
        const { assert!(PAGE_BYTES + 16 * 1024 < crate::frame::DEFAULT_MAX_FRAME_BODY) };
    }
}
