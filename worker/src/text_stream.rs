//! Turns a growing list of token ids into text deltas that are always whole UTF-8 characters.
//!
//! Byte-level BPE can split one character over several tokens; decoding such a prefix yields
//! U+FFFD. The stream holds text back until the pending tokens decode cleanly.

use tokenizers::Tokenizer;

#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the window re-decoded on every step (keeps decoding cost constant per token).
    window_start: usize,
    /// Length of the text already emitted from the window.
    emitted_in_window: usize,
}

impl TextStream {
    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, tokenizers::Error> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids[self.window_start..], true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted_in_window {
            return Ok(None);
        }
        let Some(delta) = text.get(self.emitted_in_window..) else {
            return Ok(None);
        };
        let delta = delta.to_string();
        // Keep a few tokens of context so word-boundary rules of the decoder stay right.
        if self.ids.len() - self.window_start > 8 {
            self.window_start = self.ids.len() - 4;
            self.emitted_in_window = tokenizer.decode(&self.ids[self.window_start..], true)?.len();
        } else {
            self.emitted_in_window = text.len();
        }
        Ok(Some(delta))
    }
}
