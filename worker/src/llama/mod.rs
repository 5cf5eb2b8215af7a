//! rbee's forward pass for GGUF llama models, on rbee's kernels and its own buffers. One pass
//! advances a batch of sequences: each brings its next tokens (a whole prompt, or one token while
//! decoding) and its own KV cache; the products run once for all their rows together, attention per
//! sequence. A row's result depends only on its own sequence, never on what else is in the batch.
//!
//! Standard llama: RMSNorm, interleaved RoPE (GGUF's layout), grouped-query attention, SwiGLU
//! feed-forward, the output head tied to the embeddings when the file has none.

mod cache;
mod team;
mod weights;

use std::io::{Read, Seek};

use candle_core::Device;
use candle_core::quantized::gguf_file;

use crate::kernels::float::{attend, silu_times};

/// The longest context served, whatever the model was trained for.
pub const MAX_CONTEXT: usize = 4096;

pub use cache::KvCache;
pub use team::Team;
pub use weights::{Kernels, Result, Weight};

struct Layer {
    attn_norm: Vec<f32>,
    /// Queries, keys and values stacked: one product per layer.
    qkv: Weight,
    output: Weight,
    ffn_norm: Vec<f32>,
    /// Gate and up projections stacked.
    gate_up: Weight,
    down: Weight,
}

pub struct Llama {
    embeddings: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// None: the head is the embedding matrix.
    head: Option<Weight>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    eps: f32,
    /// cos and sin of every position's RoPE angles: `[position][rope dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    rope_pairs: usize,
    context: usize,
    /// The threads every product and the attention are split over.
    team: Team,
}

/// One sequence's part of a batch: its next tokens, at the positions after those in its cache.
pub struct Step<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

impl Llama {
    /// The model of a GGUF file, multiplying with `kernels` on `threads` threads.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        kernels: Kernels,
        threads: usize,
    ) -> Result<Llama> {
        let meta = |key: &str| ct.metadata.get(key).ok_or_else(|| format!("GGUF metadata {key} missing"));
        let number = |key: &str| meta(key)?.to_u32().map(|v| v as usize).map_err(|e| e.to_string());
        let heads = number("llama.attention.head_count")?;
        let kv_heads = number("llama.attention.head_count_kv").unwrap_or(heads);
        let blocks = number("llama.block_count")?;
        let width = number("llama.embedding_length")?;
        // Positions beyond what the engine serves get no RoPE table (131072-position models would
        // spend 67 MB on it).
        let context = number("llama.context_length")?.min(MAX_CONTEXT);
        let eps = meta("llama.attention.layer_norm_rms_epsilon")?.to_f32().map_err(|e| e.to_string())?;
        let base = meta("llama.rope.freq_base").and_then(|v| v.to_f32().map_err(|e| e.to_string())).unwrap_or(10_000.0);
        if heads == 0 || kv_heads == 0 || !width.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
            return Err(format!("unusable attention shape: {heads} heads, {kv_heads} kv heads, width {width}"));
        }
        let head_dim = width / heads;
        let rope_dim = number("llama.rope.dimension_count").unwrap_or(head_dim).min(head_dim);
        let device = Device::Cpu;
        let vector = |reader: &mut R, name: &str| {
            ct.tensor(reader, name, &device)
                .and_then(|qt| qt.dequantize(&device)?.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| format!("{name}: {e}"))
        };
        let norm = vector(reader, "output_norm.weight")?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let attn_norm = vector(reader, &format!("blk.{i}.attn_norm.weight"))?;
            let ffn_norm = vector(reader, &format!("blk.{i}.ffn_norm.weight"))?;
            let names = |parts: &[&str]| parts.iter().map(|part| format!("blk.{i}.{part}.weight")).collect::<Vec<_>>();
            let qkv = Weight::read(ct, reader, &names(&["attn_q", "attn_k", "attn_v"]), kernels)?;
            let output = Weight::read(ct, reader, &names(&["attn_output"]), kernels)?;
            let gate_up = Weight::read(ct, reader, &names(&["ffn_gate", "ffn_up"]), kernels)?;
            let down = Weight::read(ct, reader, &names(&["ffn_down"]), kernels)?;
            layers.push(Layer { attn_norm, qkv, output, ffn_norm, gate_up, down });
        }
        let embeddings = Weight::read_with_rows(ct, reader, "token_embd.weight", kernels)?;
        let head = match ct.tensor_infos.contains_key("output.weight") {
            true => Some(Weight::read(ct, reader, &["output.weight".into()], kernels)?),
            false => None,
        };
        let ffn = layers.first().map_or(0, |l| l.gate_up.rows() / 2);
        if embeddings.cols() != width
            || layers.iter().any(|l| l.qkv.rows() != width + 2 * kv_heads * head_dim || l.down.cols() != ffn)
        {
            return Err("the tensors' shapes do not match the model's metadata".into());
        }
        // RoPE angles: position * base^(-2i / rope_dim).
        let rope_pairs = rope_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(context * rope_pairs), Vec::with_capacity(context * rope_pairs));
        for position in 0..context {
            for i in 0..rope_pairs {
                let angle = position as f32 / base.powf(2.0 * i as f32 / rope_dim as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let team = Team::new(threads).map_err(|e| format!("cannot start the inference threads: {e}"))?;
        Ok(Llama {
            embeddings,
            layers,
            norm,
            head,
            heads,
            kv_heads,
            head_dim,
            ffn,
            eps,
            cos,
            sin,
            rope_pairs,
            context,
            team,
        })
    }

    /// The longest sequence this engine runs: the trained context, at most [`MAX_CONTEXT`].
    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn vocab_size(&self) -> usize {
        self.embeddings.rows()
    }

    /// An empty cache with room for `positions` positions.
    pub fn new_cache(&self, positions: usize) -> KvCache {
        KvCache::new(self.layers.len(), self.kv_heads * self.head_dim, positions.min(self.context))
    }

    /// Advances every sequence of the batch by its tokens (stored in its cache) and returns, per
    /// sequence, the logits after its last token.
    pub fn forward(&self, batch: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        self.team.pass(|| self.forward_pass(batch))
    }

    fn forward_pass(&self, batch: &mut [Step]) -> Result<Vec<Vec<f32>>> {
        let width = self.heads * self.head_dim;
        let kv_width = self.kv_heads * self.head_dim;
        // Every row of the batch: which sequence, at which position.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (s, step) in batch.iter().enumerate() {
            let start = step.cache.len();
            if step.tokens.is_empty() || start + step.tokens.len() > self.context {
                return Err(format!(
                    "positions {start}..{} are outside the model's context of {}",
                    start + step.tokens.len(),
                    self.context
                ));
            }
            if let Some(t) = step.tokens.iter().find(|&&t| t as usize >= self.vocab_size()) {
                return Err(format!("token {t} is outside the vocabulary of {}", self.vocab_size()));
            }
            rows.extend((0..step.tokens.len()).map(|j| (s, start + j)));
        }
        let m = rows.len();
        let mut x = vec![0f32; m * width];
        for (row, token) in x.chunks_exact_mut(width).zip(batch.iter().flat_map(|s| s.tokens)) {
            self.embeddings.row(*token as usize, row)?;
        }
        let mut h = vec![0f32; m * width];
        let mut qkv = vec![0f32; m * (width + 2 * kv_width)];
        let mut attended = vec![0f32; m * width];
        let mut projected = vec![0f32; m * width];
        let mut gate_up = vec![0f32; m * 2 * self.ffn];
        let mut activated = vec![0f32; m * self.ffn];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, self.eps, &mut h);
            layer.qkv.matmul(&self.team, &h, m, &mut qkv)?;
            for (row, &(s, position)) in qkv.chunks_exact_mut(width + 2 * kv_width).zip(&rows) {
                let (q, kv) = row.split_at_mut(width);
                let (k, v) = kv.split_at_mut(kv_width);
                self.rope(q, position);
                self.rope(k, position);
                batch[s].cache.push(l, k, v);
            }
            self.attention(batch, l, &rows, &qkv, &mut attended);
            layer.output.matmul(&self.team, &attended, m, &mut projected)?;
            add(&mut x, &projected);
            rms_norm(&x, &layer.ffn_norm, self.eps, &mut h);
            layer.gate_up.matmul(&self.team, &h, m, &mut gate_up)?;
            self.swiglu(&gate_up, &mut activated);
            layer.down.matmul(&self.team, &activated, m, &mut projected)?;
            add(&mut x, &projected);
        }
        // The head, for each sequence's last row only.
        let mut last = Vec::with_capacity(batch.len() * width);
        let mut end = 0;
        for step in batch.iter() {
            end += step.tokens.len();
            last.extend_from_slice(&x[(end - 1) * width..end * width]);
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &self.norm, self.eps, &mut normed);
        let head = self.head.as_ref().unwrap_or(&self.embeddings);
        let mut logits = vec![0f32; batch.len() * head.rows()];
        head.matmul(&self.team, &normed, batch.len(), &mut logits)?;
        Ok(logits.chunks_exact(head.rows()).map(<[f32]>::to_vec).collect())
    }

    /// `silu(gate) * up` for every row (`gate_up` rows hold the gate, then up), split over the team.
    fn swiglu(&self, gate_up: &[f32], out: &mut [f32]) {
        let ffn = self.ffn;
        // Pieces of a row (whole rows when the width does not split evenly).
        let piece = [512, 256, 128].into_iter().find(|p| ffn.is_multiple_of(*p)).unwrap_or(ffn);
        self.team.for_each_chunk(out, piece, |i, out| {
            let (row, col) = ((i * piece) / ffn, (i * piece) % ffn);
            let gate = &gate_up[row * 2 * ffn + col..][..out.len()];
            let up = &gate_up[row * 2 * ffn + ffn + col..][..out.len()];
            silu_times(gate, up, out);
        });
    }

    /// Rotates each head's interleaved pairs by the position's angles.
    fn rope(&self, heads: &mut [f32], position: usize) {
        let angles = position * self.rope_pairs..(position + 1) * self.rope_pairs;
        let (cos, sin) = (&self.cos[angles.clone()], &self.sin[angles]);
        for head in heads.chunks_exact_mut(self.head_dim) {
            for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }

    /// Causal attention of every row's query heads over its own sequence's cache, up to its
    /// position; one task per row and query head.
    fn attention(&self, batch: &[Step], layer: usize, rows: &[(usize, usize)], qkv: &[f32], out: &mut [f32]) {
        let (head_dim, kv_width) = (self.head_dim, self.kv_heads * self.head_dim);
        let qkv_width = qkv.len() / rows.len();
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.team.for_each_chunk(out, head_dim, |i, out| {
            let (row, head) = (i / self.heads, i % self.heads);
            let (s, position) = rows[row];
            let q = &qkv[row * qkv_width + head * head_dim..][..head_dim];
            let (keys, values) = batch[s].cache.layer(layer);
            let kv_offset = (head / group) * head_dim;
            attend(q, &keys[kv_offset..], &values[kv_offset..], kv_width, position + 1, scale, out);
        });
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
