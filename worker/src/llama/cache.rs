//! One sequence's keys and values: per layer, one row of `kv heads * head dim` floats per position.
//! Room is reserved for the positions the sequence asked for; pages are only touched as positions
//! are written, and everything is freed when the sequence (its cache) is dropped.

pub struct KvCache {
    width: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
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
        self.keys[layer].extend_from_slice(key);
        self.values[layer].extend_from_slice(value);
    }

    /// Keys and values of one layer: `[positions][width]`.
    pub(super) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Bytes of keys and values reserved.
    pub fn reserved_bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.capacity() * 4).sum()
    }
}
