//! Q4_1 weights times Q8_1 activations: the dot product the default model spends its time in.
//!
//! A Q4_1 block (GGUF's layout, 20 bytes) holds 32 weights as `d * q + m` with 4-bit `q`: element
//! `j < 16` is the low nibble of `qs[j]`, element `j + 16` its high nibble. Activations are
//! quantized per 32 to 8 bits (`x ≈ d * q`) with the block sum kept, so a block's dot product is
//! `dw * dx * Σ qw·qx + mw * sx` where `sx = dx * Σ qx`: integer work inside, two multiply-adds
//! per block outside. This row-major form is the reference; the model multiplies with the packed
//! kernels (`kernels::packed`).

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

/// `Σ w·x` over matching blocks, the reference the packed kernels are checked against: integer
/// sums per block, then the two multiply-adds.
pub fn dot(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
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

    /// Against a dequantized f32 dot product, within half an activation step per element.
    #[test]
    fn the_portable_dot_matches_the_f32_reference_within_the_quantization_bound() {
        for (n, seed) in [(32, 1), (576, 2), (1536, 3)] {
            let w = quantize_weights(&noise(n, seed));
            let xs = noise(n, seed + 100);
            let xq = quantize_row(&xs);
            let wf: Vec<f32> = w.iter().flat_map(|b| b.dequantize()).collect();
            crate::kernels::assert_within_activation_rounding(&wf, &xs, &xq, dot(&w, &xq));
        }
    }
}
