//! Renders chat messages into a prompt with the model's own Jinja chat template (from the GGUF).

use minijinja::{Environment, Error, ErrorKind, context};
use rbee_bus::frames::ChatMessage;

/// ChatML, used when a model ships no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML when `None`). A template that does not compile is an error.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, Error> {
        let messages: Vec<_> =
            messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
        self.env.get_template("chat")?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn chatml_fallback_ends_with_the_assistant_turn() {
        let t = ChatTemplate::new(None, "<s>", "</s>").unwrap();
        let out = t.render(&[msg("user", "Hi")]).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_template_that_raises_is_an_error_not_a_panic() {
        let t = ChatTemplate::new(Some("{{ raise_exception('roles must alternate') }}"), "", "").unwrap();
        assert!(t.render(&[msg("user", "x")]).unwrap_err().to_string().contains("roles must alternate"));
    }
}
