//! The engine on the real model (SmolLM2-135M-Instruct Q4_1): tokenization as SmolLM2 defines it,
//! the known greedy answer, stop reasons, cancellation, context limits and UTF-8-safe streaming.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use rbee_bus::frames::{ChatMessage, Sampling};
use rbee_bus::{Code, FinishReason};
use rbee_worker::engine::{Engine, Generation};
use rbee_worker::text_stream::TextStream;

fn model_path() -> PathBuf {
    let path = std::env::var_os("RBEE_TEST_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("RBEE_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rbee/models"));
        cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.is_file(), "{} missing: run `rbee setup` (scripts/test does)", path.display());
    path
}

/// One loaded engine for all tests in this file (loading takes about a second).
fn engine() -> std::sync::MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<std::sync::Mutex<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| std::sync::Mutex::new(Engine::load(&model_path()).expect("model loads")))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage { role: "user".into(), content: text.into() }]
}

fn run(messages: &[ChatMessage], max_tokens: Option<u32>, sampling: Sampling) -> (String, Generation) {
    let mut engine = engine();
    let prepared = engine.prompter().prepare(messages, max_tokens).expect("fits");
    let mut text = String::new();
    let generation =
        engine.generate(&prepared, &sampling, &AtomicBool::new(false), |t| text.push_str(t)).expect("generates");
    (text, generation)
}

#[test]
fn smollm2_tokenization_has_no_prefix_space_and_splits_digits() {
    let prompter = engine().prompter();
    assert_eq!(prompter.encode("system").unwrap(), vec![9690], "not 817 (\"Ġsystem\")");
    assert_eq!(prompter.encode("2024").unwrap().len(), 4, "digits one by one");
    assert_eq!(prompter.encode("<|im_start|>").unwrap(), vec![1]);
}

#[test]
fn greedy_answer_to_the_capital_of_france_is_the_known_one() {
    let (text, g) = run(&user("What is the capital of France? Answer in one sentence."), Some(64), Sampling::default());
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.completion_tokens as usize, engine().prompter().encode(&text).unwrap().len());
}

#[test]
fn max_tokens_stops_with_length_after_exactly_that_many_tokens() {
    let (_, g) = run(&user("Write a long story about a bee."), Some(5), Sampling::default());
    assert_eq!((g.finish_reason, g.completion_tokens), (FinishReason::Length, 5));
}

#[test]
fn the_same_seed_gives_the_same_sampled_text() {
    let sampling = Sampling { temperature: Some(0.9), top_p: Some(0.95), top_k: Some(40), seed: Some(42) };
    let (a, _) = run(&user("Name a flower."), Some(12), sampling.clone());
    let (b, _) = run(&user("Name a flower."), Some(12), sampling);
    assert_eq!(a, b);
}

#[test]
fn a_cancelled_generation_stops_before_the_next_token() {
    let mut engine = engine();
    let prepared = engine.prompter().prepare(&user("Write a long story."), Some(100)).unwrap();
    let mut pieces = 0;
    let g = engine.generate(&prepared, &Sampling::default(), &AtomicBool::new(true), |_| pieces += 1).unwrap();
    assert_eq!((g.finish_reason, g.completion_tokens, pieces), (FinishReason::Cancelled, 0, 0));
}

#[test]
fn max_tokens_beyond_the_context_window_is_refused_with_the_limit() {
    let prompter = engine().prompter();
    let err = prompter.prepare(&user("Hi"), Some(100_000)).expect_err("refused");
    assert_eq!(err.code(), Code::ContextLengthExceeded);
    assert!(err.to_string().contains(&prompter.context_length().to_string()), "{err}");
    assert!(prompter.prepare(&[], None).is_err(), "an empty chat is refused");
}

#[test]
fn streamed_text_is_whole_characters_and_equals_the_full_decode() {
    let prompter = engine().prompter();
    let text = "Bees 🐝 love café crème, naïve ünïcödé and 漢字!";
    let ids = prompter.encode(text).unwrap();
    let mut stream = TextStream::default();
    let mut out = String::new();
    for id in &ids {
        if let Some(piece) = stream.push(prompter.tokenizer(), *id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "a piece split a character: {piece:?}");
            out.push_str(&piece);
        }
    }
    assert_eq!(out, text);
}

/// A whole run through the batch API: every token with the text it completed, and how it ended.
fn run_tokens(prepared: rbee_worker::engine::Prepared, sampling: &Sampling) -> (Vec<(u32, String)>, Generation) {
    use rbee_worker::engine::Output;
    let mut engine = engine();
    let id = engine.admit(prepared, sampling, std::sync::Arc::new(AtomicBool::new(false)));
    let mut tokens = Vec::new();
    loop {
        for (of, output) in engine.step() {
            assert_eq!(of, id);
            match output {
                Output::Token(token, text) => tokens.push((token, text.unwrap_or_default())),
                Output::Done(outcome) => return (tokens, outcome.expect("generates")),
            }
        }
    }
}

#[test]
fn a_resumed_run_goes_on_exactly_as_the_uninterrupted_one_greedy_and_seeded() {
    let seeded = Sampling { temperature: Some(0.9), top_p: Some(0.95), seed: Some(7), ..Sampling::default() };
    for sampling in [Sampling::default(), seeded] {
        let prepared = engine().prompter().prepare(&user("Tell me a story about a bee."), Some(40)).unwrap();
        let (whole, ended) = run_tokens(prepared.clone(), &sampling);
        assert!(whole.len() > 20, "{sampling:?}: a run long enough to cut: {}", whole.len());
        for cut in [1, 7, 20, 39].into_iter().filter(|&cut| cut < whole.len()) {
            let resumed = whole[..cut].iter().map(|(t, _)| *t).collect();
            let (rest, resumed_end) = run_tokens(prepared.clone().resuming(resumed).unwrap(), &sampling);
            let ids = |tokens: &[(u32, String)]| tokens.iter().map(|(t, _)| *t).collect::<Vec<_>>();
            let text = |tokens: &[(u32, String)]| tokens.iter().map(|(_, s)| s.as_str()).collect::<String>();
            assert_eq!(ids(&rest), ids(&whole[cut..]), "{sampling:?}, cut after {cut}: tokens");
            assert_eq!(text(&whole[..cut]) + &text(&rest), text(&whole), "{sampling:?}, cut after {cut}: text");
            assert_eq!(
                (resumed_end.finish_reason, resumed_end.completion_tokens, resumed_end.prompt_tokens),
                (ended.finish_reason, ended.completion_tokens, ended.prompt_tokens),
                "{sampling:?}, cut after {cut}: the end counts the resumed tokens as generated"
            );
        }
    }
}

#[test]
fn nothing_left_to_resume_is_refused() {
    let prepared = engine().prompter().prepare(&user("Hi"), Some(3)).unwrap();
    let err = prepared.resuming(vec![1, 2, 3]).unwrap_err();
    assert_eq!(err.code(), Code::InvalidChat);
}

#[test]
fn a_greedy_run_resumed_after_any_token_is_the_uninterrupted_one() {
    let prepared = engine().prompter().prepare(&user("Name three flowers bees like."), Some(32)).unwrap();
    let (whole, _) = run_tokens(prepared.clone(), &Sampling::default());
    let ids = |tokens: &[(u32, String)]| tokens.iter().map(|(t, _)| *t).collect::<Vec<_>>();
    for cut in 1..whole.len() {
        let resumed = ids(&whole[..cut]);
        let (rest, _) = run_tokens(prepared.clone().resuming(resumed).unwrap(), &Sampling::default());
        assert_eq!(ids(&rest), ids(&whole[cut..]), "cut after {cut}");
    }
}

#[test]
fn a_generation_past_its_time_limit_ends_with_generation_timeout_keeping_its_text_and_count() {
    let mut engine = engine();
    engine.limit_time(std::time::Duration::from_millis(500));
    let prepared = engine.prompter().prepare(&user("Tell me a long story about a bee."), Some(2000)).unwrap();
    let mut text = String::new();
    let outcome = engine.generate(&prepared, &Sampling::default(), &AtomicBool::new(false), |t| text.push_str(t));
    engine.limit_time(std::time::Duration::MAX);
    let err = outcome.expect_err("stopped by the time limit");
    assert_eq!(err.code(), Code::GenerationTimeout);
    let (prompt, made) = err.tokens_made();
    assert_eq!(prompt as usize, prepared.prompt.len());
    assert!(made > 0 && made < 2000, "{made} tokens made");
    assert!(!text.is_empty(), "the text made before the limit was streamed");
}
