//! The wire format — a `u32` little-endian length, then that many payload bytes — and the
//! incremental decoder that turns received bytes back into payloads.

/// Bytes of the length prefix in front of every payload.
pub(crate) const HEADER_LEN: usize = 4;

/// The largest payload the length prefix can describe, kept small enough that a frame's wire
/// length (prefix included) always fits a `usize`.
pub(crate) const MAX_PAYLOAD: usize = {
    let prefix_limit = u32::MAX as usize;
    let wire_limit = usize::MAX - HEADER_LEN;
    if prefix_limit < wire_limit {
        prefix_limit
    } else {
        wire_limit
    }
};

/// The length prefix of a payload of `len` bytes (`len <= MAX_PAYLOAD`).
pub(crate) fn header(len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_PAYLOAD);
    (len as u32).to_le_bytes()
}

/// A length prefix that announced more than the receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooLarge {
    pub(crate) len: usize,
    pub(crate) max: usize,
}

/// Reassembles payloads from a byte stream cut at arbitrary points.
///
/// A payload buffer grows only as its bytes arrive — never to the length its prefix
/// announces — so a peer that announces 4 GiB and sends ten bytes costs ten bytes (rounded up
/// by at most a doubling), not 4 GiB.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    max: usize,
    /// Allocate a payload's buffer whole with its first byte: for connections whose frames
    /// are reserved whole under a memory cap anyway (the pages are only touched as bytes
    /// arrive, and no growth ever copies).
    whole: bool,
    prefix: [u8; HEADER_LEN],
    prefix_have: usize,
    /// The frame whose prefix is complete and whose payload is still arriving.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    bytes: Vec<u8>,
    need: usize,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max` bytes.
    pub(crate) fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            max,
            whole: false,
            prefix: [0; HEADER_LEN],
            prefix_have: 0,
            partial: None,
        }
    }

    /// A decoder that allocates each payload's buffer whole with its first byte — for a
    /// connection that has reserved room for the whole frame by then.
    pub(crate) fn new_whole(max: usize) -> FrameDecoder {
        FrameDecoder {
            whole: true,
            ..FrameDecoder::new(max)
        }
    }

    /// Consumes all of `input`, handing every payload it completes to `deliver`, in order.
    ///
    /// After an error the stream is out of step and the decoder must not be fed again;
    /// payloads completed before the bad prefix have been delivered.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        deliver: &mut impl FnMut(Vec<u8>),
    ) -> Result<(), TooLarge> {
        while !input.is_empty() {
            // Between frames with a whole prefix at hand — the common case — skip the prefix
            // bookkeeping; a whole payload too is copied out at once.
            if self.partial.is_none() && self.prefix_have == 0 && input.len() >= HEADER_LEN {
                let mut prefix = [0; HEADER_LEN];
                prefix.copy_from_slice(&input[..HEADER_LEN]);
                let len = u32::from_le_bytes(prefix) as usize;
                if len > self.max {
                    return Err(TooLarge { len, max: self.max });
                }
                input = &input[HEADER_LEN..];
                if input.len() >= len {
                    deliver(input[..len].to_vec());
                    input = &input[len..];
                } else {
                    self.partial = Some(Partial {
                        bytes: Vec::new(),
                        need: len,
                    });
                }
                continue;
            }
            let Some(partial) = self.partial.as_mut() else {
                let take = (HEADER_LEN - self.prefix_have).min(input.len());
                self.prefix[self.prefix_have..self.prefix_have + take]
                    .copy_from_slice(&input[..take]);
                self.prefix_have += take;
                input = &input[take..];
                if self.prefix_have == HEADER_LEN {
                    self.prefix_have = 0;
                    let len = u32::from_le_bytes(self.prefix) as usize;
                    if len > self.max {
                        return Err(TooLarge { len, max: self.max });
                    }
                    if len == 0 {
                        deliver(Vec::new());
                    } else {
                        self.partial = Some(Partial {
                            bytes: Vec::new(),
                            need: len,
                        });
                    }
                }
                continue;
            };
            // The common case, a payload whole in the input: one exact allocation.
            if partial.bytes.is_empty() && input.len() >= partial.need {
                let need = partial.need;
                self.partial = None;
                deliver(input[..need].to_vec());
                input = &input[need..];
                continue;
            }
            let take = (partial.need - partial.bytes.len()).min(input.len());
            if self.whole {
                // Allocated with the first payload byte, not with the prefix: a connection
                // that reads only up to a prefix reserves the frame before its bytes come.
                partial
                    .bytes
                    .reserve_exact(partial.need - partial.bytes.len());
            } else {
                grow_for(&mut partial.bytes, take, partial.need);
            }
            partial.bytes.extend_from_slice(&input[..take]);
            input = &input[take..];
            if partial.bytes.len() == partial.need {
                if let Some(done) = self.partial.take() {
                    deliver(done.bytes);
                }
            }
        }
        Ok(())
    }

    /// The frame cut short if the stream ended now, as `(have, need)` bytes on the wire,
    /// prefix included; `need` is just the prefix when the prefix itself was cut.
    pub(crate) fn unfinished(&self) -> Option<(usize, usize)> {
        match &self.partial {
            Some(partial) => Some((HEADER_LEN + partial.bytes.len(), HEADER_LEN + partial.need)),
            None if self.prefix_have > 0 => Some((self.prefix_have, HEADER_LEN)),
            None => None,
        }
    }

    /// The announced payload length of the frame being received, once its prefix is whole.
    pub(crate) fn partial_need(&self) -> Option<usize> {
        self.partial.as_ref().map(|partial| partial.need)
    }

    /// Payload bytes still missing from the frame being received (0 between frames).
    pub(crate) fn partial_missing(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |partial| partial.need - partial.bytes.len())
    }

    /// Bytes of a length prefix received so far (0 between frames and inside a payload).
    pub(crate) fn prefix_have(&self) -> usize {
        self.prefix_have
    }

    /// Forgets any half-received frame, releasing its buffer.
    pub(crate) fn reset(&mut self) {
        self.prefix_have = 0;
        self.partial = None;
    }
}

/// Makes room for `incoming` more bytes: double like `Vec` does, but never beyond what the
/// frame needs and never more than twice what has actually arrived.
fn grow_for(bytes: &mut Vec<u8>, incoming: usize, need: usize) {
    let wanted = bytes.len() + incoming;
    if wanted <= bytes.capacity() {
        return;
    }
    let target = bytes.capacity().saturating_mul(2).max(wanted).min(need);
    bytes.reserve_exact(target - bytes.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: &mut FrameDecoder, input: &[u8]) -> (Vec<Vec<u8>>, Result<(), TooLarge>) {
        let mut out = Vec::new();
        let result = decoder.feed(input, &mut |p| out.push(p));
        (out, result)
    }

    #[test]
    fn frames_split_at_every_byte_reassemble() {
        let mut wire = Vec::new();
        for payload in [&b"ab"[..], b"", b"xyz"] {
            wire.extend_from_slice(&header(payload.len()));
            wire.extend_from_slice(payload);
        }
        let mut decoder = FrameDecoder::new(16);
        let mut got = Vec::new();
        for byte in &wire {
            let (out, result) = decode(&mut decoder, std::slice::from_ref(byte));
            assert_eq!(result, Ok(()));
            got.extend(out);
        }
        assert_eq!(got, [b"ab".to_vec(), Vec::new(), b"xyz".to_vec()]);
        assert_eq!(decoder.unfinished(), None);
    }

    #[test]
    fn announced_length_is_not_allocated() {
        let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
        let mut wire = header(MAX_PAYLOAD).to_vec();
        wire.extend_from_slice(&[7; 10]);
        let (out, result) = decode(&mut decoder, &wire);
        assert!(out.is_empty());
        assert_eq!(result, Ok(()));
        let partial = decoder.partial.as_ref().map(|p| p.bytes.capacity());
        assert_eq!(partial, Some(10));
        assert_eq!(decoder.unfinished(), Some((14, HEADER_LEN + MAX_PAYLOAD)));
    }

    #[test]
    fn growth_is_at_most_double_what_arrived() {
        let mut decoder = FrameDecoder::new(1 << 20);
        let (_, result) = decode(&mut decoder, &header(1 << 20));
        assert_eq!(result, Ok(()));
        let mut arrived = 0;
        for _ in 0..100 {
            decode(&mut decoder, &[1; 100]).1.unwrap();
            arrived += 100;
            let capacity = decoder.partial.as_ref().unwrap().bytes.capacity();
            assert!(capacity <= 2 * arrived, "{capacity} > 2 * {arrived}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_after_earlier_frames() {
        let mut decoder = FrameDecoder::new(3);
        let mut wire = header(1).to_vec();
        wire.push(9);
        wire.extend_from_slice(&header(4));
        let (out, result) = decode(&mut decoder, &wire);
        assert_eq!(out, [vec![9]]);
        assert_eq!(result, Err(TooLarge { len: 4, max: 3 }));
    }

    #[test]
    fn cut_prefix_is_reported() {
        let mut decoder = FrameDecoder::new(3);
        decode(&mut decoder, &[1, 0]).1.unwrap();
        assert_eq!(decoder.unfinished(), Some((2, HEADER_LEN)));
        decoder.reset();
        assert_eq!(decoder.unfinished(), None);
    }
}
