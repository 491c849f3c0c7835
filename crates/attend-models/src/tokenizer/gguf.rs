//! Building a tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.

use crate::gguf::{Gguf, GgufError, OptionalKey};

use super::{Tokenizer, TokenizerError, TokenizerModel, TokenizerSpec};

/// Errors from reading a tokenizer out of a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("failed to read the tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

impl TokenizerSpec {
    /// Reads the tokenizer parts from a GGUF file's `tokenizer.ggml.*` keys.
    ///
    /// # Errors
    /// [`GgufTokenizerError::Gguf`] when a required key (`model`, `tokens`) is missing
    /// or a key has the wrong type; [`GgufTokenizerError::Tokenizer`] for an
    /// unsupported model name.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GgufTokenizerError> {
        let model = TokenizerModel::from_gguf_name(gguf.get_str("tokenizer.ggml.model")?)?;
        let pre = gguf
            .get_str("tokenizer.ggml.pre")
            .optional()?
            .map(str::to_string);
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let scores = gguf.get_f32_array("tokenizer.ggml.scores").optional()?;
        let token_types = gguf.get_i32_array("tokenizer.ggml.token_type").optional()?;
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")
            .optional()?
            .map(|merges| merges.into_iter().map(str::to_string).collect());
        let id = |key: &str| gguf.get_integer::<u32>(key).optional();
        let flag = |key: &str, default: bool| -> Result<bool, GgufError> {
            Ok(gguf.get_bool(key).optional()?.unwrap_or(default))
        };

        // Defaults where a key is absent follow llama.cpp: SentencePiece adds BOS and a
        // leading space, byte-level BPE adds neither.
        let is_spm = model == TokenizerModel::SentencePiece;
        Ok(Self {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            eot_id: id("tokenizer.ggml.eot_token_id")?,
            eom_id: id("tokenizer.ggml.eom_token_id")?,
            unknown_id: id("tokenizer.ggml.unknown_token_id")?,
            padding_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token", is_spm)?,
            add_eos: flag("tokenizer.ggml.add_eos_token", false)?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", is_spm)?,
        })
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    ///
    /// # Errors
    /// See [`TokenizerSpec::from_gguf`] and [`Tokenizer::from_spec`].
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GgufTokenizerError> {
        Ok(Self::from_spec(TokenizerSpec::from_gguf(gguf)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    fn spm_writer() -> GgufWriter {
        let mut writer = GgufWriter::new();
        writer.set_str("tokenizer.ggml.model", "llama");
        writer.set_str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "\u{2581}a", "a"]);
        writer.set_f32_array("tokenizer.ggml.scores", &[0.0, 0.0, 1.0, 0.5]);
        writer.set_i32_array("tokenizer.ggml.token_type", &[3, 3, 1, 1]);
        writer.set_u32("tokenizer.ggml.bos_token_id", 0);
        writer.set_u32("tokenizer.ggml.eos_token_id", 1);
        writer
    }

    fn build(writer: &GgufWriter) -> Result<Tokenizer, GgufTokenizerError> {
        let gguf = Gguf::from_bytes(writer.to_bytes()).unwrap();
        Tokenizer::from_gguf(&gguf)
    }

    #[test]
    fn spm_defaults_follow_llama_cpp() {
        // Without add_bos_token and add_space_prefix, SentencePiece adds both.
        let tokenizer = build(&spm_writer()).unwrap();
        assert_eq!(tokenizer.encode("a", true, true).unwrap(), vec![0, 2]);
        assert!(tokenizer.is_eog(1));
    }

    #[test]
    fn flags_from_file_override_defaults() {
        let mut writer = spm_writer();
        writer.set_bool("tokenizer.ggml.add_bos_token", false);
        writer.set_bool("tokenizer.ggml.add_space_prefix", false);
        let tokenizer = build(&writer).unwrap();
        assert_eq!(tokenizer.encode("a", true, true).unwrap(), vec![3]);
    }

    #[test]
    fn missing_model_key_is_an_error() {
        let mut writer = GgufWriter::new();
        writer.set_str_array("tokenizer.ggml.tokens", &["a"]);
        let err = build(&writer).unwrap_err();
        assert!(matches!(err, GgufTokenizerError::Gguf(_)), "{err}");
        assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
    }

    #[test]
    fn wrong_value_type_is_an_error() {
        let mut writer = spm_writer();
        writer.set_str("tokenizer.ggml.bos_token_id", "zero");
        let err = build(&writer).unwrap_err();
        assert!(matches!(err, GgufTokenizerError::Gguf(_)), "{err}");
    }

    #[test]
    fn unsupported_model_is_an_error() {
        let mut writer = spm_writer();
        writer.set_str("tokenizer.ggml.model", "bert");
        let err = build(&writer).unwrap_err();
        assert!(
            matches!(
                err,
                GgufTokenizerError::Tokenizer(TokenizerError::UnsupportedModel(_))
            ),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_bos_is_an_error() {
        let mut writer = spm_writer();
        writer.set_u32("tokenizer.ggml.bos_token_id", 99);
        let err = build(&writer).unwrap_err();
        assert!(
            matches!(
                err,
                GgufTokenizerError::Tokenizer(TokenizerError::SpecialIdOutOfRange { id: 99, .. })
            ),
            "{err}"
        );
    }
}
