//! Quantized compute kernels for the formats the default model uses, each with a portable
//! reference and a SIMD path chosen at run time.

pub mod packed;
pub mod q4_1;
pub mod q8_0;

/// Deterministic pseudo-random floats in [-1, 1) (xorshift): test and benchmark data.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
