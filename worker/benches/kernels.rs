//! Q4_1 products at the default model's shapes on one thread (rbee's packed kernel, for 1, 4 and
//! 64 activation rows), and whole forward passes on the default model: candle's quantized llama vs rbee's
//! forward pass, on every core. Medians of repeated runs.
//! `cargo bench -p rbee-worker --bench kernels`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use rbee_worker::kernels::noise;
use rbee_worker::kernels::packed;
use rbee_worker::kernels::q4_1::{self, BlockQ4_1, BlockQ8_1};
use rbee_worker::llama::{Kernels, Llama, Step};

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
    println!("Q4_1 x Q8_1 products, one thread; SIMD path: {:?}", rbee_worker::kernels::simd());
    for (n, k, what) in
        [(3072, 576, "ffn gate+up 576->3072"), (576, 1536, "ffn down 1536->576"), (960, 576, "attn qkv 576->960")]
    {
        let w = Tensor::from_vec(noise(n * k, 1), (n, k), &Device::Cpu)?;
        let bytes = QTensor::quantize(&w, GgmlDType::Q4_1)?.data()?.to_vec();
        let blocks: Vec<BlockQ4_1> = bytes.chunks_exact(BlockQ4_1::BYTES).map(BlockQ4_1::read).collect();
        let per_row = k / 32;
        let packed = packed::pack_q4_1(|i| blocks[i], n, per_row);
        for m in [1usize, 4, 64] {
            let x: Vec<BlockQ8_1> = q4_1::quantize_row(&noise(m * k, 2));
            let mut out = vec![0f32; n * m];
            let us = median_us(
                || {
                    for (group, out) in packed.chunks_exact(per_row).zip(out.chunks_exact_mut(packed::ROWS * m)) {
                        packed::q4_1_times(group, &x, m, out);
                    }
                },
                if m == 64 { 31 } else { 201 },
            );
            let gmacs = (n * k * m) as f64 / us / 1e3;
            println!("  {what:<22} {m:>2} row(s): {us:>8.1} us  ({gmacs:.1} GMAC/s)");
        }
    }
    forward_passes()
}

/// Prompt tok/s on a chat prompt and decode tok/s over 64 greedy steps, one sequence.
fn forward_passes() -> candle_core::Result<()> {
    let path = std::env::var_os("RBEE_TEST_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap())
            .join(".cache/rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    let question = rbee_bus::frames::ChatMessage {
        role: "user".into(),
        content: "What is the capital of France? Answer in one sentence.".into(),
    };
    let prompt = rbee_worker::engine::Engine::load(&path)
        .expect("model")
        .prompter()
        .prepare(&[question], Some(64))
        .expect("fits")
        .prompt;
    let device = Device::Cpu;
    let argmax = |l: &[f32]| {
        l.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
    };
    println!("forward passes, default model, all cores ({} prompt tokens, 64 decode steps):", prompt.len());
    for _round in 0..2 {
        let mut file = std::fs::File::open(&path)?;
        let mut candle = ModelWeights::from_gguf(gguf_file::Content::read(&mut file)?, &mut file, &device)?;
        let t0 = Instant::now();
        let logits = candle
            .forward(&Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?, 0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let prompt_s = t0.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let t0 = Instant::now();
        for step in 0..64 {
            next = argmax(
                &candle
                    .forward(&Tensor::new(&[next], &device)?.unsqueeze(0)?, prompt.len() + step)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        println!(
            "  candle quantized_llama  prompt {:>6.1} tok/s   decode {:>6.1} tok/s",
            prompt.len() as f64 / prompt_s,
            64.0 / t0.elapsed().as_secs_f64()
        );

        let mut file = std::fs::File::open(&path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let model = Llama::from_gguf(&content, &mut file, Kernels::Quantized, rbee_worker::config::physical_cores())
            .expect("model");
        let mut cache = model.new_cache(prompt.len() + 64);
        let t0 = Instant::now();
        let logits = model.forward(&mut [Step { cache: &mut cache, tokens: &prompt }]).expect("forward").remove(0);
        let prompt_s = t0.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let t0 = Instant::now();
        for _ in 0..64 {
            next = argmax(&model.forward(&mut [Step { cache: &mut cache, tokens: &[next] }]).expect("forward")[0]);
        }
        println!(
            "  rbee forward pass        prompt {:>6.1} tok/s   decode {:>6.1} tok/s",
            prompt.len() as f64 / prompt_s,
            64.0 / t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
