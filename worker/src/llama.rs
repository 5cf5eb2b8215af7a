//! rbee's own forward pass for GGUF llama models, so rbee's kernels do the products: every Q4_1
//! weight runs on [`FastQ4_1`]; other formats (Q8_0 embeddings, f32 norms) keep candle's storage.
//! Standard llama: RMSNorm, interleaved RoPE (GGUF's layout), grouped-query attention with a KV
//! cache, SwiGLU feed-forward, the output head tied to the embeddings when the file has none.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::kernels::candle_q4_1::FastQ4_1;

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    /// Keys and values of the positions seen so far: [1, kv heads, positions, head dim].
    cache: Option<(Tensor, Tensor)>,
}

pub struct Llama {
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    cos: Tensor,
    sin: Tensor,
}

/// Whose kernels multiply by the Q4_1 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Rbee,
    Candle,
    /// Weights dequantized to f32 and multiplied without quantizing activations: the reference.
    F32,
}

/// A weight for products: Q4_1 on rbee's kernel (unless told otherwise), anything else as candle has it.
fn product_weight(qt: QTensor, kernels: Kernels) -> Result<QMatMul> {
    if qt.dtype() == GgmlDType::Q4_1 && kernels == Kernels::F32 {
        return Ok(QMatMul::Tensor(qt.dequantize(&Device::Cpu)?));
    }
    if qt.dtype() == GgmlDType::Q4_1 && kernels == Kernels::Rbee {
        let shape = qt.shape().clone();
        return QMatMul::from_qtensor(FastQ4_1::from_bytes(&qt.data()?)?.into_qtensor(shape)?);
    }
    QMatMul::from_qtensor(qt)
}

impl Llama {
    pub fn from_gguf<R: Read + Seek>(ct: &gguf_file::Content, reader: &mut R, device: &Device, kernels: Kernels) -> Result<Llama> {
        let meta = |key: &str| ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata {key} missing")));
        let heads = meta("llama.attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = meta("llama.block_count")?.to_u32()? as usize;
        let width = meta("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = meta("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = meta("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let base = meta("llama.rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        let context = meta("llama.context_length")?.to_u32()? as usize;
        let mut tensor = |name: &str| ct.tensor(reader, name, device);
        let embedded = tensor("token_embd.weight")?;
        let embeddings = embedded.dequantize(device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = match tensor("output.weight") {
            Ok(qt) => product_weight(qt, kernels)?,
            Err(_) => QMatMul::from_qtensor(embedded)?,
        };
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut weight = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            layers.push(Layer {
                attn_norm: weight("attn_norm")?.dequantize(device)?,
                wq: product_weight(weight("attn_q")?, kernels)?,
                wk: product_weight(weight("attn_k")?, kernels)?,
                wv: product_weight(weight("attn_v")?, kernels)?,
                wo: product_weight(weight("attn_output")?, kernels)?,
                ffn_norm: weight("ffn_norm")?.dequantize(device)?,
                gate: product_weight(weight("ffn_gate")?, kernels)?,
                up: product_weight(weight("ffn_up")?, kernels)?,
                down: product_weight(weight("ffn_down")?, kernels)?,
                cache: None,
            });
        }
        // RoPE angles for every position: θ_i = base^(-2i / rope_dim).
        let inverse: Vec<f32> = (0..rope_dim / 2).map(|i| 1.0 / base.powf(2.0 * i as f32 / rope_dim as f32)).collect();
        let inverse = Tensor::from_vec(inverse, (1, rope_dim / 2), device)?;
        let positions = Tensor::arange(0u32, context as u32, device)?.to_dtype(DType::F32)?.reshape((context, 1))?;
        let angles = positions.matmul(&inverse)?;
        Ok(Llama { embeddings, layers, norm, output, heads, kv_heads, head_dim: width / heads, eps, cos: angles.cos()?, sin: angles.sin()? })
    }

    /// Forgets every position (a new sequence starts).
    pub fn clear_cache(&mut self) {
        for layer in &mut self.layers {
            layer.cache = None;
        }
    }

    /// Logits ([vocab]) for the last of `tokens` ([1, n]), which sit at positions
    /// `start..start + n`. Start 0 begins a new sequence (the cache is cleared).
    pub fn forward(&mut self, tokens: &Tensor, start: usize) -> Result<Tensor> {
        let (_, n) = tokens.dims2()?;
        if start == 0 {
            self.clear_cache();
        }
        if n == 0 || start + n > self.cos.dim(0)? {
            candle_core::bail!("positions {start}..{} are outside the model's context of {}", start + n, self.cos.dim(0)?)
        }
        let mut x = self.embeddings.index_select(&tokens.flatten_all()?, 0)?.unsqueeze(0)?;
        let (cos, sin) = (self.cos.narrow(0, start, n)?, self.sin.narrow(0, start, n)?);
        let (heads, kv_heads, head_dim, eps) = (self.heads, self.kv_heads, self.head_dim, self.eps);
        let group = heads / kv_heads;
        // One mask row per (query head of a group, position).
        let mask = (n > 1).then(|| causal_mask(n, start, x.device())?.repeat((group, 1))).transpose()?;
        for layer in &mut self.layers {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps as f32)?;
            let split = |t: Tensor, count: usize| t.reshape((1, n, count, head_dim))?.transpose(1, 2)?.contiguous();
            let q = candle_nn::rotary_emb::rope_i(&split(layer.wq.forward(&h)?, heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&split(layer.wk.forward(&h)?, kv_heads)?, &cos, &sin)?;
            let v = split(layer.wv.forward(&h)?, kv_heads)?;
            let (k, v) = match layer.cache.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            layer.cache = Some((k.clone(), v.clone()));
            // Grouped-query attention without copying keys and values per head: the query heads
            // sharing a kv head are stacked as rows ([1, kv heads, group * n, head dim]).
            let q = q.reshape((1, kv_heads, group * n, head_dim))?;
            let mut scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
            if let Some(mask) = &mask {
                scores = scores.broadcast_add(mask)?;
            }
            let attended = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let attended = attended.reshape((1, heads, n, head_dim))?.transpose(1, 2)?.reshape((1, n, heads * head_dim))?;
            x = (x + layer.wo.forward(&attended)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps as f32)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&gated)?)?;
        }
        let last = x.narrow(1, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps as f32)?;
        self.output.forward(&last)?.squeeze(0)?.squeeze(0)
    }
}

/// 0 where a position may attend, -inf where it would look ahead: [n, start + n].
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n).flat_map(|i| (0..start + n).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (n, start + n), device)
}
