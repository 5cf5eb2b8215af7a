//! Q8_0 weights times 8-bit activations: the default model's embeddings, which are also its output
//! head. A Q8_0 block (GGUF's layout, 34 bytes) holds 32 weights as `d * q` with signed 8-bit `q`,
//! so a block's dot product with activations quantized the same way is `dw * dx * Σ qw·qx`.

use half::f16;

use super::q4_1::{BlockQ8_1, BLOCK};

/// One Q8_0 block exactly as GGUF stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; BLOCK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// Bytes in GGUF's layout.
    pub const BYTES: usize = 34;

    /// The block at the start of `bytes` (at least [`Self::BYTES`] long), as GGUF stores it.
    pub fn read(bytes: &[u8]) -> BlockQ8_0 {
        BlockQ8_0 { d: f16::from_le_bytes([bytes[0], bytes[1]]), qs: std::array::from_fn(|i| bytes[2 + i] as i8) }
    }

    pub fn quantize(xs: &[f32; BLOCK]) -> BlockQ8_0 {
        let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        BlockQ8_0 { d: f16::from_f32(d), qs: std::array::from_fn(|i| (xs[i] * inv).round() as i8) }
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        std::array::from_fn(|i| d * self.qs[i] as f32)
    }
}

/// `Σ w·x` over matching blocks, on the fastest path this CPU has.
pub fn dot(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if super::q4_1::avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { dot_avx2(w, x) };
    }
    dot_portable(w, x)
}

/// The reference: integer sums per block, then one multiply-add.
pub fn dot_portable(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(w, x)| {
            let sum: i32 = w.qs.iter().zip(&x.qs).map(|(&a, &b)| a as i32 * b as i32).sum();
            w.d.to_f32() * x.d * sum as f32
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (w, x) in w.iter().zip(x) {
        super::q4_1::prefetch_ahead(w);
        // SAFETY: 32 bytes read from each `qs` ([i8; 32]), unaligned loads.
        let (ws, xs) = unsafe { (_mm256_loadu_si256(w.qs.as_ptr().cast()), _mm256_loadu_si256(x.qs.as_ptr().cast())) };
        // maddubs multiplies unsigned by signed: |w| times x with w's sign (at most 2 * 127 * 128 per pair).
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(xs, ws));
        let sums = _mm256_madd_epi16(pairs, ones);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(w.d.to_bits() as i32)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sums), acc);
    }
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

/// `out[r * m + i] = Σ w[r] · x[i]`, as [`super::q4_1::rows_times`] does for Q4_1: each weight row
/// is read once for up to four activation rows, every product exactly as [`dot`] computes it.
pub fn rows_times(w: &[BlockQ8_0], per_row: usize, x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    let rows = w.len() / per_row;
    assert!(w.len() == rows * per_row && x.len() == m * per_row && out.len() == rows * m);
    let simd = super::q4_1::simd();
    for (row, out) in w.chunks_exact(per_row).zip(out.chunks_exact_mut(m)) {
        let mut i = 0;
        while i + 4 <= m {
            let xs: [&[BlockQ8_1]; 4] = std::array::from_fn(|j| &x[(i + j) * per_row..(i + j + 1) * per_row]);
            let sums = match simd {
                // SAFETY: the CPU has the features of each path (detected at run time).
                #[cfg(target_arch = "x86_64")]
                super::q4_1::Simd::Vnni => unsafe { dot4_vnni(row, xs) },
                _ => xs.map(|x| dot(row, x)),
            };
            out[i..i + 4].copy_from_slice(&sums);
            i += 4;
        }
        for (j, y) in out.iter_mut().enumerate().skip(i) {
            *y = dot(row, &x[j * per_row..(j + 1) * per_row]);
        }
    }
}

/// Four dot products sharing one weight row; the integer sums are those of [`dot_avx2`], the
/// float steps the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot4_vnni(w: &[BlockQ8_0], x: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, w) in w.iter().enumerate() {
        super::q4_1::prefetch_ahead(w);
        // SAFETY: 32 bytes read from each `qs` ([i8; 32]), unaligned loads.
        let ws = unsafe { _mm256_loadu_si256(w.qs.as_ptr().cast()) };
        let magnitudes = _mm256_sign_epi8(ws, ws);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(w.d.to_bits() as i32)));
        for r in 0..4 {
            let x = &x[r][b];
            let xs = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
            let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitudes, _mm256_sign_epi8(xs, ws));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sums), acc[r]);
        }
    }
    std::array::from_fn(|r| {
        let half = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::noise;
    use crate::kernels::q4_1::quantize_row;

    fn quantize_weights(xs: &[f32]) -> Vec<BlockQ8_0> {
        xs.chunks_exact(BLOCK).map(|c| BlockQ8_0::quantize(c.try_into().unwrap())).collect()
    }

    #[test]
    fn rows_times_equals_row_by_row_dots_for_any_number_of_rows() {
        let (rows, per_row) = (5, 18);
        let w = quantize_weights(&noise(rows * per_row * BLOCK, 11));
        for m in [1, 4, 7] {
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

    #[test]
    fn parsing_reads_ggufs_layout() {
        let mut bytes = f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let block = BlockQ8_0::read(&bytes);
        assert_eq!(block.dequantize()[0], -8.0);
        assert_eq!(block.dequantize()[31], 7.5);
    }

    /// Against a dequantized f32 dot product, within half an activation step per element.
    #[test]
    fn the_portable_dot_matches_the_f32_reference_within_the_quantization_bound() {
        for (n, seed) in [(32, 1), (576, 2)] {
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
    fn the_simd_dot_equals_the_portable_one_even_at_the_extremes() {
        for (n, seed) in [(32, 5), (576, 7), (4096, 9)] {
            let w = quantize_weights(&noise(n, seed));
            let xq = quantize_row(&noise(n, seed + 1));
            let (fast, reference) = (dot(&w, &xq), dot_portable(&w, &xq));
            assert!((fast - reference).abs() <= 1e-4 * (1.0 + reference.abs()), "n {n}: {fast} vs {reference}");
        }
        // Activations are quantized to ±127; a weight may be -128.
        let w = vec![BlockQ8_0 { d: f16::from_f32(1.0), qs: [-128; 32] }; 2];
        let x = vec![BlockQ8_1 { qs: [-127; 32], d: 1.0, s: -127.0 * 32.0, sum: -127 * 32 }; 2];
        assert_eq!(dot(&w, &x), dot_portable(&w, &x));
    }
}
