//! Q4_1 weights times Q8_1 activations: the dot product the default model spends its time in.
//!
//! A Q4_1 block (GGUF's layout, 20 bytes) holds 32 weights as `d * q + m` with 4-bit `q`: element
//! `j < 16` is the low nibble of `qs[j]`, element `j + 16` its high nibble. Activations are
//! quantized per 32 to 8 bits (`x ≈ d * q`) with the block sum kept, so a block's dot product is
//! `dw * dx * Σ qw·qx + mw * sx` where `sx = dx * Σ qx`: integer work inside, two multiply-adds
//! per block outside. The AVX2 path is chosen at run time; the portable one is the reference.

use half::f16;

pub const BLOCK: usize = 32;

/// One Q4_1 block exactly as GGUF stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// 32 activations quantized to 8 bits, with their scale, `scale * Σ q` and `Σ q`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(32))]
pub struct BlockQ8_1 {
    pub qs: [i8; BLOCK],
    pub d: f32,
    pub s: f32,
    pub sum: i32,
}

impl BlockQ4_1 {
    /// Bytes in GGUF's layout.
    pub const BYTES: usize = 20;

    /// The block at the start of `bytes` (at least [`Self::BYTES`] long), as GGUF stores it.
    pub fn read(bytes: &[u8]) -> BlockQ4_1 {
        BlockQ4_1 {
            d: f16::from_le_bytes([bytes[0], bytes[1]]),
            m: f16::from_le_bytes([bytes[2], bytes[3]]),
            qs: bytes[4..20].try_into().expect("16 bytes"),
        }
    }

    /// Quantizes 32 weights (min and max mapped to the ends of 0..=15).
    pub fn quantize(xs: &[f32; BLOCK]) -> BlockQ4_1 {
        let (min, max) = xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let d = (max - min) / 15.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let q = |x: f32| (((x - min) * inv).round() as i32).clamp(0, 15) as u8;
        let mut qs = [0u8; BLOCK / 2];
        for (j, byte) in qs.iter_mut().enumerate() {
            *byte = q(xs[j]) | (q(xs[j + BLOCK / 2]) << 4);
        }
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs }
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let mut out = [0f32; BLOCK];
        for (j, &byte) in self.qs.iter().enumerate() {
            out[j] = d * (byte & 0x0F) as f32 + m;
            out[j + BLOCK / 2] = d * (byte >> 4) as f32 + m;
        }
        out
    }
}

impl BlockQ8_1 {
    pub fn quantize(xs: &[f32]) -> BlockQ8_1 {
        debug_assert_eq!(xs.len(), BLOCK);
        let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; BLOCK];
        let mut sum = 0i32;
        for (q, &x) in qs.iter_mut().zip(xs) {
            // Half away from zero, as `round` (but inline, not a libm call); |v| <= 127.
            let v = x * inv;
            *q = (v + 0.5f32.copysign(v)) as i8;
            sum += *q as i32;
        }
        BlockQ8_1 { qs, d, s: d * sum as f32, sum }
    }
}

/// Quantizes a row of activations (its length a multiple of 32).
pub fn quantize_row(xs: &[f32]) -> Vec<BlockQ8_1> {
    xs.chunks_exact(BLOCK).map(BlockQ8_1::quantize).collect()
}

/// `Σ w·x` over matching blocks, on the fastest path this CPU has.
pub fn dot(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_avx2(w, x) };
    }
    dot_portable(w, x)
}

/// Whether the AVX2 path runs here.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The reference: integer sums per block, then the two multiply-adds.
pub fn dot_portable(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(w, x)| {
            let mut sum = 0i32;
            for (j, &byte) in w.qs.iter().enumerate() {
                sum += (byte & 0x0F) as i32 * x.qs[j] as i32 + (byte >> 4) as i32 * x.qs[j + BLOCK / 2] as i32;
            }
            w.d.to_f32() * x.d * sum as f32 + w.m.to_f32() * x.s
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (w, x) in w.iter().zip(x) {
        prefetch_ahead(w);
        // SAFETY: 16 bytes read from `qs` ([u8; 16]) and 32 from `x.qs` ([i8; 32]), unaligned loads.
        let packed = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
        let lo = _mm_and_si128(packed, low_nibbles);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let weights = _mm256_set_m128i(hi, lo);
        let acts = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
        // u8 x i8 -> pairs summed in i16 (at most 2 * 15 * 127, no saturation), then i32.
        let pairs = _mm256_maddubs_epi16(weights, acts);
        let sums = _mm256_madd_epi16(pairs, ones);
        // Both f16 scales converted in one instruction (F16C), not in software.
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((w.d.to_bits() as u32 | ((w.m.to_bits() as u32) << 16)) as i32));
        let (d, m) = (_mm_cvtss_f32(scales), _mm_cvtss_f32(_mm_shuffle_ps(scales, scales, 1)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sums), acc);
        mins += m * x.s;
    }
    unsafe { horizontal_sum(acc) + mins }
}

/// Which SIMD path this CPU takes: AVX-512 VNNI (one instruction per block's integer sums), AVX2,
/// or none. Detected once.
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
        if avx2() && std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
            return Simd::Vnni;
        }
        if avx2() { Simd::Avx2 } else { Simd::Portable }
    })
}

/// `out[r * m + i] = Σ w[r] · x[i]` for `rows` weight rows of `per_row` blocks and `m` activation
/// rows: each weight row is unpacked once for up to four activation rows. Every product is
/// computed exactly as [`dot`] computes it, whatever `m` is and however the rows are grouped.
pub fn rows_times(w: &[BlockQ4_1], per_row: usize, x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    let rows = w.len() / per_row;
    assert!(w.len() == rows * per_row && x.len() == m * per_row && out.len() == rows * m);
    let simd = simd();
    for (row, out) in w.chunks_exact(per_row).zip(out.chunks_exact_mut(m)) {
        let mut i = 0;
        while i + 4 <= m {
            let xs: [&[BlockQ8_1]; 4] = std::array::from_fn(|j| &x[(i + j) * per_row..(i + j + 1) * per_row]);
            let sums = match simd {
                // SAFETY: the CPU has the features of each path (detected at run time).
                #[cfg(target_arch = "x86_64")]
                Simd::Vnni => unsafe { dot4_vnni(row, xs) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { dot4_avx2(row, xs) },
                _ => xs.map(|x| dot_portable(row, x)),
            };
            out[i..i + 4].copy_from_slice(&sums);
            i += 4;
        }
        for (j, y) in out.iter_mut().enumerate().skip(i) {
            let x = &x[j * per_row..(j + 1) * per_row];
            // The VNNI and AVX2 paths compute the same integer sums, then the same float steps.
            *y = dot(row, x);
        }
    }
}

/// Four dot products sharing one weight row, each summed as [`dot_avx2`] sums it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_avx2(w: &[BlockQ4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, w) in w.iter().enumerate() {
        prefetch_ahead(w);
        // SAFETY: as in `dot_avx2`.
        let packed = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
        let lo = _mm_and_si128(packed, low_nibbles);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let weights = _mm256_set_m128i(hi, lo);
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((w.d.to_bits() as u32 | ((w.m.to_bits() as u32) << 16)) as i32));
        let (d, m) = (_mm_cvtss_f32(scales), _mm_cvtss_f32(_mm_shuffle_ps(scales, scales, 1)));
        for r in 0..4 {
            let x = &x[r][b];
            let acts = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(weights, acts), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sums), acc[r]);
            mins[r] += m * x.s;
        }
    }
    std::array::from_fn(|r| unsafe { horizontal_sum(acc[r]) } + mins[r])
}

/// As [`dot4_avx2`], with the integer sums of a block in one VNNI instruction (same integers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot4_vnni(w: &[BlockQ4_1], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    for (b, w) in w.iter().enumerate() {
        prefetch_ahead(w);
        // SAFETY: as in `dot_avx2`.
        let packed = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
        let lo = _mm_and_si128(packed, low_nibbles);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let weights = _mm256_set_m128i(hi, lo);
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((w.d.to_bits() as u32 | ((w.m.to_bits() as u32) << 16)) as i32));
        let (d, m) = (_mm_cvtss_f32(scales), _mm_cvtss_f32(_mm_shuffle_ps(scales, scales, 1)));
        for r in 0..4 {
            let x = &x[r][b];
            let acts = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
            let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), weights, acts);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sums), acc[r]);
            mins[r] += m * x.s;
        }
    }
    std::array::from_fn(|r| unsafe { horizontal_sum(acc[r]) } + mins[r])
}

/// How far ahead of the block being multiplied its weights are asked for: streaming a model's
/// weights from memory, the hardware prefetcher alone left the kernel at a third of its speed.
pub const PREFETCH_BYTES: usize = 4096;

/// Asks for the cache line `PREFETCH_BYTES` after `block` (a hint: never faults, past the end too).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn prefetch_ahead<T>(block: &T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let ahead = (block as *const T).cast::<i8>().wrapping_add(PREFETCH_BYTES);
    // SAFETY: prefetching is a hint with no effect on memory, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::noise;


    fn quantize_weights(xs: &[f32]) -> Vec<BlockQ4_1> {
        xs.chunks_exact(BLOCK).map(|c| BlockQ4_1::quantize(c.try_into().unwrap())).collect()
    }

    #[test]
    fn the_block_layout_is_ggufs() {
        let b = BlockQ4_1::quantize(&std::array::from_fn(|i| i as f32));
        // Element 0 is the low nibble of byte 0, element 16 its high nibble.
        assert_eq!(b.qs[0] & 0x0F, 0);
        assert_eq!(b.qs[0] >> 4, ((16.0 / (31.0 / 15.0)) as f32).round() as u8);
        let back = b.dequantize();
        for (i, v) in back.iter().enumerate() {
            assert!((v - i as f32).abs() <= 31.0 / 15.0 / 2.0 + 1e-2, "{i}: {v}");
        }
    }

    /// Against a dequantized f32 dot product: the only difference is the activations' 8-bit
    /// rounding, at most half a step per element: |Σ w·(x - x̂)| <= Σ|w| · dx/2.
    #[test]
    fn the_portable_dot_matches_the_f32_reference_within_the_quantization_bound() {
        for (n, seed) in [(32, 1), (576, 2), (1536, 3)] {
            let w = quantize_weights(&noise(n, seed));
            let xs = noise(n, seed + 100);
            let xq = quantize_row(&xs);
            let wf: Vec<f32> = w.iter().flat_map(|b| b.dequantize()).collect();
            let reference: f32 = wf.iter().zip(&xs).map(|(a, b)| a * b).sum();
            let bound: f32 = wf.chunks(BLOCK).zip(&xq).map(|(ws, q)| ws.iter().map(|v| v.abs()).sum::<f32>() * q.d / 2.0).sum();
            let got = dot_portable(&w, &xq);
            assert!((got - reference).abs() <= bound * 1.01 + 1e-4, "n {n}: {got} vs {reference} (bound {bound})");
        }
    }

    #[test]
    fn the_avx2_dot_equals_the_portable_one() {
        if !avx2() {
            return;
        }
        for (n, seed) in [(32, 5), (64, 6), (576, 7), (1536, 8), (4096, 9)] {
            let w = quantize_weights(&noise(n, seed));
            let xq = quantize_row(&noise(n, seed + 1));
            let (fast, reference) = (dot(&w, &xq), dot_portable(&w, &xq));
            // Same integer sums; only the order of the float additions differs.
            assert!((fast - reference).abs() <= 1e-4 * (1.0 + reference.abs()), "n {n}: {fast} vs {reference}");
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let w = vec![BlockQ4_1 { d: f16::from_f32(1.0), m: f16::from_f32(0.0), qs: [0xFF; 16] }; 4];
        let xq = vec![BlockQ8_1 { qs: [127; 32], d: 1.0, s: 127.0 * 32.0, sum: 127 * 32 }; 4];
        assert_eq!(dot(&w, &xq), 4.0 * 32.0 * 15.0 * 127.0);
        let neg = vec![BlockQ8_1 { qs: [-128; 32], d: 1.0, s: -128.0 * 32.0, sum: -128 * 32 }; 4];
        assert_eq!(dot(&w, &neg), 4.0 * 32.0 * 15.0 * -128.0);
    }

    /// Grouping activation rows by four changes nothing: every product equals [`dot`] bit for bit.
    #[test]
    fn rows_times_equals_row_by_row_dots_for_any_number_of_rows() {
        let (rows, per_row) = (5, 18);
        let w = quantize_weights(&noise(rows * per_row * BLOCK, 11));
        for m in [1, 3, 4, 5, 9] {
            let x: Vec<BlockQ8_1> = (0..m).flat_map(|i| quantize_row(&noise(per_row * BLOCK, 20 + i as u64))).collect();
            let mut out = vec![0f32; rows * m];
            rows_times(&w, per_row, &x, m, &mut out);
            for r in 0..rows {
                for i in 0..m {
                    let expected = dot(&w[r * per_row..(r + 1) * per_row], &x[i * per_row..(i + 1) * per_row]);
                    assert_eq!(out[r * m + i].to_bits(), expected.to_bits(), "row {r}, activation row {i} of {m}");
                }
            }
        }
    }
}
