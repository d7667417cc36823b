//! The tokenizer of a Hugging Face model folder: `tokenizer.json` and `tokenizer_config.json`.

use serde_json::Value as Json;

use super::{in_folder, largest_id, Tokenizer};
use crate::error::{Error, Result};

impl Tokenizer {
    /// Loads a Hugging Face tokenizer: `tokenizer.json`, optionally `tokenizer_config.json`
    /// (BOS/EOS tokens, `add_bos_token`, chat template) and `chat_template.jinja` (which, when
    /// present, replaces the config's template, as in transformers).
    ///
    /// `folder` names the model folder in errors, which then say e.g.
    /// `models/smollm2/tokenizer_config.json: ...`.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>, chat_template_jinja: Option<&str>, folder: &str) -> Result<Self> {
        let json_file = in_folder(folder, "tokenizer.json");
        let config_file = in_folder(folder, "tokenizer_config.json");
        // tokenizers 0.22 panics (instead of failing) on a JSON error inside "decoder": a syntax
        // error, or an escape that is no Unicode code point (found by fuzz/, kept in
        // fuzz/regressions/tokenizer_json/). So the syntax is checked first, and the decoder's
        // strings decoded in full (the rest is only skipped: skipping does not check escapes).
        // It also panics encoding with a post-processor whose template for one sequence names
        // the second (sequence B), so that is refused here too.
        #[derive(serde::Deserialize)]
        struct Checked {
            #[allow(dead_code)]
            decoder: Option<serde_json::Value>,
            post_processor: Option<serde_json::Value>,
            model: Option<super::limits::ModelSizes>,
        }
        let checked: Checked = serde_json::from_slice(tokenizer_json).map_err(|e| Error::format(&json_file, format!("not valid JSON: {e}")))?;
        if let Some(m) = &checked.model {
            m.check().map_err(|msg| Error::format(&json_file, msg))?;
        }
        if let Some(p) = &checked.post_processor {
            check_single_template(p).map_err(|msg| Error::format(&json_file, msg))?;
        }
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| Error::format(&json_file, e.to_string()))?;

        let config: Json = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::format(&config_file, e.to_string()))?,
            None => Json::Null,
        };
        // A special token is written either as "<s>" or as {"content": "<s>", ...}.
        let token_text = |key: &str| -> Option<String> {
            let v = config.get(key)?;
            v.as_str().or_else(|| v.get("content").and_then(Json::as_str)).map(str::to_string)
        };
        let id_of = |key: &str, text: &Option<String>| -> Option<u32> {
            let text = text.as_ref()?;
            let id = inner.token_to_id(text);
            if id.is_none() {
                log::warn!("{config_file}: {key} {text:?} is not in the vocabulary; ignored");
            }
            id
        };
        let bos_token = token_text("bos_token");
        let eos_token = token_text("eos_token");
        let bos_id = id_of("bos_token", &bos_token);
        let eos_ids: Vec<u32> = id_of("eos_token", &eos_token).into_iter().collect();
        if eos_ids.is_empty() {
            log::warn!("{folder}: no usable eos_token in tokenizer_config.json; generation stops only at the token limit");
        }

        // transformers adds BOS through tokenizer.json's post-processor (Llama 3) or because the
        // config says add_bos_token (Llama 2). We always encode without the post-processor and
        // add BOS ourselves, so find out whether it would have.
        let post_processor_adds_bos = match bos_id {
            Some(bos) => inner.encode("a", true).map(|e| e.get_ids().first() == Some(&bos)).unwrap_or(false),
            None => false,
        };
        let add_bos = config.get("add_bos_token").and_then(Json::as_bool).unwrap_or(post_processor_adds_bos);

        let (chat_template, template_origin) = match chat_template_jinja {
            Some(t) => (Some(t.to_string()), in_folder(folder, "chat_template.jinja")),
            None => (config_chat_template(&config, &config_file)?, format!("{config_file}: chat_template")),
        };
        Ok(Tokenizer {
            vocab_size: largest_id(&inner) + 1,
            inner,
            bos_id,
            eos_ids,
            add_bos,
            add_eos: false,
            chat_template,
            template_origin,
            template_is_default: false,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }
}

/// `chat_template` of tokenizer_config.json: a string, or a list of named templates of which
/// we take "default".
fn config_chat_template(config: &Json, config_file: &str) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |name: &str| list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some(name));
            Ok(named("default").and_then(|t| t.get("template")).and_then(Json::as_str).map(str::to_string))
        }
        Some(_) => Err(Error::format(config_file, "chat_template is neither a string nor a list of named templates")),
    }
}

/// A TemplateProcessing post-processor (alone or inside a Sequence) whose `single` template
/// refers only to sequence A, the one a single input has.
fn check_single_template(p: &Json) -> std::result::Result<(), String> {
    match p.get("type").and_then(Json::as_str) {
        Some("Sequence") => p.get("processors").and_then(Json::as_array).into_iter().flatten().try_for_each(check_single_template),
        Some("TemplateProcessing") => {
            let pieces = p.get("single").and_then(Json::as_array).into_iter().flatten();
            match pieces.filter_map(|piece| piece.get("Sequence")?.get("id")?.as_str()).find(|id| *id != "A") {
                Some(id) => Err(format!("post_processor: the template for a single sequence names sequence {id}, which it does not have")),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}
