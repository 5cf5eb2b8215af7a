//! Messages on core NATS that are not history: a request's text going to a worker, and the token
//! frames coming back. They are postcard-encoded like events but never stored.

use serde::{Deserialize, Serialize};

use crate::code::Code;
use crate::event::FinishReason;

/// One chat message, as the OpenAI API has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Sampling settings for one request. `temperature == 0` (or `None`) means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
}

/// A request dispatched to a worker on `rbee.work.<node>.<worker>`; the worker answers with a [`WorkAccepted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    pub request: String,
    pub slot: u32,
    pub messages: Vec<ChatMessage>,
    /// `None`: until end of sequence or the context window is full.
    pub max_tokens: Option<u32>,
    pub sampling: Sampling,
    pub traceparent: Option<String>,
    /// Tokens another worker already generated for this request (it died mid-stream): the worker
    /// reads them after the prompt, counts them as generated, and goes on from there, so the
    /// continuation is the one an uninterrupted run gives. Empty for a fresh request.
    pub resume: Vec<u32>,
}

/// A queen's word to a worker, every [`STILL_WANTED_EVERY`], on `rbee.live.<node>.<worker>`: the
/// requests on that worker it still streams to a client. A request no queen has named for
/// [`REQUESTER_TIMEOUT`] has no one left to read it (its queen died or was cut off): the worker
/// stops generating it and frees the slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillWanted {
    pub requests: Vec<String>,
}

pub const STILL_WANTED_EVERY: std::time::Duration = std::time::Duration::from_millis(300);
pub const REQUESTER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The worker's immediate answer to a [`WorkItem`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkAccepted {
    Accepted,
    /// Refused before any work.
    Refused {
        code: Code,
        message: String,
    },
}

/// What streams back on `rbee.tok.<node>.<worker>.<request>`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokenFrame {
    /// Text of one or more tokens; always whole UTF-8 characters (empty for the last tokens of a
    /// generation when they make no text of their own). `tokens` are their ids, what a queen hands
    /// another worker to resume the request if this one dies; `first` is the place of `tokens[0]`
    /// in the completion (a resumed request's tokens count): frames travel at most once, and a
    /// queen that sees `first` skip ahead knows one was lost.
    Delta { text: String, tokens: Vec<u32>, first: u32 },
    /// The generation ended.
    Done { finish_reason: FinishReason, prompt_tokens: u32, completion_tokens: u32 },
    /// The generation failed.
    Error { code: Code, message: String },
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding into a Vec cannot fail")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
