//! The Q4_1 kernel as a candle quantized storage: a `QTensor` built on [`FastQ4_1`] is used by
//! candle's `QMatMul` like any other, with rbee's kernel doing the products. The blocks keep the
//! GGUF layout, so a model file's bytes are taken as they are.

use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, Result, Shape};
use half::f16;
use rayon::prelude::*;

use super::q4_1::{self, BlockQ4_1, BLOCK};

pub struct FastQ4_1(pub Vec<BlockQ4_1>);

impl FastQ4_1 {
    /// Blocks from GGUF bytes (20 per block).
    pub fn from_bytes(bytes: &[u8]) -> Result<FastQ4_1> {
        if !bytes.len().is_multiple_of(20) {
            candle_core::bail!("Q4_1 data of {} bytes is not whole 20-byte blocks", bytes.len())
        }
        Ok(FastQ4_1(
            bytes
                .chunks_exact(20)
                .map(|b| BlockQ4_1 {
                    d: f16::from_bits(u16::from_le_bytes([b[0], b[1]])),
                    m: f16::from_bits(u16::from_le_bytes([b[2], b[3]])),
                    qs: b[4..20].try_into().expect("16 bytes"),
                })
                .collect(),
        ))
    }

    /// A candle tensor of this shape whose products run on rbee's kernel.
    pub fn into_qtensor<S: Into<Shape>>(self, shape: S) -> Result<QTensor> {
        QTensor::new(QStorage::Cpu(Box::new(self)), shape)
    }
}

/// Rows of the weight matrix per parallel task: enough work to pay for the hand-off.
const ROWS_PER_TASK: usize = 64;

impl QuantizedType for FastQ4_1 {
    fn dtype(&self) -> GgmlDType {
        GgmlDType::Q4_1
    }

    /// `dst (m x n) = lhs (m x k) · selfᵀ` where self holds `n` rows of `k` weights.
    fn matmul_t(&self, (m, k, n): (usize, usize, usize), lhs: &[f32], dst: &mut [f32]) -> Result<()> {
        if !k.is_multiple_of(BLOCK) || lhs.len() != m * k || dst.len() < m * n || self.0.len() != n * k / BLOCK {
            candle_core::bail!("Q4_1 matmul shapes do not fit: m {m} k {k} n {n}, lhs {}, dst {}, {} blocks", lhs.len(), dst.len(), self.0.len())
        }
        let per_row = k / BLOCK;
        let lhs_q: Vec<Vec<q4_1::BlockQ8_1>> = lhs.chunks_exact(k).map(q4_1::quantize_row).collect();
        for (i, x) in lhs_q.iter().enumerate() {
            dst[i * n..(i + 1) * n].par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(t, out)| {
                let first = t * ROWS_PER_TASK;
                for (j, y) in out.iter_mut().enumerate() {
                    let row = first + j;
                    *y = q4_1::dot(&self.0[row * per_row..(row + 1) * per_row], x);
                }
            });
        }
        Ok(())
    }

    fn matmul_t_f16(&self, mkn: (usize, usize, usize), lhs: &[f16], dst: &mut [f16]) -> Result<()> {
        let lhs: Vec<f32> = lhs.iter().map(|x| x.to_f32()).collect();
        let mut out = vec![0f32; dst.len()];
        self.matmul_t(mkn, &lhs, &mut out)?;
        for (d, o) in dst.iter_mut().zip(out) {
            *d = f16::from_f32(o);
        }
        Ok(())
    }

    fn embedding(&self, ids: &[u32], rows: usize, hidden: usize) -> Result<CpuStorage> {
        let per_row = hidden / BLOCK;
        if !hidden.is_multiple_of(BLOCK) || self.0.len() != rows * per_row {
            candle_core::bail!("Q4_1 embedding of {rows} x {hidden} does not fit {} blocks", self.0.len())
        }
        let mut out = Vec::with_capacity(ids.len() * hidden);
        for &id in ids {
            let row = id as usize;
            if row >= rows {
                candle_core::bail!("embedding id {row} is out of range for {rows} rows")
            }
            out.extend(self.0[row * per_row..(row + 1) * per_row].iter().flat_map(|b| b.dequantize()));
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> Result<CpuStorage> {
        let mut out: Vec<f32> = self.0.iter().flat_map(|b| b.dequantize()).collect();
        out.truncate(elem_count);
        Ok(CpuStorage::F32(out))
    }

    fn storage_size_in_bytes(&self) -> usize {
        self.0.len() * std::mem::size_of::<BlockQ4_1>()
    }

    fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr().cast()
    }

    fn block_size(&self) -> usize {
        BLOCK
    }

    fn from_float(&mut self, xs: &[f32]) {
        self.0 = xs.chunks_exact(BLOCK).map(|c| BlockQ4_1::quantize(c.try_into().expect("32 values"))).collect();
    }

    fn from_float_imatrix(&mut self, xs: &[f32], _imatrix_weights: &[f32], _n_per_row: usize) {
        self.from_float(xs)
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::noise;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};


    /// The same weights through candle's own Q4_1 and through rbee's kernel give the same product
    /// (up to the activations' quantization, which both do with 8 bits), for decode (m = 1) and a
    /// prompt (m = 7).
    #[test]
    fn a_qmatmul_on_the_fast_storage_matches_candles_q4_1() -> Result<()> {
        let (n, k) = (200, 576);
        let w = Tensor::from_vec(noise(n * k, 3), (n, k), &Device::Cpu)?;
        let candles = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let ours = FastQ4_1::from_bytes(&candles.data()?)?.into_qtensor((n, k))?;
        let (theirs, ours) = (QMatMul::from_qtensor(candles)?, QMatMul::from_qtensor(ours)?);
        for m in [1, 7] {
            let x = Tensor::from_vec(noise(m * k, 4 + m as u64), (m, k), &Device::Cpu)?;
            let (a, b) = (theirs.forward(&x)?.flatten_all()?.to_vec1::<f32>()?, ours.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
            let max = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(max < 0.05, "m {m}: max difference {max}");
        }
        Ok(())
    }

    #[test]
    fn misfitting_shapes_are_errors_not_panics() {
        let ours = FastQ4_1(vec![BlockQ4_1::quantize(&[0.5; BLOCK]); 2]);
        let mut dst = vec![0f32; 4];
        assert!(ours.matmul_t((1, 33, 2), &[0.0; 33], &mut dst).is_err());
        assert!(ours.matmul_t((1, 32, 3), &[0.0; 32], &mut dst).is_err());
        assert!(ours.embedding(&[5], 2, 32).is_err());
        assert!(FastQ4_1::from_bytes(&[0; 19]).is_err());
    }
}
