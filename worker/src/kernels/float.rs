//! The float kernels of the forward pass: attention of one query head over the half-precision KV
//! cache, and SwiGLU. AVX2 + FMA (+ F16C) when the CPU has them, plain Rust otherwise.

use half::f16;

/// One query head over `positions` keys and values (rows `stride` apart): softmax-weighted sum.
#[inline]
pub fn attend(q: &[f32], keys: &[f16], values: &[f16], stride: usize, positions: usize, scale: f32, out: &mut [f32]) {
    let head_dim = q.len();
    assert!(
        out.len() == head_dim
            && keys.len() >= (positions - 1) * stride + head_dim
            && values.len() >= (positions - 1) * stride + head_dim
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd() != super::Simd::Portable {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time); the lengths are checked above.
        match head_dim {
            64 => {
                return unsafe { avx2::attend::<8>(q, keys, values, stride, positions, scale, out) };
            }
            128 => {
                return unsafe { avx2::attend::<16>(q, keys, values, stride, positions, scale, out) };
            }
            _ => {}
        }
    }
    let mut weights: Vec<f32> = (0..positions)
        .map(|p| q.iter().zip(&keys[p * stride..][..head_dim]).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale)
        .collect();
    let total = softmax_in_place(&mut weights);
    out.fill(0.0);
    for (p, w) in weights.iter().enumerate() {
        let w = w / total;
        out.iter_mut().zip(&values[p * stride..][..head_dim]).for_each(|(o, v)| *o += w * v.to_f32());
    }
}

/// `w <- exp(w - max)`; returns the sum.
fn softmax_in_place(weights: &mut [f32]) -> f32 {
    let max = weights.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut total = 0.0;
    for w in weights.iter_mut() {
        *w = (*w - max).exp();
        total += *w;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// e^x for eight lanes: 2^n · p(r) with x = n ln 2 + r, |r| <= ln 2 / 2, p a degree-6
    /// polynomial (relative error ~2e-7 against libm); x clamped to [-87, 88].
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // r = x - n ln 2, with ln 2 in two parts so r keeps its precision.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(p, scale)
    }

    /// [`super::silu_times`] eight lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= every length.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let silu = _mm256_div_ps(g, _mm256_add_ps(one, exp(_mm256_sub_ps(_mm256_setzero_ps(), g))));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i))));
            }
            i += 8;
        }
        for j in i..n {
            out[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
        }
    }

    /// [`super::attend`] for a head of `8 * V` floats: the query and the output stay in registers.
    /// SAFETY (callers): AVX2, FMA and F16C; `keys` and `values` hold `positions` rows `stride` apart.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<const V: usize>(
        q: &[f32],
        keys: &[half::f16],
        values: &[half::f16],
        stride: usize,
        positions: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        // Eight half-precision floats from `at`, widened.
        macro_rules! load {
            ($at:expr) => {
                _mm256_cvtph_ps(_mm_loadu_si128($at.cast()))
            };
        }
        // SAFETY: every load below is within the rows checked by the caller.
        unsafe {
            let query: [__m256; V] = std::array::from_fn(|i| _mm256_loadu_ps(q.as_ptr().add(8 * i)));
            let mut weights = Vec::with_capacity(positions);
            for p in 0..positions {
                let key = keys.as_ptr().add(p * stride);
                let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for i in (0..V).step_by(2) {
                    even = _mm256_fmadd_ps(query[i], load!(key.add(8 * i)), even);
                    odd = _mm256_fmadd_ps(query[i + 1], load!(key.add(8 * i + 8)), odd);
                }
                let sum = _mm256_add_ps(even, odd);
                let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
                let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
                weights.push(_mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1))) * scale);
            }
            let total = super::softmax_in_place(&mut weights);
            let mut acc = [_mm256_setzero_ps(); V];
            for (p, w) in weights.iter().enumerate() {
                let weight = _mm256_set1_ps(w / total);
                let value = values.as_ptr().add(p * stride);
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(weight, load!(value.add(8 * i)), *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *acc);
            }
        }
    }
}

/// `out = gate / (1 + e^-gate) * up`.
#[inline]
pub fn silu_times(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd() != super::Simd::Portable {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
        return unsafe { avx2::silu_times(gate, up, out) };
    }
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_vectorised_silu_matches_libm() {
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.37).chain([-100.0, 100.0, 0.0, 1e-8]).collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = vec![0f32; gate.len()];
        super::silu_times(&gate, &up, &mut out);
        for ((o, g), u) in out.iter().zip(&gate).zip(&up) {
            let expected = g / (1.0 + (-g).exp()) * u;
            assert!((o - expected).abs() <= 1e-6 * (1.0 + expected.abs()), "silu({g}) * {u}: {o} vs {expected}");
        }
    }
}
