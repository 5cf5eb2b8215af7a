//! One sequence's keys and values: per layer, one row of `kv heads * head dim` half-precision floats
//! per position (as llama.cpp keeps them: half the memory and the reading of f32). Room is reserved
//! for the positions the sequence asked for; pages are only touched as positions are written, and
//! everything is freed when the sequence (its cache) is dropped.

use half::f16;
use half::slice::HalfFloatSliceExt;

pub struct KvCache {
    width: usize,
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
}

impl KvCache {
    pub fn new(layers: usize, width: usize, positions: usize) -> KvCache {
        let room = || (0..layers).map(|_| Vec::with_capacity(positions * width)).collect();
        KvCache { width, keys: room(), values: room() }
    }

    /// Positions stored so far (the next token's position).
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.len() / self.width)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        for (store, row) in [(&mut self.keys[layer], key), (&mut self.values[layer], value)] {
            let at = store.len();
            store.resize(at + row.len(), f16::ZERO);
            store[at..].convert_from_f32_slice(row);
        }
    }

    /// Keys and values of one layer: `[positions][width]`.
    pub(super) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Bytes of keys and values reserved.
    pub fn reserved_bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.capacity() * 2).sum()
    }
}
