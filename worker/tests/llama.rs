//! rbee's forward pass (with rbee's Q4_1 kernel) against candle's quantized llama on the real model:
//! the same logits up to the activations' quantization, and the same greedy tokens.

use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use rbee_bus::frames::ChatMessage;
use rbee_worker::engine::Engine;
use rbee_worker::llama::{Kernels, Llama};

fn model_path() -> PathBuf {
    let cache = std::env::var_os("RBEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rbee/models"));
    let path = std::env::var_os("RBEE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| cache.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(path.is_file(), "{} missing: run `rbee setup` (scripts/test does)", path.display());
    path
}

fn argmax(logits: &Tensor) -> u32 {
    logits.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

/// Prompt logits and 16 greedy tokens of rbee's forward pass with `kernels`.
fn run(path: &std::path::Path, prompt: &[u32], kernels: Kernels) -> (Vec<f32>, Vec<u32>) {
    let device = Device::Cpu;
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut model = Llama::from_gguf(&content, &mut file, &device, kernels).unwrap();
    let logits = model.forward(&Tensor::new(prompt, &device).unwrap().unsqueeze(0).unwrap(), 0).unwrap();
    let mut tokens = vec![argmax(&logits)];
    for step in 0..15 {
        let input = Tensor::new(&[*tokens.last().unwrap()], &device).unwrap().unsqueeze(0).unwrap();
        tokens.push(argmax(&model.forward(&input, prompt.len() + step).unwrap()));
    }
    (logits.to_vec1().unwrap(), tokens)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn prompt(path: &std::path::Path) -> Vec<u32> {
    let question = ChatMessage { role: "user".into(), content: "What is the capital of France? Answer in one sentence.".into() };
    Engine::load(path).expect("model loads").prompter().prepare(&[question], Some(16)).expect("fits").prompt
}

/// The forward pass itself, with candle's kernels, is candle's model: same logits, same tokens.
#[test]
fn rbees_forward_pass_with_candles_kernels_is_candles_model() {
    let path = model_path();
    let prompt = prompt(&path);
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut candle = ModelWeights::from_gguf(content, &mut file, &device).unwrap();
    let expected = candle.forward(&Tensor::new(prompt.as_slice(), &device).unwrap().unsqueeze(0).unwrap(), 0).unwrap().squeeze(0).unwrap();
    let mut tokens = vec![argmax(&expected)];
    for step in 0..15 {
        let input = Tensor::new(&[*tokens.last().unwrap()], &device).unwrap().unsqueeze(0).unwrap();
        tokens.push(argmax(&candle.forward(&input, prompt.len() + step).unwrap().squeeze(0).unwrap()));
    }
    let (logits, ours) = run(&path, &prompt, Kernels::Candle);
    assert!(max_diff(&logits, &expected.to_vec1::<f32>().unwrap()) < 1e-3, "the same products must give the same logits");
    assert_eq!(ours, tokens);
}

/// With rbee's kernels the logits stay within the error 8-bit activations bring (measured: rbee
/// 1.41, candle 1.11 at most, on logits up to ~30, against dequantized f32 weights), and the greedy
/// answer is the reference's.
#[test]
fn rbees_kernels_stay_within_the_activation_quantization_error() {
    let path = model_path();
    let prompt = prompt(&path);
    let (reference, reference_tokens) = run(&path, &prompt, Kernels::F32);
    let (logits, tokens) = run(&path, &prompt, Kernels::Rbee);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_diff(&logits, &reference);
    assert!(diff <= 0.06 * scale, "logits differ from the f32 reference by {diff} (largest {scale})");
    assert_eq!(tokens, reference_tokens, "greedy tokens");
}
