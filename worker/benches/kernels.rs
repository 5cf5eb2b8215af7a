//! Q4_1 products at the default model's shapes, on the very same quantized weights: rbee's kernel on
//! one thread; and candle's `QMatMul` on its own Q4_1 storage vs on rbee's (`FastQ4_1`), both using
//! every core, for one token (decode) and for 64 (a prompt). Medians of repeated runs.
//! `cargo bench -p rbee-worker --bench kernels`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rbee_worker::kernels::candle_q4_1::FastQ4_1;
use rbee_worker::kernels::q4_1;

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

fn median_us(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut xs: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> candle_core::Result<()> {
    println!("Q4_1 x Q8_1 products; AVX2 path: {}; {} cores", q4_1::avx2(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    for (n, k, what) in [(1536, 576, "ffn up/gate 576->1536"), (576, 1536, "ffn down 1536->576"), (576, 576, "attn q/o 576->576")] {
        let w = Tensor::from_vec(noise(n * k, 1), (n, k), &Device::Cpu)?;
        let qt = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let fast = FastQ4_1::from_bytes(&qt.data()?)?;
        let blocks = fast.0.clone();
        let (candle, rbee) = (QMatMul::from_qtensor(qt)?, QMatMul::from_qtensor(fast.into_qtensor((n, k))?)?);
        let x = noise(k, 2);
        let mut y = vec![0f32; n];
        let kernel = median_us(|| q4_1::matvec(&blocks, n, k, &x, &mut y), 201);
        println!("  {what:<22} kernel, 1 thread, 1 token: {kernel:>7.1} us");
        for m in [1usize, 64] {
            let xs = Tensor::from_vec(noise(m * k, 3), (m, k), &Device::Cpu)?;
            let runs = if m == 1 { 201 } else { 31 };
            // rbee first: candle's worker threads may keep spinning for a while after its calls.
            let ours = median_us(|| drop(rbee.forward(&xs).unwrap()), runs);
            let theirs = median_us(|| drop(candle.forward(&xs).unwrap()), runs);
            println!("  {what:<22} QMatMul, {m:>2} token(s): candle {theirs:>8.1} us   rbee {ours:>8.1} us   speedup {:>5.2}x", theirs / ours);
        }
    }
    Ok(())
}
