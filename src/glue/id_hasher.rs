//! `IdHasher`: hashing for maps keyed by loopglue's object ids.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a `u64` object id with one multiplication (Fibonacci hashing), for maps that only
/// ever hold ids handed out by loopglue's own counter: they are unique and not chosen by
/// anyone outside the process, so SipHash's resistance to chosen keys buys nothing, and it
/// cost a `TimerQueue` about a microsecond per libdbus method call (four hashes per pending
/// call's timeout, plus one per loop iteration for a stale heap entry). The multiplication
/// spreads sequential ids over the high bits, which `hashbrown` uses for its control bytes.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for `u64` keys; kept correct for anything else.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by object id.
pub(crate) type IdMap<V> = std::collections::HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_differ_in_their_high_bits() {
        let top = |id: u64| {
            let mut hasher = IdHasher::default();
            hasher.write_u64(id);
            hasher.finish() >> 57
        };
        let distinct: std::collections::HashSet<u64> = (1..=64).map(top).collect();
        assert!(distinct.len() > 32, "{distinct:?}");
    }
}
