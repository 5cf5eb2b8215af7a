//! Weights repacked at load for the products: eight rows side by side per block, so that one SIMD
//! instruction advances eight rows at once. For each group of four weights of a block (`k`), the
//! eight rows' four bytes sit next to each other (32 bytes), and the activation's matching four bytes
//! are broadcast against them: `dpbusd` (or `maddubs` + `madd` without VNNI) then adds four products
//! to each row's lane. The scales of the eight rows are one vector, so a block costs one
//! multiply-add per activation row for all eight rows, with no horizontal sums.
//!
//! The file on disk stays as published: this is a permutation of its bytes, nothing is requantized.
//! Every product of a row and an activation row takes the same steps whatever else is computed with
//! it, so a sequence's results never depend on the batch.

use half::f16;

use super::q4_1::{BLOCK, BlockQ4_1, BlockQ8_1};
use super::q8_0::BlockQ8_0;
use super::{Simd, prefetch_ahead, simd};

/// Rows per packed group.
pub const ROWS: usize = 8;

/// One block of eight Q4_1 rows: `qs[c]` holds bytes `4c..4c + 4` of each row's 16 (low nibbles:
/// weights `4c..4c + 4`, high nibbles: weights `16 + 4c..`), then the rows' scales and minimums.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct PackedQ4_1 {
    qs: [[u8; 32]; 4],
    d: [f16; ROWS],
    m: [f16; ROWS],
}

/// One block of eight Q8_0 rows: `qs[g]` holds weights `4g..4g + 4` of each row, offset by 128
/// (`q + 128` as unsigned: what VNNI multiplies; the offset is taken off with the activations' sum).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct PackedQ8_0 {
    qs: [[u8; 32]; 8],
    d: [f16; ROWS],
}

/// Packs `rows` rows of `per_row` blocks (`block(i)`: the `i`-th block in row-major order) into
/// groups of eight rows; missing rows are zero.
pub fn pack_q4_1(block: impl Fn(usize) -> BlockQ4_1, rows: usize, per_row: usize) -> Vec<PackedQ4_1> {
    let zero = BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] };
    let mut packed = Vec::with_capacity(rows.div_ceil(ROWS) * per_row);
    for group in 0..rows.div_ceil(ROWS) {
        for b in 0..per_row {
            let block = |r: usize| {
                if group * ROWS + r < rows { block((group * ROWS + r) * per_row + b) } else { zero }
            };
            let mut p = PackedQ4_1 { qs: [[0; 32]; 4], d: [f16::ZERO; ROWS], m: [f16::ZERO; ROWS] };
            for r in 0..ROWS {
                let w = block(r);
                for c in 0..4 {
                    p.qs[c][4 * r..4 * r + 4].copy_from_slice(&w.qs[4 * c..4 * c + 4]);
                }
                (p.d[r], p.m[r]) = (w.d, w.m);
            }
            packed.push(p);
        }
    }
    packed
}

pub fn pack_q8_0(block: impl Fn(usize) -> BlockQ8_0, rows: usize, per_row: usize) -> Vec<PackedQ8_0> {
    let zero = BlockQ8_0 { d: f16::ZERO, qs: [0; BLOCK] };
    let mut packed = Vec::with_capacity(rows.div_ceil(ROWS) * per_row);
    for group in 0..rows.div_ceil(ROWS) {
        for b in 0..per_row {
            let block = |r: usize| {
                if group * ROWS + r < rows { block((group * ROWS + r) * per_row + b) } else { zero }
            };
            let mut p = PackedQ8_0 { qs: [[0x80; 32]; 8], d: [f16::ZERO; ROWS] };
            for r in 0..ROWS {
                let w = block(r);
                for g in 0..8 {
                    for j in 0..4 {
                        p.qs[g][4 * r + j] = (w.qs[4 * g + j] as u8) ^ 0x80;
                    }
                }
                p.d[r] = w.d;
            }
            packed.push(p);
        }
    }
    packed
}

/// Row `r` (of its group) of packed Q4_1 blocks, dequantized.
pub fn q4_1_row(group: &[PackedQ4_1], r: usize, out: &mut [f32]) {
    for (p, out) in group.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let (d, m) = (p.d[r].to_f32(), p.m[r].to_f32());
        for c in 0..4 {
            for j in 0..4 {
                let byte = p.qs[c][4 * r + j];
                out[4 * c + j] = d * (byte & 0x0F) as f32 + m;
                out[16 + 4 * c + j] = d * (byte >> 4) as f32 + m;
            }
        }
    }
}

/// Row `r` (of its group) of packed Q8_0 blocks, dequantized.
pub fn q8_0_row(group: &[PackedQ8_0], r: usize, out: &mut [f32]) {
    for (p, out) in group.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = p.d[r].to_f32();
        for g in 0..8 {
            for j in 0..4 {
                out[4 * g + j] = d * (p.qs[g][4 * r + j] ^ 0x80) as i8 as f32;
            }
        }
    }
}

/// `out[r * m + i] = Σ w[r] · x[i]` for the eight rows of one packed group (`per_row` blocks each)
/// and `m` activation rows.
pub fn q4_1_times(group: &[PackedQ4_1], x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    q4_1_times_on(simd(), group, x, m, out)
}

/// [`q4_1_times`] on a given path (which the CPU must have).
fn q4_1_times_on(path: Simd, group: &[PackedQ4_1], x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    by_fours(group.len(), x, m, out, |xs, n, sums| match path {
        // SAFETY: the CPU has the features of each path (detected at run time).
        #[cfg(target_arch = "x86_64")]
        Simd::Vnni => unsafe { x86::q4_1_vnni(group, xs, n, sums) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::q4_1_avx2(group, xs, n, sums) },
        _ => q4_1_portable(group, xs, n, sums),
    })
}

pub fn q8_0_times(group: &[PackedQ8_0], x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    q8_0_times_on(simd(), group, x, m, out)
}

fn q8_0_times_on(path: Simd, group: &[PackedQ8_0], x: &[BlockQ8_1], m: usize, out: &mut [f32]) {
    by_fours(group.len(), x, m, out, |xs, n, sums| match path {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Vnni => unsafe { x86::q8_0_vnni(group, xs, n, sums) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::q8_0_avx2(group, xs, n, sums) },
        _ => q8_0_portable(group, xs, n, sums),
    })
}

/// Hands the activation rows to `kernel` up to four at a time (`kernel(rows, n, sums)`), then lays
/// the sums out by weight row.
fn by_fours(
    per_row: usize,
    x: &[BlockQ8_1],
    m: usize,
    out: &mut [f32],
    kernel: impl Fn(&[BlockQ8_1], usize, &mut [[f32; ROWS]; 4]),
) {
    assert!(x.len() == m * per_row && out.len() == ROWS * m);
    let mut i = 0;
    while i < m {
        let n = (m - i).min(4);
        let mut sums = [[0f32; ROWS]; 4];
        kernel(&x[i * per_row..(i + n) * per_row], n, &mut sums);
        scatter(&sums, n, i, m, out);
        i += n;
    }
}

/// `sums[j][r]` (activation row `first + j`, weight row `r`) into `out[r * m + first + j]`.
fn scatter(sums: &[[f32; ROWS]; 4], n: usize, first: usize, m: usize, out: &mut [f32]) {
    for (j, sums) in sums.iter().enumerate().take(n) {
        for (r, &s) in sums.iter().enumerate() {
            out[r * m + first + j] = s;
        }
    }
}

/// The reference for machines without AVX2: the same sums, one lane at a time.
// `r` indexes the packed rows, their scales and the sums alike: a range reads clearest.
#[allow(clippy::needless_range_loop)]
fn q4_1_portable(group: &[PackedQ4_1], xs: &[BlockQ8_1], n: usize, sums: &mut [[f32; ROWS]; 4]) {
    let per_row = group.len();
    for j in 0..n {
        for r in 0..ROWS {
            let (mut acc, mut mins) = (0f32, 0f32);
            for (p, x) in group.iter().zip(&xs[j * per_row..(j + 1) * per_row]) {
                let mut isum = 0i32;
                for c in 0..4 {
                    for k in 0..4 {
                        let byte = p.qs[c][4 * r + k];
                        isum += (byte & 0x0F) as i32 * x.qs[4 * c + k] as i32
                            + (byte >> 4) as i32 * x.qs[16 + 4 * c + k] as i32;
                    }
                }
                acc = (p.d[r].to_f32() * x.d).mul_add(isum as f32, acc);
                mins = p.m[r].to_f32().mul_add(x.s, mins);
            }
            sums[j][r] = acc + mins;
        }
    }
}

#[allow(clippy::needless_range_loop)]
fn q8_0_portable(group: &[PackedQ8_0], xs: &[BlockQ8_1], n: usize, sums: &mut [[f32; ROWS]; 4]) {
    let per_row = group.len();
    for j in 0..n {
        for r in 0..ROWS {
            let mut acc = 0f32;
            for (p, x) in group.iter().zip(&xs[j * per_row..(j + 1) * per_row]) {
                let mut isum = 0i32;
                for g in 0..8 {
                    for k in 0..4 {
                        isum += (p.qs[g][4 * r + k] ^ 0x80) as i8 as i32 * x.qs[4 * g + k] as i32;
                    }
                }
                acc = (p.d[r].to_f32() * x.d).mul_add(isum as f32, acc);
            }
            sums[j][r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// Four bytes of activations (weights `4g..4g + 4`) in every 32-bit lane (a macro, so the
    /// intrinsic is compiled with the kernel's features).
    macro_rules! broadcast {
        ($x:expr, $g:expr) => {{
            let (x, g): (&BlockQ8_1, usize) = ($x, $g);
            debug_assert!(g < 8);
            // SAFETY: bytes 4g..4g + 4 of the 32 in `qs`; an unaligned read.
            _mm256_set1_epi32(unsafe { x.qs.as_ptr().add(4 * g).cast::<i32>().read_unaligned() })
        }};
    }

    /// The kernels for up to four activation rows; `dp(acc, u8s, i8s)` adds four products per lane.
    macro_rules! kernels {
        ($q4:ident, $q8:ident, $features:literal, |$acc:ident, $u:ident, $s:ident| $dp:expr, $q8_products:ident, $q8_offset:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $q4(group: &[PackedQ4_1], xs: &[BlockQ8_1], n: usize, sums: &mut [[f32; ROWS]; 4]) {
                let per_row = group.len();
                let low = _mm256_set1_epi8(0x0F);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut mins = [_mm256_setzero_ps(); 4];
                for (b, p) in group.iter().enumerate() {
                    prefetch_ahead(p);
                    // SAFETY: 32-byte aligned loads of 32-byte arrays; 16-byte loads of [f16; 8].
                    let (d, m, w) = unsafe {
                        let packed: [__m256i; 4] = std::array::from_fn(|c| _mm256_load_si256(p.qs[c].as_ptr().cast()));
                        let w: [__m256i; 8] = std::array::from_fn(|g| {
                            if g < 4 {
                                _mm256_and_si256(packed[g], low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16(packed[g - 4], 4), low)
                            }
                        });
                        (
                            _mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr().cast())),
                            _mm256_cvtph_ps(_mm_loadu_si128(p.m.as_ptr().cast())),
                            w,
                        )
                    };
                    for j in 0..n {
                        let x = &xs[j * per_row + b];
                        let mut isum = _mm256_setzero_si256();
                        for (g, w) in w.iter().enumerate() {
                            let ($acc, $u, $s) = (isum, *w, broadcast!(x, g));
                            isum = $dp;
                        }
                        acc[j] =
                            _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d)), _mm256_cvtepi32_ps(isum), acc[j]);
                        mins[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), mins[j]);
                    }
                }
                for j in 0..n {
                    // SAFETY: eight floats stored into [f32; 8].
                    unsafe { _mm256_storeu_ps(sums[j].as_mut_ptr(), _mm256_add_ps(acc[j], mins[j])) };
                }
            }

            #[target_feature(enable = $features)]
            pub unsafe fn $q8(group: &[PackedQ8_0], xs: &[BlockQ8_1], n: usize, sums: &mut [[f32; ROWS]; 4]) {
                let per_row = group.len();
                let mut acc = [_mm256_setzero_ps(); 4];
                for (b, p) in group.iter().enumerate() {
                    prefetch_ahead(p);
                    // SAFETY: as above.
                    let (d, w) = unsafe {
                        let w: [__m256i; 8] = std::array::from_fn(|g| _mm256_load_si256(p.qs[g].as_ptr().cast()));
                        (_mm256_cvtph_ps(_mm_loadu_si128(p.d.as_ptr().cast())), w)
                    };
                    for j in 0..n {
                        let x = &xs[j * per_row + b];
                        let mut isum = _mm256_setzero_si256();
                        for (g, w) in w.iter().enumerate() {
                            isum = $q8_products(isum, *w, broadcast!(x, g));
                        }
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_mul_ps(d, _mm256_set1_ps(x.d)),
                            _mm256_cvtepi32_ps($q8_offset(isum, x.sum)),
                            acc[j],
                        );
                    }
                }
                for j in 0..n {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(sums[j].as_mut_ptr(), acc[j]) };
                }
            }
        };
    }

    // VNNI: the offset weights (0..=255) times the activations in one instruction; Σ (w + 128) x
    // less 128 Σ x is Σ w x.
    #[inline(always)]
    fn q8_products_vnni(acc: __m256i, offset_weights: __m256i, acts: __m256i) -> __m256i {
        // SAFETY: only called from kernels compiled with AVX-512 VNNI (inlined into them).
        unsafe { _mm256_dpbusd_epi32(acc, offset_weights, acts) }
    }
    #[inline(always)]
    fn q8_offset_vnni(isum: __m256i, act_sum: i32) -> __m256i {
        // SAFETY: as above.
        unsafe { _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * act_sum)) }
    }
    // AVX2: maddubs would saturate on 255 x 127 pairs, so the weights get their sign back and the
    // unsigned |w| meets x carrying w's sign (at most 2 * 128 * 127 per pair: no saturation).
    #[inline(always)]
    fn q8_products_avx2(acc: __m256i, offset_weights: __m256i, acts: __m256i) -> __m256i {
        // SAFETY: only called from kernels compiled with AVX2 (inlined into them).
        unsafe {
            let w = _mm256_xor_si256(offset_weights, _mm256_set1_epi8(-128));
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(acts, w));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
    #[inline(always)]
    fn q8_offset_avx2(isum: __m256i, _act_sum: i32) -> __m256i {
        isum
    }

    kernels!(
        q4_1_vnni,
        q8_0_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        |acc, u, s| _mm256_dpbusd_epi32(acc, u, s),
        q8_products_vnni,
        q8_offset_vnni
    );
    // Without VNNI: pairs of u8 x i8 summed in i16 (at most 2 * 15 * 127 for Q4_1: no saturation),
    // then pairs of those in i32 — the same integers.
    kernels!(
        q4_1_avx2,
        q8_0_avx2,
        "avx2,fma,f16c",
        |acc, u, s| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))),
        q8_products_avx2,
        q8_offset_avx2
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::noise;
    use crate::kernels::q4_1::quantize_row;

    /// The paths this CPU can run: the fastest, and every slower one.
    fn paths() -> Vec<Simd> {
        match simd() {
            Simd::Vnni => vec![Simd::Vnni, Simd::Avx2, Simd::Portable],
            Simd::Avx2 => vec![Simd::Avx2, Simd::Portable],
            Simd::Portable => vec![Simd::Portable],
        }
    }

    fn q4_1_rows(rows: usize, per_row: usize, seed: u64) -> Vec<BlockQ4_1> {
        noise(rows * per_row * BLOCK, seed)
            .chunks_exact(BLOCK)
            .map(|c| BlockQ4_1::quantize(c.try_into().unwrap()))
            .collect()
    }

    fn q8_0_rows(rows: usize, per_row: usize, seed: u64) -> Vec<BlockQ8_0> {
        noise(rows * per_row * BLOCK, seed)
            .chunks_exact(BLOCK)
            .map(|c| BlockQ8_0::quantize(c.try_into().unwrap()))
            .collect()
    }

    fn activations(m: usize, per_row: usize) -> Vec<BlockQ8_1> {
        (0..m).flat_map(|i| quantize_row(&noise(per_row * BLOCK, 50 + i as u64))).collect()
    }

    #[test]
    fn packed_rows_read_back_as_the_original_rows() {
        let per_row = 3;
        let blocks = q4_1_rows(11, per_row, 1);
        let packed = pack_q4_1(|i| blocks[i], 11, per_row);
        assert_eq!(packed.len(), 2 * per_row, "11 rows take two groups");
        let mut row = vec![0f32; per_row * BLOCK];
        for r in 0..11 {
            q4_1_row(&packed[(r / ROWS) * per_row..][..per_row], r % ROWS, &mut row);
            let expected: Vec<f32> =
                blocks[r * per_row..(r + 1) * per_row].iter().flat_map(|b| b.dequantize()).collect();
            assert_eq!(row, expected, "row {r}");
        }
        let blocks = q8_0_rows(9, per_row, 2);
        let packed = pack_q8_0(|i| blocks[i], 9, per_row);
        for r in 0..9 {
            q8_0_row(&packed[(r / ROWS) * per_row..][..per_row], r % ROWS, &mut row);
            let expected: Vec<f32> =
                blocks[r * per_row..(r + 1) * per_row].iter().flat_map(|b| b.dequantize()).collect();
            assert_eq!(row, expected, "row {r}");
        }
    }

    /// Against the row-major kernels (same integer sums, float steps in another order).
    #[test]
    fn packed_products_match_the_row_major_dots() {
        let per_row = 18;
        let (w4, w8) = (q4_1_rows(ROWS, per_row, 3), q8_0_rows(ROWS, per_row, 4));
        let (p4, p8) = (pack_q4_1(|i| w4[i], ROWS, per_row), pack_q8_0(|i| w8[i], ROWS, per_row));
        for (path, m) in paths().into_iter().flat_map(|p| [1, 3, 4, 6].map(|m| (p, m))) {
            let x = activations(m, per_row);
            let (mut out4, mut out8) = (vec![0f32; ROWS * m], vec![0f32; ROWS * m]);
            q4_1_times_on(path, &p4, &x, m, &mut out4);
            q8_0_times_on(path, &p8, &x, m, &mut out8);
            for r in 0..ROWS {
                for i in 0..m {
                    let xi = &x[i * per_row..(i + 1) * per_row];
                    let e4 = crate::kernels::q4_1::dot(&w4[r * per_row..(r + 1) * per_row], xi);
                    let e8 = crate::kernels::q8_0::dot(&w8[r * per_row..(r + 1) * per_row], xi);
                    assert!(
                        (out4[r * m + i] - e4).abs() <= 1e-4 * (1.0 + e4.abs()),
                        "{path:?} Q4_1 row {r}, m {m}: {} vs {e4}",
                        out4[r * m + i]
                    );
                    assert!(
                        (out8[r * m + i] - e8).abs() <= 1e-4 * (1.0 + e8.abs()),
                        "{path:?} Q8_0 row {r}, m {m}: {} vs {e8}",
                        out8[r * m + i]
                    );
                }
            }
        }
    }

    /// The largest magnitudes: no lane saturates or overflows on any path.
    #[test]
    fn extreme_values_do_not_overflow() {
        let per_row = 4;
        let w4 = vec![BlockQ4_1 { d: f16::from_f32(1.0), m: f16::ZERO, qs: [0xFF; 16] }; ROWS * per_row];
        let w8 = vec![BlockQ8_0 { d: f16::from_f32(1.0), qs: [-128; BLOCK] }; ROWS * per_row];
        let (p4, p8) = (pack_q4_1(|i| w4[i], ROWS, per_row), pack_q8_0(|i| w8[i], ROWS, per_row));
        for (path, q) in paths().into_iter().flat_map(|p| [(p, 127i8), (p, -127)]) {
            let x = vec![BlockQ8_1 { qs: [q; BLOCK], d: 1.0, s: q as f32 * 32.0, sum: q as i32 * 32 }; per_row];
            let (mut out4, mut out8) = ([0f32; ROWS], [0f32; ROWS]);
            q4_1_times_on(path, &p4, &x, 1, &mut out4);
            q8_0_times_on(path, &p8, &x, 1, &mut out8);
            assert_eq!(out4, [(per_row * BLOCK) as f32 * 15.0 * q as f32; ROWS], "{path:?}");
            assert_eq!(out8, [(per_row * BLOCK) as f32 * -128.0 * q as f32; ROWS], "{path:?}");
        }
    }

    /// A product is bit for bit the same whatever the other activation rows of the call are.
    #[test]
    fn a_product_does_not_depend_on_the_other_rows() {
        let per_row = 18;
        let (w4, w8) = (q4_1_rows(ROWS, per_row, 5), q8_0_rows(ROWS, per_row, 6));
        let (p4, p8) = (pack_q4_1(|i| w4[i], ROWS, per_row), pack_q8_0(|i| w8[i], ROWS, per_row));
        let x = activations(7, per_row);
        for path in paths() {
            let (mut all4, mut all8) = (vec![0f32; ROWS * 7], vec![0f32; ROWS * 7]);
            q4_1_times_on(path, &p4, &x, 7, &mut all4);
            q8_0_times_on(path, &p8, &x, 7, &mut all8);
            for i in 0..7 {
                let xi = &x[i * per_row..(i + 1) * per_row];
                let (mut one4, mut one8) = (vec![0f32; ROWS], vec![0f32; ROWS]);
                q4_1_times_on(path, &p4, xi, 1, &mut one4);
                q8_0_times_on(path, &p8, xi, 1, &mut one8);
                for r in 0..ROWS {
                    assert_eq!(one4[r].to_bits(), all4[r * 7 + i].to_bits(), "{path:?}");
                    assert_eq!(one8[r].to_bits(), all8[r * 7 + i].to_bits(), "{path:?}");
                }
            }
        }
    }
}
