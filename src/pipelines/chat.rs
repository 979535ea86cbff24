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
        // As transformers renders them: blocks trimmed of their newline and leading space.
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("strftime_now", |format: String| strftime_now(&format));
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

/// The text of generated tokens, shown piece by piece as they arrive: each piece is the text of
/// the tokens not shown yet, once they end on a whole character (a byte-level token may end
/// inside one). Each step decodes only those tokens (and the last shown one, for the spacing
/// decoders put between tokens), so streaming a long reply costs what its tokens cost.
#[derive(Debug, Default)]
pub struct Streamed {
    pending: Vec<usize>,
    last_shown: Option<usize>,
    shown: String,
}

impl Streamed {
    /// At most this many tokens wait for a character to end before they are shown anyway.
    const MOST_PENDING: usize = 8;

    /// Adds the token `id`, passing to `on_text` the text it completes, if any.
    pub fn push(
        &mut self,
        tokenizer: &TextTokenizer,
        id: usize,
        on_text: &mut impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        self.pending.push(id);
        let text = self.pending_text(tokenizer)?;
        if text.ends_with('\u{FFFD}') && self.pending.len() < Self::MOST_PENDING {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(self.show(text, on_text))
    }

    /// Shows what is still pending.
    pub fn finish(
        &mut self,
        tokenizer: &TextTokenizer,
        on_text: &mut impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        if self.pending.is_empty() {
            return Ok(ControlFlow::Continue(()));
        }
        let text = self.pending_text(tokenizer)?;
        Ok(self.show(text, on_text))
    }

    /// Everything shown so far.
    pub fn text(&self) -> &str {
        &self.shown
    }

    /// The text the pending tokens add after the last shown one.
    fn pending_text(&self, tokenizer: &TextTokenizer) -> Result<String> {
        let Some(last) = self.last_shown else { return tokenizer.decode(&self.pending) };
        let before = tokenizer.decode(&[last])?;
        let with: Vec<usize> = std::iter::once(last).chain(self.pending.iter().copied()).collect();
        let after = tokenizer.decode(&with)?;
        match after.strip_prefix(before.as_str()) {
            Some(new) => Ok(new.to_string()),
            None => tokenizer.decode(&self.pending),
        }
    }

    fn show(&mut self, text: String, on_text: &mut impl FnMut(&str) -> ControlFlow<()>) -> ControlFlow<()> {
        self.last_shown = self.pending.last().copied();
        self.pending.clear();
        self.shown.push_str(&text);
        if text.is_empty() {
            ControlFlow::Continue(())
        } else {
            on_text(&text)
        }
    }
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
        // The template writes every special token itself: the tokenizer adds none.
        let ids = text.and_then(|text| self.tokenizer.encode_plain(&text));
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
        let mut shown = Streamed::default();
        let mut failed = None;
        let stop = &cfg.stop_tokens;
        let tokenizer = self.tokenizer;
        let result = self.session.generate_while(&ids[start..], &cfg, sampler, |t| {
            if stop.contains(&t) {
                return ControlFlow::Continue(());
            }
            reply_ids.push(t);
            shown.push(tokenizer, t, &mut on_text).unwrap_or_else(|e| {
                failed = Some(e);
                ControlFlow::Break(())
            })
        });
        let flushed =
            result.map(|_| ()).and(failed.map_or(Ok(()), Err)).and_then(|()| shown.finish(tokenizer, &mut on_text));
        if let Err(e) = flushed {
            self.messages.pop();
            return Err(e);
        }
        let reply = self.tokenizer.decode(&reply_ids)?;
        self.messages.push(Message::new("assistant", reply.clone()));
        Ok(reply)
    }
}

/// Today's date (UTC) in a `strftime` format, for templates that state it (Llama 3.1's
/// `strftime_now("%d %b %Y")`): `%d %m %Y %y %b %B %H %M %S %%`.
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rest / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rest / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rest % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: `%{}` is not a format this renderer knows",
                        other.map_or(String::new(), String::from)
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_as_transformers_does() {
        // Multi-line templates: trim_blocks and lstrip_blocks, loop controls, tojson, methods.
        let source = "{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n\
                      <{{ m.role }}>{{ m.content.strip() | tojson }}\n{% endfor %}\n\
                      {% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let text = t.render(&[Message::new("system", "x"), Message::new("user", " hi ")], true).unwrap();
        assert_eq!(text, "<user>\"hi\"\n<assistant>");
        let date = strftime_now("%d %b %Y").unwrap();
        assert_eq!(date.len(), 11, "{date}");
        assert!(strftime_now("%Q").is_err());
        let raising = ChatTemplate::new("{{ raise_exception('only user turns') }}", "", "").unwrap();
        assert!(raising.render(&[], false).unwrap_err().to_string().contains("only user turns"));
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
