//! Q8_0 weights times 8-bit activations: the default model's embeddings, which are also its output
//! head. A Q8_0 block (GGUF's layout, 34 bytes) holds 32 weights as `d * q` with signed 8-bit `q`,
//! so a block's dot product with activations quantized the same way is `dw * dx * Σ qw·qx`.

use half::f16;

use super::q4_1::{BLOCK, BlockQ8_1};

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

/// `Σ w·x` over matching blocks, the reference the packed kernel is checked against: integer sums
/// per block, then one multiply-add.
pub fn dot(w: &[BlockQ8_0], x: &[BlockQ8_1]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(w, x)| {
            let sum: i32 = w.qs.iter().zip(&x.qs).map(|(&a, &b)| a as i32 * b as i32).sum();
            w.d.to_f32() * x.d * sum as f32
        })
        .sum()
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
            crate::kernels::assert_within_activation_rounding(&wf, &xs, &xq, dot(&w, &xq));
        }
    }
}
