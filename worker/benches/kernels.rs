//! Q4_1 products at the default model's shapes, on the very same quantized weights: rbee's kernel on
//! one thread; and candle's `QMatMul` on its own Q4_1 storage vs on rbee's (`FastQ4_1`), both using
//! every core, for one token (decode) and for 64 (a prompt). Medians of repeated runs.
//! `cargo bench -p rbee-worker --bench kernels`

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rbee_worker::kernels::candle_q4_1::FastQ4_1;
use rbee_worker::kernels::noise;
use rbee_worker::kernels::q4_1;

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
    forward_passes()
}

/// Whole forward passes on the default model: candle's quantized llama vs rbee's forward pass with
/// candle's and with rbee's Q4_1 kernels. Prompt tok/s on a chat prompt, decode tok/s over 64 steps.
fn forward_passes() -> candle_core::Result<()> {
    use candle_core::quantized::gguf_file;
    use candle_transformers::models::quantized_llama::ModelWeights;
    use rbee_worker::llama::{Kernels, Llama};

    let path = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let question = rbee_bus::frames::ChatMessage { role: "user".into(), content: "What is the capital of France? Answer in one sentence.".into() };
    let prompt = rbee_worker::engine::Engine::load(&path).expect("model").prompter().prepare(&[question], Some(64)).expect("fits").prompt;
    let device = Device::Cpu;
    let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
    let measure = |name: &str, forward: &mut dyn FnMut(&Tensor, usize) -> candle_core::Result<Tensor>| -> candle_core::Result<()> {
        let t0 = Instant::now();
        let logits = forward(&input, 0)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        let mut next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        let t0 = Instant::now();
        for step in 0..64 {
            let logits = forward(&Tensor::new(&[next], &device)?.unsqueeze(0)?, prompt.len() + step)?;
            next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        }
        let decode = 64.0 / t0.elapsed().as_secs_f64();
        println!("  {name:<34} prompt {:>6.1} tok/s ({} tokens)   decode {decode:>6.1} tok/s", prompt.len() as f64 / prompt_secs, prompt.len());
        Ok(())
    };
    println!("forward passes, default model, all cores:");
    for round in 0..2 {
        if round == 1 {
            println!("  (again)");
        }
        let mut file = std::fs::File::open(&path)?;
        let mut candle = ModelWeights::from_gguf(gguf_file::Content::read(&mut file)?, &mut file, &device)?;
        measure("candle quantized_llama", &mut |x, p| candle.forward(x, p))?;
        for (kernels, name) in [(Kernels::Candle, "rbee forward, candle's Q4_1 kernel"), (Kernels::Rbee, "rbee forward, rbee's Q4_1 kernel")] {
            let mut file = std::fs::File::open(&path)?;
            let content = gguf_file::Content::read(&mut file)?;
            let mut model = Llama::from_gguf(&content, &mut file, &device, kernels)?;
            measure(name, &mut |x, p| model.forward(x, p))?;
        }
    }
    Ok(())
}
