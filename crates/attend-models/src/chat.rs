//! Chat prompts rendered from a model's Jinja chat template with minijinja.
//!
//! The template is rendered the way Hugging Face transformers renders
//! `tokenizer_config.json` chat templates, which is what GGUF's
//! `tokenizer.chat_template` holds: blocks trimmed (`trim_blocks`, `lstrip_blocks`),
//! `break`/`continue` allowed, a `raise_exception(message)` function, and the
//! variables `messages`, `add_generation_prompt`, `bos_token` and `eos_token`. The
//! Python string and dict methods templates commonly call (`strip`, `startswith`,
//! `items` and so on) are provided by a method fallback.

use minijinja::value::{Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State};
use serde::Serialize;

use crate::gguf::{Gguf, GgufError, OptionalKey};
use crate::tokenizer::Tokenizer;

/// The Gemma 3 turn format, for Gemma 3 GGUF files that carry no chat template.
const GEMMA3_TEMPLATE: &str = include_str!("chat_templates/gemma3.jinja");

const TEMPLATE_NAME: &str = "chat_template";

/// Errors from loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the model file has no chat template (tokenizer.chat_template); pass the prompt without chat formatting, or use a builtin template ({0})")]
    Missing(&'static str),
    #[error("unknown builtin chat template {0:?}: available are {1}")]
    UnknownBuiltin(String, &'static str),
    #[error("invalid chat template: {0}")]
    Syntax(String),
    #[error("failed to render the chat template: {0}")]
    Render(String),
    #[error("failed to read the chat template from the model file: {0}")]
    Metadata(String),
}

const BUILTIN_NAMES: &str = "gemma3";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS and EOS token texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`.
    ///
    /// # Errors
    /// [`ChatTemplateError::Syntax`] when the template does not parse.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(|e| ChatTemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Compiles the template a model file carries, or fails with a clear error when it
    /// has none.
    ///
    /// # Errors
    /// [`ChatTemplateError::Missing`] when `source` is `None`,
    /// [`ChatTemplateError::Syntax`] when it does not parse.
    pub fn from_file_template(
        source: Option<&str>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let source = source.ok_or(ChatTemplateError::Missing(BUILTIN_NAMES))?;
        Self::new(source, bos_token, eos_token)
    }

    /// Compiles a template that ships with attend, by name (`gemma3`).
    ///
    /// # Errors
    /// [`ChatTemplateError::UnknownBuiltin`] for another name.
    pub fn builtin(
        name: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        match name {
            "gemma3" => Self::new(GEMMA3_TEMPLATE, bos_token, eos_token),
            other => Err(ChatTemplateError::UnknownBuiltin(
                other.to_string(),
                BUILTIN_NAMES,
            )),
        }
    }

    /// Renders a conversation into a prompt.
    ///
    /// The prompt may begin with the BOS text when the template writes `bos_token`
    /// (Gemma 3 does); encode such a prompt without adding BOS again.
    ///
    /// # Errors
    /// [`ChatTemplateError::Render`] when the template fails, including a
    /// `raise_exception` call (for example roles that do not alternate).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ChatTemplateError::Render(describe(&e)))
    }
}

/// Formats a minijinja error with its detail and line, which `Display` alone omits.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail() {
        if !text.contains(detail) {
            text.push_str(": ");
            text.push_str(detail);
        }
    }
    text
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python `str` and `dict` methods that chat templates call and minijinja lacks.
fn python_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let arg_str = |index: usize| -> Result<Option<&str>, Error> {
        match args.get(index) {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{method}() expects a string argument, got {v}"),
                )
            }),
        }
    };

    if let Some(text) = value.as_str() {
        let trimmed = |chars: Option<&str>, start: bool, end: bool| -> String {
            let is_trimmed = |c: char| match chars {
                Some(set) => set.contains(c),
                None => c.is_whitespace(),
            };
            let mut s = text;
            if start {
                s = s.trim_start_matches(is_trimmed);
            }
            if end {
                s = s.trim_end_matches(is_trimmed);
            }
            s.to_string()
        };
        return Ok(match method {
            "strip" => Value::from(trimmed(arg_str(0)?, true, true)),
            "lstrip" => Value::from(trimmed(arg_str(0)?, true, false)),
            "rstrip" => Value::from(trimmed(arg_str(0)?, false, true)),
            "upper" => Value::from(text.to_uppercase()),
            "lower" => Value::from(text.to_lowercase()),
            "startswith" => Value::from(text.starts_with(arg_str(0)?.unwrap_or(""))),
            "endswith" => Value::from(text.ends_with(arg_str(0)?.unwrap_or(""))),
            "replace" => {
                let (Some(from), Some(to)) = (arg_str(0)?, arg_str(1)?) else {
                    return Err(Error::new(
                        ErrorKind::MissingArgument,
                        "replace() needs two arguments",
                    ));
                };
                Value::from(text.replace(from, to))
            }
            "split" => {
                let parts: Vec<Value> = match arg_str(0)? {
                    Some(sep) if !sep.is_empty() => text.split(sep).map(Value::from).collect(),
                    Some(_) => {
                        return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"))
                    }
                    None => text.split_whitespace().map(Value::from).collect(),
                };
                Value::from(parts)
            }
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        });
    }

    if value.kind() == ValueKind::Map {
        let pairs = value.try_iter()?.map(|key| {
            let item = value.get_item(&key).unwrap_or(Value::UNDEFINED);
            (key, item)
        });
        return Ok(match method {
            "items" => Value::from(
                pairs
                    .map(|(k, v)| Value::from(vec![k, v]))
                    .collect::<Vec<_>>(),
            ),
            "keys" => Value::from(pairs.map(|(k, _)| k).collect::<Vec<_>>()),
            "values" => Value::from(pairs.map(|(_, v)| v).collect::<Vec<_>>()),
            "get" => {
                let key = args.first().cloned().unwrap_or(Value::UNDEFINED);
                let item = value.get_item(&key).unwrap_or(Value::UNDEFINED);
                if item.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    item
                }
            }
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        });
    }

    Err(Error::from(ErrorKind::UnknownMethod))
}

impl ChatTemplate {
    /// Compiles the chat template of a GGUF model, with its BOS and EOS texts.
    ///
    /// A file without `tokenizer.chat_template` gets the builtin template of its
    /// architecture when there is one (`gemma3`: Gemma 3 GGUF files often carry none).
    ///
    /// # Errors
    /// [`ChatTemplateError::Missing`] when the file has no template and no builtin
    /// matches its architecture, [`ChatTemplateError::Syntax`] when the template does
    /// not parse, [`ChatTemplateError::Metadata`] when a key has the wrong type.
    pub fn from_gguf(gguf: &Gguf, tokenizer: &Tokenizer) -> Result<Self, ChatTemplateError> {
        let metadata_error = |e: GgufError| ChatTemplateError::Metadata(e.to_string());
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        let bos_token = token_text(tokenizer.bos_id());
        let eos_token = token_text(tokenizer.eos_id());

        let source = gguf
            .get_str("tokenizer.chat_template")
            .optional()
            .map_err(metadata_error)?;
        if let Some(source) = source {
            return Self::new(source, bos_token, eos_token);
        }
        let architecture = gguf
            .get_str("general.architecture")
            .optional()
            .map_err(metadata_error)?;
        match architecture {
            Some("gemma3") => Self::builtin("gemma3", bos_token, eos_token),
            _ => Err(ChatTemplateError::Missing(BUILTIN_NAMES)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_str(source: &str) -> Result<String, ChatTemplateError> {
        let template = ChatTemplate::new(source, "<s>", "</s>")?;
        template.render(&[ChatMessage::new("user", "  hi  ")], true)
    }

    #[test]
    fn variables_are_bound() {
        let out = render_str(
            "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m['content'] }}{% endfor %}{{ add_generation_prompt }}{{ eos_token }}",
        )
        .unwrap();
        assert_eq!(out, "<s>user:  hi  True</s>");
    }

    #[test]
    fn string_methods_work() {
        let out = render_str(
            "{% set c = messages[0].content %}[{{ c.strip() }}|{{ c.lstrip() }}|{{ c.rstrip() }}|{{ c.upper() }}|{{ c.startswith('  h') }}|{{ c.endswith('x') }}|{{ c.replace('h', 'H') }}|{{ 'a,b'.split(',') | join('+') }}|{{ ' a  b '.split() | join('+') }}|{{ 'xxhixx'.strip('x') }}]",
        )
        .unwrap();
        assert_eq!(out, "[hi|hi  |  hi|  HI  |True|False|  Hi  |a+b|a+b|hi]");
    }

    #[test]
    fn dict_methods_work() {
        let out = render_str(
            "{% for k, v in messages[0].items() %}{{ k }}={{ v | trim }};{% endfor %}{{ messages[0].get('missing', 'dflt') }}",
        )
        .unwrap();
        assert_eq!(out, "role=user;content=hi;dflt");
    }

    #[test]
    fn loop_controls_work() {
        let out = render_str(
            "{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
        )
        .unwrap();
        assert_eq!(out, "012");
    }

    #[test]
    fn trim_and_lstrip_blocks_apply() {
        let out = render_str("  {% if true %}\nyes\n  {% endif %}\nend").unwrap();
        assert_eq!(out, "yes\nend");
    }

    #[test]
    fn raise_exception_is_a_render_error() {
        let err = render_str("{{ raise_exception('roles must alternate') }}").unwrap_err();
        match err {
            ChatTemplateError::Render(message) => {
                assert!(message.contains("roles must alternate"), "{message}")
            }
            other => panic!("expected a render error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_error_is_typed() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)));
    }

    #[test]
    fn missing_template_is_typed() {
        let err = ChatTemplate::from_file_template(None, "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Missing(_)));
        assert!(err.to_string().contains("tokenizer.chat_template"));
    }

    #[test]
    fn unknown_builtin_is_typed() {
        let err = ChatTemplate::builtin("llama9", "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::UnknownBuiltin(..)));
    }

    #[test]
    fn gemma3_builtin_rejects_non_alternating_roles() {
        let template = ChatTemplate::builtin("gemma3", "<bos>", "<eos>").unwrap();
        let messages = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        let err = template.render(&messages, true).unwrap_err();
        assert!(err.to_string().contains("alternate"), "{err}");
    }
}
