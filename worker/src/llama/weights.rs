//! Weight matrices and their products with a batch of activation rows. Q4_1 and Q8_0 run on rbee's
//! kernels, their blocks repacked eight rows side by side (`kernels::packed`); f32 is the reference
//! (weights dequantized, activations not quantized); any other format keeps candle's storage and
//! kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

use crate::kernels::packed::{self, PackedQ4_1, PackedQ8_0, ROWS};
use crate::kernels::q4_1::{self, BlockQ4_1, BlockQ8_1, BLOCK};
use crate::kernels::q8_0::BlockQ8_0;

/// How the matrices of a model are multiplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// rbee's quantized kernels (activations quantized to 8 bits per 32).
    Quantized,
    /// Every weight dequantized to f32 and multiplied in f32: the numerical reference.
    Reference,
}

enum Data {
    Q4_1(Vec<PackedQ4_1>),
    Q8_0(Vec<PackedQ8_0>),
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
        Self::stacked(vec![qt], kernels)
    }

    /// One matrix whose rows are those of `parts` in order (one product instead of several).
    pub fn stacked(parts: Vec<QTensor>, kernels: Kernels) -> Result<Weight> {
        let mut shapes = Vec::new();
        for qt in &parts {
            shapes.push(match qt.shape().dims() {
                [rows, cols] => (*rows, *cols),
                [n] => (1, *n),
                dims => return Err(format!("a weight matrix has two dimensions, not {dims:?}")),
            });
        }
        let cols = shapes[0].1;
        if shapes.iter().any(|s| s.1 != cols) || parts.iter().any(|p| p.dtype() != parts[0].dtype()) {
            return Err("stacked matrices differ in width or format".into());
        }
        let rows = shapes.iter().map(|s| s.0).sum();
        let bytes = || -> Result<Vec<u8>> {
            let mut all = Vec::new();
            for qt in &parts {
                all.extend_from_slice(&qt.data().map_err(candle)?);
            }
            Ok(all)
        };
        let per_row = cols / BLOCK;
        let data = match (parts[0].dtype(), kernels) {
            (GgmlDType::Q4_1, Kernels::Quantized) => Data::Q4_1(packed::pack_q4_1(&parse_q4_1(&bytes()?).ok_or("Q4_1 data is not whole blocks")?, per_row)),
            (GgmlDType::Q8_0, Kernels::Quantized) => Data::Q8_0(packed::pack_q8_0(&BlockQ8_0::parse(&bytes()?).ok_or("Q8_0 data is not whole blocks")?, per_row)),
            (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16, _) | (_, Kernels::Reference) => {
                let mut values = Vec::with_capacity(rows * cols);
                for qt in &parts {
                    values.extend(qt.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(candle)?);
                }
                Data::F32(values)
            }
            _ => Data::Candle(parts.into_iter().zip(&shapes).map(|(qt, s)| Ok((QMatMul::from_qtensor(qt).map_err(candle)?, s.0))).collect::<Result<_>>()?),
        };
        Ok(Weight { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` as f32 (an embedding).
    pub fn row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let blocks = self.cols / BLOCK;
        match &self.data {
            Data::Q4_1(w) => packed::q4_1_row(&w[(r / ROWS) * blocks..][..blocks], r % ROWS, out),
            Data::Q8_0(w) => packed::q8_0_row(&w[(r / ROWS) * blocks..][..blocks], r % ROWS, out),
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
        // Each task writes the products of its weight rows (whole groups of eight) for every
        // activation row, row-major by weight row; then they are laid out by activation row.
        let groups = n.div_ceil(ROWS);
        let groups_per_task = groups.div_ceil(rayon::current_num_threads() * 4).max(2);
        let mut by_weight_row = vec![0f32; groups * ROWS * m];
        let chunks = by_weight_row.par_chunks_mut(groups_per_task * ROWS * m).enumerate();
        let per_row = k / BLOCK;
        let quantized = || -> Vec<BlockQ8_1> { x.par_chunks(k).flat_map_iter(q4_1::quantize_row).collect() };
        match &self.data {
            Data::Q4_1(w) => {
                let xq = quantized();
                chunks.for_each(|(t, out)| {
                    for (g, out) in out.chunks_exact_mut(ROWS * m).enumerate() {
                        packed::q4_1_times(&w[(t * groups_per_task + g) * per_row..][..per_row], &xq, m, out);
                    }
                });
            }
            Data::Q8_0(w) => {
                let xq = quantized();
                chunks.for_each(|(t, out)| {
                    for (g, out) in out.chunks_exact_mut(ROWS * m).enumerate() {
                        packed::q8_0_times(&w[(t * groups_per_task + g) * per_row..][..per_row], &xq, m, out);
                    }
                });
            }
            Data::F32(w) => chunks.for_each(|(t, out)| {
                for (j, y) in out.chunks_exact_mut(m).enumerate() {
                    let r = t * groups_per_task * ROWS + j;
                    if r >= n {
                        break;
                    }
                    let row = &w[r * k..(r + 1) * k];
                    for (i, y) in y.iter_mut().enumerate() {
                        *y = row.iter().zip(&x[i * k..(i + 1) * k]).map(|(a, b)| a * b).sum();
                    }
                }
            }),
            Data::Candle(_) => unreachable!("handled above"),
        }
        for (r, products) in by_weight_row.chunks_exact(m).take(n).enumerate() {
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
