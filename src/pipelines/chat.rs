//! A conversation with an instruction-tuned language model: its chat template (the Jinja text
//! that Hugging Face and llama.cpp files carry), its tokenizer, and a generation
//! [`Session`] that keeps the conversation's keys and values between turns.

use crate::data::TextTokenizer;
use crate::error::{Error, Result};
use crate::generate::{GenerateConfig, Sampler, Session};
use crate::io::{Gguf, GgufValue};
use crate::models::LanguageModel;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::ops::ControlFlow;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A model's chat template: how a conversation becomes the text the model was tuned on
/// (ChatML's `<|im_start|>user\n...<|im_end|>` for SmolLM2), rendered with `minijinja`, the
/// Jinja dialect of Hugging Face's `apply_chat_template`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template `source` (Jinja), with the texts of the model's `bos` and `eos` tokens that
    /// templates may name. An error when it does not parse.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        // Python string methods (`.strip()`, `.startswith()`) that Hugging Face templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::InvalidConfig(format!("the chat template does not parse: {e}")))?;
        Ok(Self { env, bos: bos.into(), eos: eos.into() })
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with its bos and eos tokens.
    pub fn from_gguf(file: &Gguf) -> Result<Self> {
        let bad = |reason: String| Error::BadFile { path: file.path.clone(), reason };
        let source = file
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| bad("no tokenizer.chat_template: the file carries no chat template".into()))?;
        let tokens = file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).unwrap_or(&[]);
        let token = |key: &str| {
            let id = file.get(key).and_then(GgufValue::as_u64)?;
            tokens.get(id as usize).and_then(GgufValue::as_str).map(str::to_string)
        };
        let (bos, eos) = (
            token("tokenizer.ggml.bos_token_id").unwrap_or_default(),
            token("tokenizer.ggml.eos_token_id").unwrap_or_default(),
        );
        Self::new(source, &bos, &eos).map_err(|e| bad(e.to_string()))
    }

    /// The text of `messages`, followed by the start of the assistant's turn when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| Error::InvalidConfig(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| Error::InvalidConfig(format!("the chat template failed: {e}")))
    }
}

/// The tokens that end a turn: the file's end-of-sequence token and the turn-end tokens of the
/// common templates (`<|im_end|>`, `<|eot_id|>`, `<|end|>`) that its vocabulary has.
pub fn turn_end_tokens(file: &Gguf, tokenizer: &TextTokenizer) -> Vec<usize> {
    let mut out: Vec<usize> =
        file.get("tokenizer.ggml.eos_token_id").and_then(GgufValue::as_u64).map(|id| id as usize).into_iter().collect();
    for text in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"] {
        if let Some(id) = tokenizer.token_id(text) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// A conversation with a language model: messages rendered with its template, the rendered
/// text fed to a [`Session`] that keeps what it has already seen, so each turn costs only its
/// own tokens.
pub struct Chat<'m, M: LanguageModel<V, E, Dev>, const V: usize, E: FloatDtype, Dev: Device<E>> {
    session: Session<'m, M, V, E, Dev>,
    tokenizer: &'m TextTokenizer,
    template: &'m ChatTemplate,
    system: Option<String>,
    messages: Vec<Message>,
    stop_tokens: Vec<usize>,
}

impl<'m, M: LanguageModel<V, E, Dev>, const V: usize, E: FloatDtype, Dev: Device<E>> Chat<'m, M, V, E, Dev> {
    /// A new conversation; `system` replaces the template's default system message, and a
    /// reply ends at any of `stop_tokens` (see [`turn_end_tokens`]).
    pub fn new(
        model: &'m M,
        tokenizer: &'m TextTokenizer,
        template: &'m ChatTemplate,
        system: Option<String>,
        stop_tokens: Vec<usize>,
    ) -> Self {
        let messages = system.iter().map(|s| Message::new("system", s.clone())).collect();
        Self { session: Session::new(model), tokenizer, template, system, messages, stop_tokens }
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Positions of the model's context the conversation holds.
    pub fn positions_used(&self) -> usize {
        self.session.tokens().len()
    }

    /// Starts the conversation over (the system message stays).
    pub fn reset(&mut self) {
        self.session.reset();
        self.messages = self.system.iter().map(|s| Message::new("system", s.clone())).collect();
    }

    /// The model's reply to `user`, at most `max_new_tokens` tokens (fewer when the context
    /// has less room), its text passed to `on_text` piece by piece as it is generated (a
    /// `Break` stops it). The reply joins the conversation. An error, with the conversation
    /// unchanged, when the context has no room for this turn.
    pub fn reply(
        &mut self,
        user: &str,
        max_new_tokens: usize,
        sampler: &mut Sampler,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<String> {
        self.messages.push(Message::new("user", user));
        let text = self.template.render(&self.messages, true);
        let ids = text.and_then(|text| Ok(self.tokenizer.encode_batch(&[&text])?.remove(0)));
        let ids = match ids {
            Ok(ids) if ids.len() < M::CONTEXT => ids,
            Ok(ids) => {
                self.messages.pop();
                return Err(Error::ContextFull { needed: ids.len() + 1, context: M::CONTEXT });
            }
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        // Feed only what the session has not seen. A history that tokenizes differently from
        // what was generated (rare with byte-level BPE) is fed again from the start.
        let seen = self.session.tokens();
        let common = seen.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < seen.len() || common == ids.len() {
            self.session.reset();
        }
        let start = self.session.tokens().len();
        let cfg = GenerateConfig {
            max_new_tokens: max_new_tokens.min(M::CONTEXT - ids.len()),
            stop_tokens: self.stop_tokens.clone(),
        };
        let mut reply_ids = Vec::new();
        let mut shown = 0;
        let mut failed = None;
        let stop = self.stop_tokens.clone();
        let tokenizer = self.tokenizer;
        let result = self.session.generate_while(&ids[start..], &cfg, sampler, |t| {
            if stop.contains(&t) {
                return ControlFlow::Continue(());
            }
            reply_ids.push(t);
            // Show whole characters only: a byte-level token may end inside one.
            match tokenizer.decode(&reply_ids) {
                Ok(text) if !text.ends_with('\u{FFFD}') && text.len() > shown => {
                    let flow = on_text(&text[shown..]);
                    shown = text.len();
                    flow
                }
                Ok(_) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        });
        if let Err(e) = result.map(|_| ()).and(failed.map_or(Ok(()), Err)) {
            self.messages.pop();
            return Err(e);
        }
        let reply = self.tokenizer.decode(&reply_ids)?;
        if reply.len() > shown {
            let _ = on_text(&reply[shown..]);
        }
        self.messages.push(Message::new("assistant", reply.clone()));
        Ok(reply)
    }
}
