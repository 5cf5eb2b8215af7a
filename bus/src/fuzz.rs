//! Inputs for robustness tests: a corpus of valid inputs mutated the way a fuzzer would (bits
//! flipped, bytes replaced, cut short, spliced, lengths blown up) plus pure noise, from a seeded
//! generator so a failure names the case that reproduces it. The test command runs a bounded
//! number of cases (`RBEE_FUZZ_CASES`, default 2000 per target); run it longer by hand with a
//! larger number.

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere.
pub struct Mutator {
    state: u64,
}

/// Cases per target: `RBEE_FUZZ_CASES`, else 2000.
pub fn cases() -> usize {
    std::env::var("RBEE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator { state: seed.max(1) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    /// One input: a mutation of a corpus entry, or (one time in eight) noise.
    pub fn input(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        if corpus.is_empty() || self.below(8) == 0 {
            let len = self.below(512);
            return (0..len).map(|_| self.next_u64() as u8).collect();
        }
        let mut bytes = corpus[self.below(corpus.len())].clone();
        for _ in 0..=self.below(4) {
            let at = self.below(bytes.len().max(1));
            match self.below(6) {
                0 if !bytes.is_empty() => bytes[at] ^= 1 << self.below(8),
                1 if !bytes.is_empty() => bytes[at] = self.next_u64() as u8,
                2 => bytes.truncate(at),
                3 => {
                    let other = corpus[self.below(corpus.len())].clone();
                    let from = self.below(other.len().max(1)).min(other.len());
                    let at = at.min(bytes.len());
                    bytes.splice(at..at, other[from..].iter().copied().take(64));
                }
                // Lengths and counts blown up: 0xff runs where a varint or a u64 is read.
                4 => {
                    let at = at.min(bytes.len());
                    let n = 1 + self.below(9);
                    bytes.splice(at..at, std::iter::repeat_n(0xff, n));
                }
                _ => {
                    let b = self.next_u64() as u8;
                    bytes.insert(at.min(bytes.len()), b);
                }
            }
        }
        bytes
    }
}
