//! rbee's forward pass on the real model (SmolLM2-135M-Instruct Q4_1): against candle's quantized
//! llama and an f32 reference, the known greedy token ids, and rows that never depend on the batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use rbee_bus::frames::{ChatMessage, Sampling};
use rbee_worker::engine::{Engine, Output};
use rbee_worker::llama::{Kernels, Llama, Step};

fn model_path() -> PathBuf {
    let cache = std::env::var_os("RBEE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rbee/models"));
    let path = std::env::var_os("RBEE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(path.is_file(), "{} missing: run `rbee setup` (scripts/test does)", path.display());
    path
}

fn load(path: &Path, kernels: Kernels) -> Llama {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    Llama::from_gguf(&content, &mut file, kernels, 2).unwrap()
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
        as u32
}

/// Prompt logits and 16 greedy tokens, the sequence alone.
fn greedy(model: &Llama, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let mut cache = model.new_cache(prompt.len() + 16);
    let logits = model.forward(&mut [Step { cache: &mut cache, tokens: prompt }]).unwrap().remove(0);
    let mut tokens = vec![argmax(&logits)];
    for _ in 0..15 {
        let next = [*tokens.last().unwrap()];
        tokens.push(argmax(&model.forward(&mut [Step { cache: &mut cache, tokens: &next }]).unwrap()[0]));
    }
    (logits, tokens)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: text.into() }]
}

fn prompt(path: &Path, text: &str) -> Vec<u32> {
    Engine::load(path).expect("model loads").prompter().prepare(&user(text), Some(16)).expect("fits").prompt
}

const FRANCE: &str = "What is the capital of France? Answer in one sentence.";

/// The f32 reference of rbee's forward pass is the same model as candle's quantized llama (an
/// independent implementation): logits within candle's own activation quantization error, the same
/// greedy tokens.
#[test]
fn the_reference_forward_pass_is_candles_model() {
    let path = model_path();
    let prompt = prompt(&path, FRANCE);
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut candle = ModelWeights::from_gguf(content, &mut file, &device).unwrap();
    let first: Vec<f32> = candle
        .forward(&Tensor::new(prompt.as_slice(), &device).unwrap().unsqueeze(0).unwrap(), 0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut tokens = vec![argmax(&first)];
    for step in 0..15 {
        let input = Tensor::new(&[*tokens.last().unwrap()], &device).unwrap().unsqueeze(0).unwrap();
        tokens.push(argmax(
            &candle.forward(&input, prompt.len() + step).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
        ));
    }
    let (logits, ours) = greedy(&load(&path, Kernels::Reference), &prompt);
    let scale = first.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        max_diff(&logits, &first) <= 0.06 * scale,
        "logits differ from candle's by {} (largest {scale})",
        max_diff(&logits, &first)
    );
    assert_eq!(ours, tokens);
}

/// rbee's quantized kernels stay within the error 8-bit activations bring (measured: at most 1.4
/// on logits up to ~30) and give the reference's greedy tokens — which are the known-good ids.
#[test]
fn the_quantized_kernels_stay_within_the_activation_quantization_error_and_give_the_known_tokens() {
    let path = model_path();
    let prompt = prompt(&path, FRANCE);
    let (reference, reference_tokens) = greedy(&load(&path, Kernels::Reference), &prompt);
    let (logits, tokens) = greedy(&load(&path, Kernels::Quantized), &prompt);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_diff(&logits, &reference);
    assert!(diff <= 0.06 * scale, "logits differ from the f32 reference by {diff} (largest {scale})");
    assert_eq!(tokens, reference_tokens, "greedy tokens");
    assert_eq!(&tokens[..9], &KNOWN_FRANCE[..]);
}

/// "The capital of France is Paris.", the end of the turn and a newline: llama.cpp's greedy ids
/// for the same prompt ids and file (llama-cpp-python 0.3, checked once by hand).
const KNOWN_FRANCE: [u32; 9] = [504, 3575, 282, 4649, 314, 7042, 30, 2, 198];

/// A row's logits are bit for bit the same alone and in a batch with other sequences, whether its
/// prompt is read whole or in pieces.
#[test]
fn a_sequence_gives_the_same_logits_alone_and_batched() {
    let path = model_path();
    let model = load(&path, Kernels::Quantized);
    let prompts = [prompt(&path, FRANCE), prompt(&path, "Write a poem about bees."), prompt(&path, "2+2=")];
    let alone: Vec<(Vec<f32>, Vec<u32>)> = prompts.iter().map(|p| greedy(&model, p)).collect();

    // All three prompts in one pass (the third in two pieces), then decoding side by side.
    let mut caches: Vec<_> = prompts.iter().map(|p| model.new_cache(p.len() + 16)).collect();
    let split = prompts[2].len() / 2;
    let [a, b, c] = caches.get_disjoint_mut([0, 1, 2]).unwrap();
    let first = model
        .forward(&mut [Step { cache: a, tokens: &prompts[0] }, Step { cache: c, tokens: &prompts[2][..split] }])
        .unwrap();
    let second = model
        .forward(&mut [Step { cache: b, tokens: &prompts[1] }, Step { cache: c, tokens: &prompts[2][split..] }])
        .unwrap();
    let prompt_logits = [&first[0], &second[0], &second[1]];
    for (i, logits) in prompt_logits.iter().enumerate() {
        assert!(
            logits.iter().zip(&alone[i].0).all(|(x, y)| x.to_bits() == y.to_bits()),
            "prompt {i}: logits differ when batched"
        );
    }
    let mut tokens: Vec<Vec<u32>> = prompt_logits.iter().map(|l| vec![argmax(l)]).collect();
    for _ in 0..15 {
        let next: Vec<[u32; 1]> = tokens.iter().map(|t| [*t.last().unwrap()]).collect();
        let mut batch: Vec<Step> = caches.iter_mut().zip(&next).map(|(cache, t)| Step { cache, tokens: t }).collect();
        for (t, logits) in tokens.iter_mut().zip(model.forward(&mut batch).unwrap()) {
            t.push(argmax(&logits));
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t, &alone[i].1, "sequence {i}: tokens differ when batched");
    }
}

/// Through the engine: sequences joining and leaving a running batch, with their own sampling
/// settings and limits, produce exactly what each produces alone.
#[test]
fn the_engines_continuous_batching_gives_each_request_what_it_gets_alone() {
    let path = model_path();
    let mut engine = Engine::load(&path).unwrap();
    let prompter = engine.prompter();
    let requests = [
        (FRANCE, Some(16), Sampling::default()),
        (
            "Write a long story about a bee.",
            Some(24),
            Sampling { temperature: Some(0.8), top_p: Some(0.9), top_k: Some(40), seed: Some(7) },
        ),
        ("Name a flower.", Some(3), Sampling { temperature: Some(1.0), top_p: None, top_k: None, seed: Some(1) }),
    ];
    let alone: Vec<(String, u32)> = requests
        .iter()
        .map(|(text, max, sampling)| {
            let prepared = prompter.prepare(&user(text), *max).unwrap();
            let mut out = String::new();
            let g = engine.generate(&prepared, sampling, &AtomicBool::new(false), |t| out.push_str(t)).unwrap();
            (out, g.completion_tokens)
        })
        .collect();

    // The first two start together; the third joins three steps later, while the others decode.
    let mut texts = vec![String::new(); 3];
    let mut done = [None; 3];
    let mut ids = Vec::new();
    for (text, max, sampling) in &requests[..2] {
        ids.push(engine.admit(
            prompter.prepare(&user(text), *max).unwrap(),
            sampling,
            Arc::new(AtomicBool::new(false)),
        ));
    }
    let mut steps = 0;
    while done.iter().any(Option::is_none) {
        if steps == 3 {
            let (text, max, sampling) = &requests[2];
            ids.push(engine.admit(
                prompter.prepare(&user(text), *max).unwrap(),
                sampling,
                Arc::new(AtomicBool::new(false)),
            ));
        }
        for (id, output) in engine.step() {
            let i = ids.iter().position(|&x| x == id).unwrap();
            match output {
                Output::Token(_, Some(t)) => texts[i].push_str(&t),
                Output::Token(_, None) => {}
                Output::Done(g) => done[i] = Some(g.unwrap().completion_tokens),
            }
        }
        steps += 1;
        assert!(steps < 200, "the batch never finished");
    }
    for i in 0..3 {
        assert_eq!((texts[i].clone(), done[i].unwrap()), alone[i], "request {i}");
    }
    assert_eq!(engine.active(), 0, "every sequence left the batch");
}

/// A model whose weights are partly in a format rbee has no kernel for (here Q5_0: the embeddings,
/// tied head and the first layer's products) runs those on candle's kernels and still answers as
/// its f32 reference does.
#[test]
fn weights_in_other_formats_run_on_candles_kernels() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let path = model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let device = Device::Cpu;
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let qt = content.tensor(&mut file, name, &device).unwrap();
        let convert = name == "token_embd.weight" || (name.starts_with("blk.0.") && qt.dtype() == GgmlDType::Q4_1);
        let qt =
            if convert { QTensor::quantize(&qt.dequantize(&device).unwrap(), GgmlDType::Q5_0).unwrap() } else { qt };
        tensors.push((name.clone(), qt));
    }
    let dir = std::env::temp_dir().join(format!("rbee-q5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let converted = dir.join("model-q5_0.gguf");
    {
        let mut out = std::fs::File::create(&converted).unwrap();
        let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    }
    let prompt = prompt(&path, FRANCE);
    let (reference, reference_tokens) = greedy(&load(&converted, Kernels::Reference), &prompt);
    let (logits, tokens) = greedy(&load(&converted, Kernels::Quantized), &prompt);
    std::fs::remove_dir_all(&dir).unwrap();
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        max_diff(&logits, &reference) <= 0.06 * scale,
        "logits differ from the f32 reference by {}",
        max_diff(&logits, &reference)
    );
    assert_eq!(tokens, reference_tokens);
}
