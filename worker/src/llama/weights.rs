//! Weight matrices and their products with a batch of activation rows. Q4_1 and Q8_0 run on rbee's
//! kernels with the blocks exactly as the file has them; f32 is the reference (weights dequantized,
//! activations not quantized); any other format keeps candle's storage and kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

use crate::kernels::q4_1::{self, BlockQ4_1, BlockQ8_1, BLOCK};
use crate::kernels::q8_0::{self, BlockQ8_0};

/// How the matrices of a model are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// rbee's quantized kernels (activations quantized to 8 bits per 32).
    Quantized,
    /// Every weight dequantized to f32 and multiplied in f32: the numerical reference.
    Reference,
}

enum Data {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    F32(Vec<f32>),
    /// Formats without an rbee kernel, one candle matrix per stacked part (with its row count).
    Candle(Vec<(QMatMul, usize)>),
}

/// A `rows` x `cols` weight matrix; `y = W x` for each activation row `x`.
pub struct Weight {
    rows: usize,
    cols: usize,
    data: Data,
}

pub type Result<T> = std::result::Result<T, String>;

fn candle(e: candle_core::Error) -> String {
    e.to_string()
}

impl Weight {
    pub fn from_qtensor(qt: QTensor, kernels: Kernels) -> Result<Weight> {
        let (rows, cols) = match qt.shape().dims() {
            [rows, cols] => (*rows, *cols),
            [n] => (1, *n),
            dims => return Err(format!("a weight matrix has two dimensions, not {dims:?}")),
        };
        let data = match (qt.dtype(), kernels) {
            (GgmlDType::Q4_1, Kernels::Quantized) => Data::Q4_1(parse_q4_1(&qt.data().map_err(candle)?).ok_or("Q4_1 data is not whole blocks")?),
            (GgmlDType::Q8_0, Kernels::Quantized) => Data::Q8_0(BlockQ8_0::parse(&qt.data().map_err(candle)?).ok_or("Q8_0 data is not whole blocks")?),
            (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16, _) | (_, Kernels::Reference) => {
                Data::F32(qt.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(candle)?)
            }
            _ => Data::Candle(vec![(QMatMul::from_qtensor(qt).map_err(candle)?, rows)]),
        };
        Ok(Weight { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// One matrix whose rows are those of `parts` in order (one product instead of several).
    pub fn stack(parts: Vec<Weight>) -> Result<Weight> {
        let cols = parts[0].cols;
        if parts.iter().any(|p| p.cols != cols) {
            return Err("stacked matrices differ in width".into());
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = match parts[0].data {
            Data::Q4_1(_) => Data::Q4_1(concat(parts, |d| if let Data::Q4_1(v) = d { Some(v) } else { None })?),
            Data::Q8_0(_) => Data::Q8_0(concat(parts, |d| if let Data::Q8_0(v) = d { Some(v) } else { None })?),
            Data::F32(_) => Data::F32(concat(parts, |d| if let Data::F32(v) = d { Some(v) } else { None })?),
            Data::Candle(_) => Data::Candle(concat(parts, |d| if let Data::Candle(v) = d { Some(v) } else { None })?),
        };
        Ok(Weight { rows, cols, data })
    }

    /// Row `r` as f32 (an embedding).
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let blocks = self.cols / BLOCK;
        match &self.data {
            Data::Q4_1(w) => w[r * blocks..(r + 1) * blocks].iter().zip(out.chunks_exact_mut(BLOCK)).for_each(|(b, o)| o.copy_from_slice(&b.dequantize())),
            Data::Q8_0(w) => w[r * blocks..(r + 1) * blocks].iter().zip(out.chunks_exact_mut(BLOCK)).for_each(|(b, o)| o.copy_from_slice(&b.dequantize())),
            Data::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
            Data::Candle(_) => return Err("rows of this format cannot be read".into()),
        }
        Ok(())
    }

    /// `out (m x rows) = x (m x cols) · Wᵀ`, split over the threads by weight rows.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != m * k || out.len() != m * n {
            return Err(format!("product shapes do not fit: {m} x {k} activations, {n} x {k} weights, {} outputs", out.len()));
        }
        if let Data::Candle(parts) = &self.data {
            return candle_matmul(parts, x, m, k, out);
        }
        // Each task writes the products of its weight rows for every activation row (row-major by
        // weight row), then they are laid out by activation row.
        let rows_per_task = n.div_ceil(rayon::current_num_threads() * 4).max(16);
        let mut by_weight_row = vec![0f32; n * m];
        let chunks = by_weight_row.par_chunks_mut(rows_per_task * m).enumerate();
        match &self.data {
            Data::Q4_1(w) => {
                let xq: Vec<BlockQ8_1> = x.par_chunks(k).flat_map_iter(q4_1::quantize_row).collect();
                let per_row = k / BLOCK;
                chunks.for_each(|(t, out)| {
                    let first = t * rows_per_task * per_row;
                    q4_1::rows_times(&w[first..first + out.len() / m * per_row], per_row, &xq, m, out)
                });
            }
            Data::Q8_0(w) => {
                let xq: Vec<BlockQ8_1> = x.par_chunks(k).flat_map_iter(q4_1::quantize_row).collect();
                let per_row = k / BLOCK;
                chunks.for_each(|(t, out)| {
                    let first = t * rows_per_task * per_row;
                    q8_0::rows_times(&w[first..first + out.len() / m * per_row], per_row, &xq, m, out)
                });
            }
            Data::F32(w) => chunks.for_each(|(t, out)| {
                for (j, y) in out.chunks_exact_mut(m).enumerate() {
                    let r = t * rows_per_task + j;
                    let row = &w[r * k..(r + 1) * k];
                    for (i, y) in y.iter_mut().enumerate() {
                        *y = row.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, b)| a * b).sum();
                    }
                }
            }),
            Data::Candle(_) => unreachable!("handled above"),
        }
        for (r, products) in by_weight_row.chunks_exact(m).enumerate() {
            for (i, &p) in products.iter().enumerate() {
                out[i * n + r] = p;
            }
        }
        Ok(())
    }
}

fn parse_q4_1(bytes: &[u8]) -> Option<Vec<BlockQ4_1>> {
    if !bytes.len().is_multiple_of(20) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(20)
            .map(|b| BlockQ4_1 {
                d: half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])),
                m: half::f16::from_bits(u16::from_le_bytes([b[2], b[3]])),
                qs: b[4..20].try_into().expect("16 bytes"),
            })
            .collect(),
    )
}

fn concat<T>(parts: Vec<Weight>, take: impl Fn(Data) -> Option<Vec<T>>) -> Result<Vec<T>> {
    let mut all = Vec::new();
    for part in parts {
        all.extend(take(part.data).ok_or("stacked matrices differ in format")?);
    }
    Ok(all)
}

fn candle_matmul(parts: &[(QMatMul, usize)], x: &[f32], m: usize, k: usize, out: &mut [f32]) -> Result<()> {
    let n: usize = parts.iter().map(|(_, rows)| rows).sum();
    let input = Tensor::from_slice(x, (m, k), &Device::Cpu).map_err(candle)?;
    let mut first = 0;
    for (matrix, rows) in parts {
        let products = matrix.forward(&input).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(candle)?;
        for i in 0..m {
            out[i * n + first..i * n + first + rows].copy_from_slice(&products[i * rows..(i + 1) * rows]);
        }
        first += rows;
    }
    Ok(())
}
