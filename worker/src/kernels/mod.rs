//! Quantized compute kernels for the formats the default model uses: the blocks as GGUF stores
//! them with row-major reference products (`q4_1`, `q8_0`), and the packed layout the model
//! multiplies with (`packed`), on the SIMD path this CPU has, chosen at run time.

pub mod float;
pub mod packed;
pub mod q4_1;
pub mod q8_0;

/// Which SIMD path this CPU takes: AVX-512 VNNI (one instruction per four products), AVX2 (+ FMA,
/// F16C), or none. Detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Vnni,
    Avx2,
    Portable,
}

pub fn simd() -> Simd {
    static SIMD: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                return if has!("avx512vnni") && has!("avx512vl") { Simd::Vnni } else { Simd::Avx2 };
            }
        }
        Simd::Portable
    })
}

/// How far ahead of the block being multiplied its weights are asked for: streaming a model's
/// weights from memory, the hardware prefetcher alone left the kernels at a third of their speed.
pub const PREFETCH_BYTES: usize = 8192;

/// Asks for the cache line `PREFETCH_BYTES` after `block` (a hint: never faults, past the end too).
#[inline(always)]
pub fn prefetch_ahead<T>(block: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let ahead = (block as *const T).cast::<i8>().wrapping_add(PREFETCH_BYTES);
        // SAFETY: prefetching is a hint with no effect on memory, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

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

/// Checks a quantized dot product `got` (weights dequantized to `weights`, activations `xs`
/// quantized per 32 as `xq`) against the f32 product: the only difference allowed is the
/// activations' 8-bit rounding, at most half a step per element: |Σ w·(x - x̂)| <= Σ|w| · dx/2.
#[cfg(test)]
pub(crate) fn assert_within_activation_rounding(weights: &[f32], xs: &[f32], xq: &[q4_1::BlockQ8_1], got: f32) {
    let reference: f32 = weights.iter().zip(xs).map(|(a, b)| a * b).sum();
    let bound: f32 =
        weights.chunks(q4_1::BLOCK).zip(xq).map(|(ws, q)| ws.iter().map(|v| v.abs()).sum::<f32>() * q.d / 2.0).sum();
    assert!((got - reference).abs() <= bound * 1.01 + 1e-4, "{got} vs {reference} (bound {bound}, n {})", xs.len());
}
