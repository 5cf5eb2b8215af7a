//! The Q4_1 x Q8_1 matrix-vector product at the default model's shapes: rbee's kernel (AVX2 when the
//! CPU has it) vs candle's Q4_1 `QMatMul` on the very same quantized weights, one thread each,
//! medians of repeated runs. `cargo bench -p rbee-worker --bench kernels`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rbee_worker::kernels::q4_1::{self, BlockQ4_1};

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Blocks read from GGUF-layout bytes.
fn blocks(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(20)
        .map(|b| BlockQ4_1 {
            d: f16::from_bits(u16::from_le_bytes([b[0], b[1]])),
            m: f16::from_bits(u16::from_le_bytes([b[2], b[3]])),
            qs: b[4..20].try_into().unwrap(),
        })
        .collect()
}

fn main() -> candle_core::Result<()> {
    println!("Q4_1 matvec, one thread; AVX2 path: {}", q4_1::avx2());
    for (rows, cols, what) in [(1536, 576, "ffn up/gate 576->1536"), (576, 1536, "ffn down 1536->576"), (49152, 576, "lm head 576->49152")] {
        let w = Tensor::from_vec(noise(rows * cols, 1), (rows, cols), &Device::Cpu)?;
        let qt = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let ours = blocks(&qt.data()?);
        let theirs = QMatMul::from_qtensor(qt)?;
        let x = noise(cols, 2);
        let xt = Tensor::from_vec(x.clone(), (1, cols), &Device::Cpu)?;
        let mut y = vec![0f32; rows];
        let runs = if rows > 10_000 { 15 } else { 101 };
        let (mut t_ours, mut t_candle) = (Vec::new(), Vec::new());
        let mut candle_y = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            q4_1::matvec(&ours, rows, cols, &x, &mut y);
            t_ours.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            candle_y = theirs.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
            t_candle.push(t0.elapsed().as_secs_f64());
        }
        let max_diff = y.iter().zip(&candle_y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let (ours, candle) = (median(t_ours), median(t_candle));
        println!(
            "  {what:<24} rbee {:>8.1} us   candle {:>8.1} us   speedup {:>5.2}x   max |diff| {max_diff:.2e}",
            ours * 1e6,
            candle * 1e6,
            candle / ours
        );
    }
    Ok(())
}
