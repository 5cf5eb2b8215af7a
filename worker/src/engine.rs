//! The inference engine: a quantized llama model from a GGUF file, its tokenizer and chat template,
//! and continuous batching: sequences are admitted at any time, every step advances all of them in
//! one forward pass (prompts in chunks, decoding sequences by one token), and each leaves as soon as
//! it ends. Synchronous and CPU-bound: it runs on its own thread, never on the runtime.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use rbee_bus::frames::{self, ChatMessage};
use rbee_bus::{Code, FinishReason};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence as PreTokenizers};

use crate::chat_template::ChatTemplate;
use crate::llama::{Kernels, KvCache, Llama, MAX_CONTEXT, Step};
use crate::text_stream::TextStream;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read model file {path}: {reason}")]
    ModelUnreadable { path: String, reason: String },
    #[error("model file {path} is not a usable GGUF llama model: {reason}")]
    ModelInvalid { path: String, reason: String },
    #[error("{0}")]
    ContextLengthExceeded(String),
    #[error("invalid chat: {0}")]
    InvalidChat(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the generation ran past its time limit of {limit_secs} s after {completion_tokens} tokens")]
    TimedOut { limit_secs: u64, prompt_tokens: u32, completion_tokens: u32 },
}

impl EngineError {
    /// Stable code for APIs, metrics and the CLI.
    pub fn code(&self) -> Code {
        match self {
            EngineError::ModelUnreadable { .. } => Code::ModelUnreadable,
            EngineError::ModelInvalid { .. } => Code::ModelInvalid,
            EngineError::ContextLengthExceeded(_) => Code::ContextLengthExceeded,
            EngineError::InvalidChat(_) => Code::InvalidChat,
            EngineError::Inference(_) => Code::InferenceFailed,
            EngineError::TimedOut { .. } => Code::GenerationTimeout,
        }
    }

    /// Prompt and completion tokens processed before the failure (zero when none are known).
    pub fn tokens_made(&self) -> (u32, u32) {
        match self {
            EngineError::TimedOut { prompt_tokens, completion_tokens, .. } => (*prompt_tokens, *completion_tokens),
            _ => (0, 0),
        }
    }
}

fn inference(e: impl std::fmt::Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

/// A prepared request: prompt tokens, the number of tokens it may generate, and the tokens
/// already generated for it elsewhere (a resumed request; see [`Prepared::resuming`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub resumed: Vec<u32>,
}

impl Prepared {
    /// The request, to be continued after `tokens` a worker that died already generated: they are
    /// read after the prompt and count as generated, the sampler draws once for each (so a seeded
    /// run goes on as it would have), and the text of the next token follows theirs. The
    /// continuation is the uninterrupted run's, token for token.
    pub fn resuming(mut self, tokens: Vec<u32>) -> Result<Prepared, EngineError> {
        if tokens.len() >= self.max_new_tokens {
            return Err(EngineError::InvalidChat(format!(
                "nothing left to generate: {} tokens resumed, at most {} allowed",
                tokens.len(),
                self.max_new_tokens
            )));
        }
        self.resumed = tokens;
        Ok(self)
    }
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub time_to_first_token: Duration,
}

/// Everything that turns a chat into prompt tokens and tokens back into text: shared read-only
/// between the request handler (to validate before accepting) and the generation thread.
pub struct Prompter {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    context_length: usize,
}

/// Prompt tokens processed per step over all sequences still reading their prompts, so a long
/// prompt delays the others' next tokens by one bounded step, not by the whole prompt.
const PROMPT_TOKENS_PER_STEP: usize = 256;

pub type SequenceId = u64;

/// What a step produced for one sequence.
#[derive(Debug)]
pub enum Output {
    /// A new token, and the whole-character text it completes (none while a character is split
    /// over several tokens).
    Token(u32, Option<String>),
    /// The sequence ended (and left the batch).
    Done(Result<Generation, EngineError>),
}

/// A sequence in the batch.
struct Sequence {
    id: SequenceId,
    cache: KvCache,
    /// Tokens to feed next: what is left of the prompt, then the last sampled token.
    pending: Vec<u32>,
    sampler: LogitsProcessor,
    text: TextStream,
    cancel: Arc<AtomicBool>,
    prompt_tokens: u32,
    completion_tokens: u32,
    max_new_tokens: usize,
    admitted: Instant,
    time_to_first_token: Duration,
}

/// The model with its prompter and the sequences in flight. Owned by the generation thread.
pub struct Engine {
    model: Llama,
    prompter: Arc<Prompter>,
    sequences: Vec<Sequence>,
    next_id: SequenceId,
    /// How long one sequence may run from its admission ([`Engine::limit_time`]); none: unbounded.
    time_limit: Option<Duration>,
}

impl Engine {
    /// Loads a GGUF llama model with its tokenizer and chat template, on rbee's kernels, with
    /// RBEE_WORKER_THREADS threads (default: the physical cores).
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let threads = std::env::var("RBEE_WORKER_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(crate::config::physical_cores);
        Self::load_with(path, Kernels::Quantized, threads)
    }

    /// As [`Engine::load`], multiplying with `kernels` (the f32 reference is for tests) on `threads`.
    pub fn load_with(path: &Path, kernels: Kernels, threads: usize) -> Result<Self, EngineError> {
        let shown = path.display().to_string();
        let invalid = |reason: String| EngineError::ModelInvalid { path: shown.clone(), reason };
        let mut file = File::open(path)
            .map_err(|e| EngineError::ModelUnreadable { path: shown.clone(), reason: e.to_string() })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| invalid(e.to_string()))?;
        let meta_str = |key: &str| content.metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
        let meta_u32 = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let arch = meta_str("general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(invalid(format!("architecture {arch:?} is not supported (llama only)")));
        }
        let trained_context = meta_u32("llama.context_length").unwrap_or(MAX_CONTEXT as u32) as usize;
        let context_length = trained_context.min(MAX_CONTEXT);

        let mut tokenizer = Tokenizer::from_gguf(&content).map_err(|e| invalid(format!("tokenizer: {e}")))?;
        if meta_str("tokenizer.ggml.pre").as_deref() == Some("smollm") {
            // candle falls back to ByteLevel with a prefix space for "smollm"; SmolLM2's own pre-tokenizer
            // splits digits one by one, then applies ByteLevel without a prefix space.
            tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        let tokens: Vec<String> = content
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().filter_map(|t| t.to_string().ok().cloned()).collect())
            .unwrap_or_default();
        let token_text = |key: &str| meta_u32(key).and_then(|id| tokens.get(id as usize).cloned()).unwrap_or_default();
        let (bos, eos_text) = (token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id"));
        let template = ChatTemplate::new(meta_str("tokenizer.chat_template").as_deref(), &bos, &eos_text)
            .map_err(|e| invalid(format!("chat template: {e}")))?;
        let mut eos: Vec<u32> = meta_u32("tokenizer.ggml.eos_token_id").into_iter().collect();
        // Chat models end a turn with <|im_end|> / <|eot_id|>; stop there too.
        for end_of_turn in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(end_of_turn)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }

        let model = Llama::from_gguf(&content, &mut file, kernels, threads).map_err(invalid)?;
        let prompter = Arc::new(Prompter { tokenizer, template, eos, context_length });
        Ok(Engine { model, prompter, sequences: Vec::new(), next_id: 0, time_limit: None })
    }

    pub fn prompter(&self) -> Arc<Prompter> {
        self.prompter.clone()
    }

    /// Ends every sequence that runs longer than `limit` with [`EngineError::TimedOut`] (its text
    /// so far has been output already).
    pub fn limit_time(&mut self, limit: Duration) {
        self.time_limit = Some(limit);
    }
}

impl Prompter {
    /// The longest prompt + completion this engine can hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of a text, without special-token handling beyond what the text contains.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenizer.encode(text, false).map_err(inference)?.get_ids().to_vec())
    }

    /// Renders and tokenizes a chat, and checks it fits in the context window with `max_tokens`.
    pub fn prepare(&self, messages: &[ChatMessage], max_tokens: Option<u32>) -> Result<Prepared, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidChat("messages must not be empty".into()));
        }
        let text = self.template.render(messages).map_err(|e| EngineError::InvalidChat(e.to_string()))?;
        let prompt = self.encode(&text)?;
        let room = self.context_length.saturating_sub(prompt.len());
        let limit = self.context_length;
        match max_tokens {
            _ if room == 0 => Err(EngineError::ContextLengthExceeded(format!(
                "this model's maximum context length is {limit} tokens, and the messages alone take {} tokens",
                prompt.len()
            ))),
            Some(m) if m as usize > room => Err(EngineError::ContextLengthExceeded(format!(
                "this model's maximum context length is {limit} tokens; you requested {} tokens ({} in the messages, {m} in the completion): lower max_tokens to at most {room}",
                prompt.len() + m as usize,
                prompt.len()
            ))),
            Some(m) => Ok(Prepared { prompt, max_new_tokens: m as usize, resumed: Vec::new() }),
            None => Ok(Prepared { prompt, max_new_tokens: room, resumed: Vec::new() }),
        }
    }
}

impl Engine {
    /// Sequences in the batch.
    pub fn active(&self) -> usize {
        self.sequences.len()
    }

    /// Adds a sequence to the batch; it takes part from the next step. Its KV cache has room for
    /// its prompt and the tokens it may generate, and is freed when it ends.
    pub fn admit(&mut self, prepared: Prepared, sampling: &frames::Sampling, cancel: Arc<AtomicBool>) -> SequenceId {
        let id = self.next_id;
        self.next_id += 1;
        let positions = prepared.prompt.len() + prepared.max_new_tokens;
        let mut sampler = LogitsProcessor::from_sampling(sampling.seed.unwrap_or(299_792_458), to_candle(sampling));
        let mut text = TextStream::default();
        for &token in &prepared.resumed {
            // candle's samplers draw from their generator exactly once per sample, whatever the
            // logits (greedy: never): one draw per resumed token leaves it where the first run's was.
            if let Ok(any) = Tensor::from_vec(vec![0f32; 2], 2, &Device::Cpu) {
                let _ = sampler.sample(&any);
            }
            let _ = text.push(&self.prompter.tokenizer, token);
        }
        let mut pending = prepared.prompt.clone();
        pending.extend_from_slice(&prepared.resumed);
        self.sequences.push(Sequence {
            id,
            cache: self.model.new_cache(positions),
            prompt_tokens: prepared.prompt.len() as u32,
            pending,
            sampler,
            text,
            cancel,
            completion_tokens: prepared.resumed.len() as u32,
            max_new_tokens: prepared.max_new_tokens,
            admitted: Instant::now(),
            time_to_first_token: Duration::ZERO,
        });
        id
    }

    /// One forward pass over every sequence in the batch (cancelled ones leave first), then one
    /// sampled token for each sequence whose prompt is all read. Returns what each produced.
    pub fn step(&mut self) -> Vec<(SequenceId, Output)> {
        let mut outputs = Vec::new();
        let finish = |seq: &Sequence, reason| Generation {
            finish_reason: reason,
            prompt_tokens: seq.prompt_tokens,
            completion_tokens: seq.completion_tokens,
            time_to_first_token: seq.time_to_first_token,
        };
        let limit = self.time_limit;
        self.sequences.retain(|seq| {
            let cancelled = seq.cancel.load(Ordering::Relaxed);
            let timed_out = limit.filter(|l| seq.admitted.elapsed() > *l);
            if cancelled {
                outputs.push((seq.id, Output::Done(Ok(finish(seq, FinishReason::Cancelled)))));
            } else if let Some(limit) = timed_out {
                let timed_out = EngineError::TimedOut {
                    limit_secs: limit.as_secs(),
                    prompt_tokens: seq.prompt_tokens,
                    completion_tokens: seq.completion_tokens,
                };
                outputs.push((seq.id, Output::Done(Err(timed_out))));
            }
            !cancelled && timed_out.is_none()
        });
        // Each sequence's share: decoding ones their one token, prompts what the budget leaves.
        let mut budget = PROMPT_TOKENS_PER_STEP;
        let fed: Vec<usize> = self
            .sequences
            .iter()
            .map(|seq| {
                let n = if seq.pending.len() == 1 { 1 } else { seq.pending.len().min(budget.max(1)) };
                if seq.pending.len() > 1 {
                    budget = budget.saturating_sub(n);
                }
                n
            })
            .collect();
        let mut batch: Vec<Step> = self
            .sequences
            .iter_mut()
            .zip(&fed)
            .map(|(seq, &n)| Step { cache: &mut seq.cache, tokens: &seq.pending[..n] })
            .collect();
        if batch.is_empty() {
            return outputs;
        }
        let logits = match self.model.forward(&mut batch) {
            Ok(logits) => logits,
            Err(e) => {
                // Nothing is known of any sequence's state after a failed pass: all of them end.
                for seq in self.sequences.drain(..) {
                    outputs.push((seq.id, Output::Done(Err(EngineError::Inference(e.clone())))));
                }
                return outputs;
            }
        };
        let prompter = self.prompter.clone();
        let mut ended = Vec::new();
        for ((seq, n), logits) in self.sequences.iter_mut().zip(fed).zip(logits) {
            seq.pending.drain(..n);
            if !seq.pending.is_empty() {
                continue;
            }
            match sample(seq, &prompter, logits) {
                Ok(Sampled::Next(token, text)) => {
                    seq.pending.push(token);
                    outputs.push((seq.id, Output::Token(token, text)));
                    if seq.completion_tokens as usize >= seq.max_new_tokens {
                        ended.push((seq.id, Ok(finish(seq, FinishReason::Length))));
                    }
                }
                Ok(Sampled::End) => ended.push((seq.id, Ok(finish(seq, FinishReason::Stop)))),
                Err(e) => ended.push((seq.id, Err(e))),
            }
        }
        for (id, outcome) in ended {
            self.sequences.retain(|seq| seq.id != id);
            outputs.push((id, Output::Done(outcome)));
        }
        outputs
    }

    /// Generates one sequence alone (the batch must be empty) until end of sequence,
    /// `max_new_tokens`, or `cancel`; `on_text` receives each piece of whole-character text as soon
    /// as it exists.
    pub fn generate(
        &mut self,
        prepared: &Prepared,
        sampling: &frames::Sampling,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        assert_eq!(self.active(), 0, "generate runs a sequence alone");
        let flag = Arc::new(AtomicBool::new(false));
        let id = self.admit(prepared.clone(), sampling, flag.clone());
        loop {
            flag.store(cancel.load(Ordering::Relaxed), Ordering::Relaxed);
            for (of, output) in self.step() {
                match output {
                    Output::Token(_, Some(text)) if of == id => on_text(&text),
                    Output::Done(outcome) if of == id => return outcome,
                    _ => {}
                }
            }
        }
    }
}

enum Sampled {
    /// A token and the text it completes.
    Next(u32, Option<String>),
    /// End of sequence.
    End,
}

fn sample(seq: &mut Sequence, prompter: &Prompter, logits: Vec<f32>) -> Result<Sampled, EngineError> {
    let vocab = logits.len();
    let logits = Tensor::from_vec(logits, vocab, &Device::Cpu).map_err(inference)?;
    let next = seq.sampler.sample(&logits).map_err(inference)?;
    if seq.time_to_first_token.is_zero() {
        seq.time_to_first_token = seq.admitted.elapsed();
    }
    if prompter.eos.contains(&next) {
        return Ok(Sampled::End);
    }
    seq.completion_tokens += 1;
    let text = seq.text.push(&prompter.tokenizer, next).map_err(inference)?;
    Ok(Sampled::Next(next, text))
}

fn to_candle(s: &frames::Sampling) -> Sampling {
    let temperature = s.temperature.unwrap_or(0.0);
    if temperature <= 0.0 {
        return Sampling::ArgMax;
    }
    match (s.top_k, s.top_p) {
        (Some(k), Some(p)) if p < 1.0 => Sampling::TopKThenTopP { k: k as usize, p, temperature },
        (Some(k), _) => Sampling::TopK { k: k as usize, temperature },
        (None, Some(p)) if p < 1.0 => Sampling::TopP { p, temperature },
        _ => Sampling::All { temperature },
    }
}
