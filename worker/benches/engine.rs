//! Engine baseline on this machine: prompt processing and decode speed of the worker's engine on
//! the default model, medians of several runs. `cargo bench -p rbee-worker --bench engine`
//! (RBEE_TEST_MODEL or the shared cache names the GGUF file; RBEE_WORKER_THREADS the threads).
//! With RBEE_BENCH_OUT=<file> it also writes the prompts' token ids and its results as JSON, which
//! `scripts/bench-engine` hands to llama.cpp so both run the very same tokens.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use rbee_bus::frames::{ChatMessage, Sampling};
use rbee_worker::engine::{Engine, Output};

const RUNS: usize = 5;

fn model_path() -> PathBuf {
    std::env::var_os("RBEE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("RBEE_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rbee/models"));
        cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Aggregate decode tok/s of `streams` copies of `prepared` in one batch, and the tokens made.
fn concurrent_decode(engine: &mut Engine, prepared: &rbee_worker::engine::Prepared, streams: usize) -> (f64, usize) {
    let ids: Vec<_> = (0..streams)
        .map(|_| engine.admit(prepared.clone(), &Sampling::default(), std::sync::Arc::new(AtomicBool::new(false))))
        .collect();
    let mut started = vec![false; streams];
    let mut decoding_since = None;
    let mut tokens = 0;
    while engine.active() > 0 {
        for (id, output) in engine.step() {
            let i = ids.iter().position(|&x| x == id).expect("a known sequence");
            match output {
                Output::Token(..) if started[i] => {}
                Output::Token(..) => started[i] = true,
                Output::Done(g) => tokens += g.expect("generates").completion_tokens.saturating_sub(1) as usize,
            }
        }
        if decoding_since.is_none() && started.iter().all(|&s| s) {
            decoding_since = Some(Instant::now());
        }
    }
    let seconds = decoding_since.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64());
    (tokens as f64 / seconds, tokens)
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: text.into() }]
}

fn main() {
    let started = Instant::now();
    let mut engine = Engine::load(&model_path()).expect("model loads");
    let load_s = started.elapsed().as_secs_f64();
    let prompter = engine.prompter();
    let greedy = Sampling::default();
    let cancel = AtomicBool::new(false);

    // Prompt processing: time to the first token over a long (~240 token) and a short prompt.
    let long_text = "Bees are flying insects closely related to wasps and ants, known for their roles in pollination and, in the case of the best-known bee species, the western honey bee, for producing honey. ".repeat(6);
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    for (label, text) in
        [("long", long_text.as_str()), ("short", "What is the capital of France? Answer in one sentence.")]
    {
        let prepared = prompter.prepare(&user(text), Some(1)).unwrap();
        let mut ttft = Vec::new();
        for _ in 0..RUNS {
            let g = engine.generate(&prepared, &greedy, &cancel, |_| {}).unwrap();
            ttft.push(g.time_to_first_token.as_secs_f64());
        }
        let t = median(ttft);
        out.insert(format!("{label}_prompt"), serde_json::json!(prepared.prompt));
        out.insert(format!("{label}_prompt_tok_s"), serde_json::json!(prepared.prompt.len() as f64 / t));
        out.insert(format!("{label}_ttft_ms"), serde_json::json!(t * 1000.0));
        rows.push(format!(
            "| prompt processing, {label} prompt ({} tokens) | {:.1} tok/s | TTFT {:.0} ms |",
            prepared.prompt.len(),
            prepared.prompt.len() as f64 / t,
            t * 1000.0
        ));
    }

    // Decode: 128 new tokens after a short prompt; the model is asked for a long story so it does
    // not stop early; runs that stop early are measured on the tokens they made.
    let prepared =
        prompter.prepare(&user("Write a very long story about a bee who travels the world."), Some(128)).unwrap();
    let mut decode = Vec::new();
    let mut tokens = 0;
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let g = engine.generate(&prepared, &greedy, &cancel, |_| {}).unwrap();
        let total = t0.elapsed().as_secs_f64();
        tokens = g.completion_tokens;
        decode.push((g.completion_tokens.saturating_sub(1)) as f64 / (total - g.time_to_first_token.as_secs_f64()));
    }
    let decode = median(decode);
    out.insert("decode_prompt".into(), serde_json::json!(prepared.prompt));
    out.insert("decode_tokens".into(), serde_json::json!(tokens));
    out.insert("decode_tok_s".into(), serde_json::json!(decode));
    rows.push(format!("| decode ({tokens} tokens, greedy) | {decode:.1} tok/s | |"));

    // Concurrent streams: n sequences admitted together, decoding side by side in one batch.
    // Aggregate decode rate: tokens after each one's first, over the time from the last first
    // token to the end.
    let mut single = 0.0;
    for streams in [1usize, 2, 4, 8] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (rate, _) = concurrent_decode(&mut engine, &prepared, streams);
            rates.push(rate);
        }
        let rate = median(rates);
        if streams == 1 {
            single = rate;
        }
        out.insert(format!("streams_{streams}_tok_s"), serde_json::json!(rate));
        rows.push(format!(
            "| aggregate decode, {streams} concurrent stream(s) | {rate:.1} tok/s | {:.2}x one stream |",
            rate / single
        ));
    }

    let threads = std::env::var("RBEE_WORKER_THREADS").unwrap_or_else(|_| "default (physical cores)".into());
    println!(
        "engine: rbee's forward pass and kernels, model {}, threads {threads}, {RUNS} runs, medians",
        model_path().display()
    );
    println!("| measure | value | |\n|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!("| model load | {:.2} s | |", load_s);
    println!("| peak RSS | {:.0} MiB | |", peak_rss_mib());
    out.insert("peak_rss_mib".into(), serde_json::json!(peak_rss_mib()));
    if let Some(file) = std::env::var_os("RBEE_BENCH_OUT") {
        std::fs::write(file, serde_json::Value::Object(out).to_string()).expect("write the bench results");
    }
}
