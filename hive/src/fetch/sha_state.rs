//! SHA-256 whose state can be written down at a block boundary and picked up again later, so a
//! resumed download continues hashing where the last recorded chunk ended instead of rereading the
//! file. The compression function is sha2's (hardware-accelerated where the CPU allows).

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

#[derive(Clone)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes fed so far.
    len: u64,
    /// Bytes of an incomplete block (fewer than 64).
    pending: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        ResumableSha256 { state: INITIAL, len: 0, pending: Vec::with_capacity(64) }
    }
}

impl ResumableSha256 {
    /// Picks up a state written by [`Self::saved_state`] after `len` bytes; `len` must be a multiple
    /// of 64 and the state 32 bytes, else `None` (then hash from the start).
    pub fn resume(saved: &[u8], len: u64) -> Option<Self> {
        if len == 0 {
            return Some(Self::default());
        }
        if saved.len() != 32 || !len.is_multiple_of(64) {
            return None;
        }
        let mut state = [0u32; 8];
        for (word, bytes) in state.iter_mut().zip(saved.chunks_exact(4)) {
            *word = u32::from_be_bytes(bytes.try_into().ok()?);
        }
        Some(ResumableSha256 { state, len, pending: Vec::with_capacity(64) })
    }

    pub fn bytes_hashed(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = GenericArray::<u8, U64>::clone_from_slice(&self.pending);
            sha2::compress256(&mut self.state, std::slice::from_ref(&block));
            self.pending.clear();
        }
        let blocks = data.chunks_exact(64);
        let rest = blocks.remainder();
        for block in blocks {
            sha2::compress256(&mut self.state, std::slice::from_ref(GenericArray::from_slice(block)));
        }
        self.pending.extend_from_slice(rest);
    }

    /// The state as 32 bytes, when the bytes fed so far end on a block boundary.
    pub fn saved_state(&self) -> Option<Vec<u8>> {
        self.pending.is_empty().then(|| self.state.iter().flat_map(|w| w.to_be_bytes()).collect())
    }

    /// The digest, hex.
    pub fn finish(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        for block in tail.chunks_exact(64) {
            sha2::compress256(&mut self.state, std::slice::from_ref(GenericArray::from_slice(block)));
        }
        self.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn reference(data: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(data))
    }

    #[test]
    fn matches_sha2_for_any_length_and_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 5000] {
            for split in [0, 1, 63, 64, 100, len] {
                let split = split.min(len);
                let mut h = ResumableSha256::default();
                h.update(&data[..split]);
                h.update(&data[split..len]);
                assert_eq!(h.finish(), reference(&data[..len]), "len {len} split {split}");
            }
        }
    }

    #[test]
    fn a_saved_state_resumes_to_the_same_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut first = ResumableSha256::default();
        first.update(&data[..4096]);
        let saved = first.saved_state().expect("4096 is on a block boundary");
        let mut resumed = ResumableSha256::resume(&saved, 4096).unwrap();
        resumed.update(&data[4096..]);
        assert_eq!(resumed.finish(), reference(&data));
    }

    #[test]
    fn no_state_off_a_block_boundary_and_bad_states_are_refused() {
        let mut h = ResumableSha256::default();
        h.update(&[1, 2, 3]);
        assert!(h.saved_state().is_none());
        assert!(ResumableSha256::resume(&[0; 31], 64).is_none());
        assert!(ResumableSha256::resume(&[0; 32], 65).is_none());
    }
}
