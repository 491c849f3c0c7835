//! `attend chat`: an interactive conversation that keeps the KV cache between
//! turns, feeding the model only the text each turn adds.

use std::io::{BufRead, Write};

use attend_models::chat::{ChatMessage, ChatTemplate};
use attend_models::sampling::StopReason;
use attend_models::{Engine, GenerateOutput, GenerateParams, Session};

use crate::common::write_error;
use crate::generate::{check_fits, open, print_stats, stop_reason_name, ModelArgs, SamplingArgs};

/// Options of `attend chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

/// A conversation and the part of it that the session's KV cache contains.
///
/// Invariants: `cached` is exactly the session's content, and when `fed_text`
/// is `Some`, its tokens are `cached` followed by `pending`.
struct Conversation {
    template: ChatTemplate,
    messages: Vec<ChatMessage>,
    /// Leading messages that are never dropped to make room (the system message).
    pinned: usize,
    /// The rendered conversation so far followed by the last reply as generated.
    /// `None` when the cache may not match the rendered text, as after a stop
    /// string, whose tokens are in the cache but not in the reply.
    fed_text: Option<String>,
    /// The last sampled token, which ended the previous turn without being fed.
    pending: Option<u32>,
    /// The token ids in the cache, in order.
    cached: Vec<u32>,
}

impl Conversation {
    fn new(engine: &Engine, system: Option<&str>) -> Result<Conversation, String> {
        let template = ChatTemplate::from_gguf(engine.decoder().file(), engine.tokenizer())
            .map_err(|e| format!("attend chat needs a chat template: {e}"))?;
        let messages: Vec<ChatMessage> = system
            .map(|text| ChatMessage::new("system", text))
            .into_iter()
            .collect();
        Ok(Conversation {
            template,
            pinned: messages.len(),
            messages,
            fed_text: None,
            pending: None,
            cached: Vec::new(),
        })
    }

    /// Returns the tokens to feed after the cache's content so that the cache
    /// contains the whole conversation with the generation prompt. The cheapest way that
    /// applies wins: the text added since the last turn (as llama.cpp's chat
    /// does, so a reply is never re-tokenized), else the full prompt when the
    /// cache is a token prefix of it, else the full prompt after a reset.
    fn next_tokens(&mut self, engine: &Engine, session: &mut Session) -> Result<Vec<u32>, String> {
        let full_text = self
            .template
            .render(&self.messages, true)
            .map_err(|e| e.to_string())?;
        if let Some(added) = self
            .fed_text
            .as_deref()
            .and_then(|fed| full_text.strip_prefix(fed))
        {
            let mut tokens: Vec<u32> = self.pending.into_iter().collect();
            let added = engine
                .tokenizer()
                .encode(added, false, true)
                .map_err(|e| e.to_string())?;
            tokens.extend(added);
            return Ok(tokens);
        }
        let full = engine
            .encode_chat(&self.messages, true)
            .map_err(|e| e.to_string())?;
        if !full.starts_with(&self.cached) {
            session.reset().map_err(|e| e.to_string())?;
            self.cached.clear();
        }
        Ok(full[self.cached.len()..].to_vec())
    }

    /// Returns the token count of the pinned messages and the newest message
    /// alone, the shortest prompt dropping old exchanges can reach.
    fn newest_alone(&self, engine: &Engine) -> Result<usize, String> {
        let mut messages = self.messages[..self.pinned].to_vec();
        messages.extend(self.messages.last().cloned());
        let tokens = engine
            .encode_chat(&messages, true)
            .map_err(|e| e.to_string())?;
        Ok(tokens.len())
    }

    /// Drops the oldest exchange after the pinned messages. Returns false when
    /// only the newest user message is left.
    fn drop_oldest_exchange(&mut self) -> bool {
        let droppable = self.messages.len() - self.pinned;
        if droppable <= 1 {
            return false;
        }
        // A user message and the reply that follows it; the newest user message stays.
        let count = 2.min(droppable - 1);
        self.messages.drain(self.pinned..self.pinned + count);
        true
    }

    /// Empties the cache record after `session` was reset.
    fn forget_cache(&mut self) {
        self.fed_text = None;
        self.pending = None;
        self.cached.clear();
    }

    /// Records a finished turn: `fed` tokens went into the cache before
    /// generation, and `output` is what the model replied.
    fn record_reply(&mut self, engine: &Engine, fed: &[u32], output: &GenerateOutput) {
        let prompt_text = self.template.render(&self.messages, true).ok();
        self.cached.extend_from_slice(fed);
        self.pending = None;
        if let Some((&last, fed_reply)) = output.tokens.split_last() {
            self.cached.extend_from_slice(fed_reply);
            self.pending = Some(last);
        }
        self.messages
            .push(ChatMessage::new("assistant", output.text.as_str()));
        // An end-of-generation token is pending too; its text is what the
        // template writes after a reply (`<|im_end|>`, `<end_of_turn>`).
        self.fed_text = match (&output.stop_reason, prompt_text) {
            (StopReason::StopString(_), _) | (_, None) => None,
            (StopReason::EndOfGeneration(id), Some(prompt)) => engine
                .tokenizer()
                .decode(&[*id], true)
                .ok()
                .map(|end| prompt + &output.text + &end),
            (StopReason::MaxTokens | StopReason::ContextFull, Some(prompt)) => {
                Some(prompt + &output.text)
            }
        };
    }
}

/// Runs `attend chat`: reads one user message per line from stdin and generates
/// a reply to each, keeping the KV cache between turns. A message that does not fit even after
/// dropping the older turns is reported and skipped; the exit status is then
/// a failure once input ends.
pub fn run_chat(args: &ChatArgs) -> Result<(), String> {
    let params = args.sampling.checked_params()?;
    let (engine, mut session) = open(&args.model)?;
    let mut conversation = Conversation::new(&engine, args.system.as_deref())?;
    let stdin = std::io::stdin();
    let file = engine.decoder().file();
    let name = file
        .get_str("general.name")
        .unwrap_or(&engine.decoder().config().architecture);
    eprintln!("chat with {name}; an empty line or end of input quits");
    let mut skipped = 0usize;
    loop {
        eprint!("> ");
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("failed to read a message from stdin: {e}"))?;
        let line = line.trim_end_matches(['\n', '\r']);
        // A line of spaces looks empty on the terminal, so it quits too.
        if read == 0 || line.trim().is_empty() {
            break;
        }
        conversation.messages.push(ChatMessage::new("user", line));
        match chat_turn(&engine, &mut session, &mut conversation, &params)? {
            Turn::Answered => {}
            Turn::TooLong(message) => {
                eprintln!("error: {message}");
                conversation.messages.pop();
                skipped += 1;
            }
        }
    }
    if skipped > 0 {
        return Err(format!(
            "{skipped} message(s) did not fit in --ctx {} and were skipped",
            session.context()
        ));
    }
    Ok(())
}

/// The outcome of one user message.
enum Turn {
    Answered,
    /// The message alone does not fit in the context; the text is the error.
    TooLong(String),
}

/// Generates the reply to the newest user message, dropping the oldest exchanges when the
/// conversation outgrows the context. A message that does not fit even alone
/// leaves the earlier turns in place.
fn chat_turn(
    engine: &Engine,
    session: &mut Session,
    conversation: &mut Conversation,
    params: &GenerateParams,
) -> Result<Turn, String> {
    let mut tokens = conversation.next_tokens(engine, session)?;
    if check_fits(&tokens, session).is_err() {
        let alone = conversation.newest_alone(engine)?;
        if alone >= session.context() {
            return Ok(Turn::TooLong(format!(
                "the message takes {alone} tokens in the chat template, which leaves no room in --ctx {}; pass a larger --ctx or a shorter message",
                session.context()
            )));
        }
        let mut dropped = 0usize;
        while check_fits(&tokens, session).is_err() && conversation.drop_oldest_exchange() {
            dropped += 1;
            session.reset().map_err(|e| e.to_string())?;
            conversation.forget_cache();
            tokens = conversation.next_tokens(engine, session)?;
        }
        eprintln!(
            "note: dropped the oldest {dropped} exchange(s) to fit the context of {} tokens",
            session.context()
        );
    }

    let mut stdout = std::io::stdout().lock();
    let mut written = Ok(());
    let output = engine
        .generate(session, &tokens, params, |piece| {
            if written.is_ok() {
                written = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|()| stdout.flush());
            }
        })
        .map_err(|e| e.to_string())?;
    written.map_err(write_error)?;
    writeln!(stdout).map_err(write_error)?;
    print_stats(&output, session, stop_reason_name(&output));
    conversation.record_reply(engine, &tokens, &output);
    Ok(Turn::Answered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{models_dir, SMOLLM2_FILE};
    use attend_models::sampling::{argmax, SamplingParams};

    fn engine(file: &str) -> Engine {
        let path = models_dir().unwrap().join(file);
        assert!(
            path.is_file(),
            "{} is missing; run scripts/fetch-models.sh",
            path.display()
        );
        Engine::open(&path).unwrap()
    }

    fn greedy(max_tokens: usize) -> GenerateParams {
        GenerateParams {
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop_strings: Vec::new(),
        }
    }

    /// Runs two turns and checks that the second turn's tokens, fed after the
    /// cache, give the logits that a fresh prefill of `cached ++ tokens` gives,
    /// so the cache record matches the session. Returns the second turn's
    /// token count.
    fn second_turn_matches_fresh_prefill(file: &str, first: &str, max_tokens: usize) -> usize {
        let engine = engine(file);
        let mut session = engine
            .decoder()
            .new_session(512, attend::kv::KvDtype::F32)
            .unwrap();
        let mut conversation = Conversation::new(&engine, None).unwrap();
        conversation.messages.push(ChatMessage::new("user", first));
        let tokens = conversation.next_tokens(&engine, &mut session).unwrap();
        let output = engine
            .generate(&mut session, &tokens, &greedy(max_tokens), |_| {})
            .unwrap();
        conversation.record_reply(&engine, &tokens, &output);
        assert_eq!(conversation.cached.len(), session.position());

        conversation
            .messages
            .push(ChatMessage::new("user", "And of Germany?"));
        let tokens = conversation.next_tokens(&engine, &mut session).unwrap();
        assert_eq!(conversation.cached.len(), session.position());
        let logits = engine.prefill(&mut session, &tokens).unwrap();

        let mut all = conversation.cached.clone();
        all.extend_from_slice(&tokens);
        let mut fresh = engine
            .decoder()
            .new_session(512, attend::kv::KvDtype::F32)
            .unwrap();
        let fresh_logits = engine.prefill(&mut fresh, &all).unwrap();
        // Splitting the same tokens into other forward calls can flip the 8-bit
        // rounding of an activation, which moves logits by a few tenths. The
        // bounds are those of attend-models' prefill-then-decode test, and a
        // cache that is off by one token exceeds the maximum.
        let diffs: Vec<f32> = logits
            .iter()
            .zip(&fresh_logits)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let worst = diffs.iter().fold(0.0f32, |m, &d| m.max(d));
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(worst < 1.5, "max logit difference {worst}");
        assert!(mean < 0.35, "mean logit difference {mean}");
        let mut sorted = fresh_logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 0.5 {
            assert_eq!(argmax(&logits), argmax(&fresh_logits));
        }
        tokens.len()
    }

    #[test]
    fn reply_cut_by_max_tokens_reuses_cache() {
        let fed =
            second_turn_matches_fresh_prefill(SMOLLM2_FILE, "What is the capital of France?", 8);
        assert!(fed < 20, "the second turn fed {fed} tokens");
    }

    #[test]
    fn reply_ended_by_end_token_reuses_cache() {
        let fed = second_turn_matches_fresh_prefill(SMOLLM2_FILE, "Hi", 64);
        assert!(fed < 20, "the second turn fed {fed} tokens");
    }

    #[test]
    fn gemma_second_turn_matches_fresh_prefill() {
        second_turn_matches_fresh_prefill("gemma-3-270m-q4_k_m.gguf", "Hi", 12);
    }

    #[test]
    fn oldest_exchange_drops_and_system_stays() {
        let engine = engine(SMOLLM2_FILE);
        let mut conversation = Conversation::new(&engine, Some("Be brief.")).unwrap();
        for (role, text) in [("user", "a"), ("assistant", "b"), ("user", "c")] {
            conversation.messages.push(ChatMessage::new(role, text));
        }
        assert!(conversation.drop_oldest_exchange());
        let contents: Vec<&str> = conversation
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(contents, ["Be brief.", "c"]);
        assert!(!conversation.drop_oldest_exchange());
    }
}
