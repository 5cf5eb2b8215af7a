//! Weight matrices and their products with a batch of activation rows. Q4_1 and Q8_0 run on rbee's
//! kernels, their blocks repacked eight rows side by side (`kernels::packed`); f32 is the reference
//! (weights dequantized, activations not quantized); any other format keeps candle's storage and
//! kernels.

use std::io::{Read, Seek, SeekFrom};

use super::team::Team;
use candle_core::quantized::{GgmlDType, QMatMul, gguf_file};
use candle_core::{Device, Module, Tensor};

use crate::kernels::packed::{self, PackedQ4_1, PackedQ8_0, ROWS};
use crate::kernels::q4_1::{BLOCK, BlockQ4_1, BlockQ8_1};
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
    /// The tensors `names` of a GGUF file as one matrix, their rows in order (one product instead
    /// of several). Q4_1 and Q8_0 bytes go from the file straight into the packed layout.
    pub fn read<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        names: &[String],
        kernels: Kernels,
    ) -> Result<Weight> {
        let mut shapes = Vec::new();
        for name in names {
            let info = ct.tensor_infos.get(name).ok_or_else(|| format!("tensor {name} missing"))?;
            shapes.push(match info.shape.dims() {
                [rows, cols] => (*rows, *cols, info.ggml_dtype, info.offset),
                [n] => (1, *n, info.ggml_dtype, info.offset),
                dims => return Err(format!("{name}: a weight matrix has two dimensions, not {dims:?}")),
            });
        }
        let (cols, dtype) = (shapes[0].1, shapes[0].2);
        if shapes.iter().any(|s| s.1 != cols || s.2 != dtype) {
            return Err(format!("{names:?} differ in width or format"));
        }
        let rows = shapes.iter().map(|s| s.0).sum();
        let per_row = cols / BLOCK;
        let data = match (dtype, kernels) {
            (GgmlDType::Q4_1, Kernels::Quantized) => {
                let bytes = read_blocks(ct, reader, &shapes, BlockQ4_1::BYTES)?;
                Data::Q4_1(packed::pack_q4_1(|i| BlockQ4_1::read(&bytes[i * BlockQ4_1::BYTES..]), rows, per_row))
            }
            (GgmlDType::Q8_0, Kernels::Quantized) => {
                let bytes = read_blocks(ct, reader, &shapes, BlockQ8_0::BYTES)?;
                Data::Q8_0(packed::pack_q8_0(|i| BlockQ8_0::read(&bytes[i * BlockQ8_0::BYTES..]), rows, per_row))
            }
            (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16, _) | (_, Kernels::Reference) => {
                let mut values = Vec::with_capacity(rows * cols);
                for name in names {
                    let qt = ct.tensor(reader, name, &Device::Cpu).map_err(candle)?;
                    values.extend(
                        qt.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(candle)?,
                    );
                }
                Data::F32(values)
            }
            _ => {
                let mut parts = Vec::new();
                for (name, shape) in names.iter().zip(&shapes) {
                    parts.push((
                        QMatMul::from_qtensor(ct.tensor(reader, name, &Device::Cpu).map_err(candle)?)
                            .map_err(candle)?,
                        shape.0,
                    ));
                }
                Data::Candle(parts)
            }
        };
        Ok(Weight { rows, cols, data })
    }

    /// As [`Weight::read`], for a matrix whose rows are also read one by one (the embeddings):
    /// formats without an rbee kernel are dequantized, since candle's storage gives no single rows.
    pub fn read_with_rows<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        name: &str,
        kernels: Kernels,
    ) -> Result<Weight> {
        let dtype = ct.tensor_infos.get(name).map(|info| info.ggml_dtype);
        let kernels =
            if matches!(dtype, Some(GgmlDType::Q4_1 | GgmlDType::Q8_0)) { kernels } else { Kernels::Reference };
        Self::read(ct, reader, &[name.to_string()], kernels)
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

    /// `out (m x rows) = x (m x cols) · Wᵀ`, split over the team's threads by weight rows.
    pub fn matmul(&self, team: &Team, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != m * k || out.len() != m * n {
            return Err(format!(
                "product shapes do not fit: {m} x {k} activations, {n} x {k} weights, {} outputs",
                out.len()
            ));
        }
        if let Data::Candle(parts) = &self.data {
            return candle_matmul(parts, x, m, k, out);
        }
        // Each task writes the products of its weight rows (whole groups of eight) for every
        // activation row, row-major by weight row; then they are laid out by activation row.
        let groups = n.div_ceil(ROWS);
        let groups_per_task = groups.div_ceil(team.size() * 4).max(2);
        let mut by_weight_row = vec![0f32; groups * ROWS * m];
        let task_len = groups_per_task * ROWS * m;
        let per_row = k / BLOCK;
        // Activations quantized once per product, split over the team from two rows on (one row:
        // a parallel section would cost more than it saves).
        let quantized = || -> Vec<BlockQ8_1> {
            let mut xq = vec![BlockQ8_1 { qs: [0; BLOCK], d: 0.0, s: 0.0, sum: 0 }; m * per_row];
            let rows_per_task = match m {
                0..2 => m.max(1),
                2..32 => m.div_ceil(team.size()),
                _ => m.div_ceil(team.size() * 2),
            };
            let quantize = |i: usize, blocks: &mut [BlockQ8_1]| {
                for (j, row) in blocks.chunks_exact_mut(per_row).enumerate() {
                    let r = i * rows_per_task + j;
                    row.iter_mut()
                        .zip(x[r * k..(r + 1) * k].chunks_exact(BLOCK))
                        .for_each(|(b, xs)| *b = BlockQ8_1::quantize(xs));
                }
            };
            if rows_per_task < m {
                team.for_each_chunk(&mut xq, rows_per_task * per_row, quantize)
            } else {
                quantize(0, &mut xq)
            }
            xq
        };
        match &self.data {
            Data::Q4_1(w) => {
                let xq = quantized();
                team.for_each_chunk(&mut by_weight_row, task_len, |t, out| {
                    for (g, out) in out.chunks_exact_mut(ROWS * m).enumerate() {
                        packed::q4_1_times(&w[(t * groups_per_task + g) * per_row..][..per_row], &xq, m, out);
                    }
                });
            }
            Data::Q8_0(w) => {
                let xq = quantized();
                team.for_each_chunk(&mut by_weight_row, task_len, |t, out| {
                    for (g, out) in out.chunks_exact_mut(ROWS * m).enumerate() {
                        packed::q8_0_times(&w[(t * groups_per_task + g) * per_row..][..per_row], &xq, m, out);
                    }
                });
            }
            Data::F32(w) => team.for_each_chunk(&mut by_weight_row, task_len, |t, out| {
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

/// The tensors' blocks, read one after the other from the file into one buffer.
fn read_blocks<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    shapes: &[(usize, usize, GgmlDType, u64)],
    block_bytes: usize,
) -> Result<Vec<u8>> {
    let size = |&(rows, cols, _, _): &(usize, usize, GgmlDType, u64)| rows * cols / BLOCK * block_bytes;
    let mut bytes = vec![0u8; shapes.iter().map(size).sum()];
    let mut at = 0;
    for shape in shapes {
        reader.seek(SeekFrom::Start(ct.tensor_data_offset + shape.3)).map_err(|e| e.to_string())?;
        reader
            .read_exact(&mut bytes[at..at + size(shape)])
            .map_err(|e| format!("the model file ends inside a tensor: {e}"))?;
        at += size(shape);
    }
    Ok(bytes)
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
