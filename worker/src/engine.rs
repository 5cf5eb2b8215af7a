//! The inference engine: a quantized llama model from a GGUF file, its tokenizer and chat template,
//! and the generation loop. Synchronous and CPU-bound: it runs on its own thread, never on the runtime.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama;
use rbee_bus::frames::{self, ChatMessage};
use rbee_bus::FinishReason;
use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence};
use tokenizers::Tokenizer;

use crate::chat_template::ChatTemplate;
use crate::llama::{Kernels, Llama};
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
}

impl EngineError {
    /// Stable code for APIs, metrics and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::ModelUnreadable { .. } => "MODEL_UNREADABLE",
            EngineError::ModelInvalid { .. } => "MODEL_INVALID",
            EngineError::ContextLengthExceeded(_) => "CONTEXT_LENGTH_EXCEEDED",
            EngineError::InvalidChat(_) => "INVALID_CHAT",
            EngineError::Inference(_) => "INFERENCE_FAILED",
        }
    }
}

fn inference(e: impl std::fmt::Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

/// A prepared request: prompt tokens and the number of tokens it may generate.
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
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

/// The model with its prompter. Owned by the generation thread.
pub struct Engine {
    model: Llama,
    prompter: Arc<Prompter>,
    device: Device,
}

impl Engine {
    /// Loads a GGUF llama model with its tokenizer and chat template.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let shown = path.display().to_string();
        let invalid = |reason: String| EngineError::ModelInvalid { path: shown.clone(), reason };
        let mut file = File::open(path).map_err(|e| EngineError::ModelUnreadable { path: shown.clone(), reason: e.to_string() })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| invalid(e.to_string()))?;
        let meta_str = |key: &str| content.metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
        let meta_u32 = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let arch = meta_str("general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(invalid(format!("architecture {arch:?} is not supported (llama only)")));
        }
        let trained_context = meta_u32("llama.context_length").unwrap_or(quantized_llama::MAX_SEQ_LEN as u32) as usize;
        let context_length = trained_context.min(quantized_llama::MAX_SEQ_LEN);

        let mut tokenizer = Tokenizer::from_gguf(&content).map_err(|e| invalid(format!("tokenizer: {e}")))?;
        if meta_str("tokenizer.ggml.pre").as_deref() == Some("smollm") {
            // candle falls back to ByteLevel with a prefix space for "smollm"; SmolLM2's own pre-tokenizer
            // splits digits one by one, then applies ByteLevel without a prefix space.
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
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
            if let Some(id) = tokenizer.token_to_id(end_of_turn) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }

        let device = Device::Cpu;
        let model = Llama::from_gguf(&content, &mut file, &device, Kernels::Rbee).map_err(|e| invalid(e.to_string()))?;
        let prompter = Arc::new(Prompter { tokenizer, template, eos, context_length });
        Ok(Engine { model, prompter, device })
    }

    pub fn prompter(&self) -> Arc<Prompter> {
        self.prompter.clone()
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
            Some(m) => Ok(Prepared { prompt, max_new_tokens: m as usize }),
            None => Ok(Prepared { prompt, max_new_tokens: room }),
        }
    }
}

impl Engine {
    /// Generates until end of sequence, `max_new_tokens`, or `cancel`; `on_text` receives each
    /// piece of whole-character text as soon as it exists. Cancellation is checked between tokens.
    pub fn generate(
        &mut self,
        prepared: &Prepared,
        sampling: &frames::Sampling,
        cancel: &AtomicBool,
        on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let generation = self.generate_sequence(prepared, sampling, cancel, on_text);
        // The sequence's KV cache is freed as soon as it ends, not when the next one starts.
        self.model.clear_cache();
        generation
    }

    fn generate_sequence(
        &mut self,
        prepared: &Prepared,
        sampling: &frames::Sampling,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let started = Instant::now();
        let mut sampler = LogitsProcessor::from_sampling(sampling.seed.unwrap_or(299_792_458), to_candle(sampling));
        let prompter = self.prompter.clone();
        let mut text = TextStream::new(&prompter.tokenizer);
        let prompt_tokens = prepared.prompt.len() as u32;
        let mut completion_tokens = 0u32;
        let mut time_to_first_token = Duration::ZERO;
        let done = |finish_reason, completion_tokens, time_to_first_token| {
            Ok(Generation { finish_reason, prompt_tokens, completion_tokens, time_to_first_token })
        };

        let input = Tensor::new(prepared.prompt.as_slice(), &self.device).and_then(|t| t.unsqueeze(0)).map_err(inference)?;
        // Position 0 also clears the model's KV cache from any previous request.
        let mut logits = self.model.forward(&input, 0).map_err(inference)?;
        let mut position = prepared.prompt.len();
        loop {
            if cancel.load(Ordering::Relaxed) {
                return done(FinishReason::Cancelled, completion_tokens, time_to_first_token);
            }
            let next = sampler.sample(&logits).map_err(inference)?;
            if completion_tokens == 0 {
                time_to_first_token = started.elapsed();
            }
            if prompter.eos.contains(&next) {
                return done(FinishReason::Stop, completion_tokens, time_to_first_token);
            }
            completion_tokens += 1;
            if let Some(piece) = text.push(next).map_err(inference)? {
                on_text(&piece);
            }
            if completion_tokens as usize >= prepared.max_new_tokens {
                return done(FinishReason::Length, completion_tokens, time_to_first_token);
            }
            let input = Tensor::new(&[next], &self.device).and_then(|t| t.unsqueeze(0)).map_err(inference)?;
            logits = self.model.forward(&input, position).map_err(inference)?;
            position += 1;
        }
    }
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
