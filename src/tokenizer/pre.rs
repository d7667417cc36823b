//! The pre-tokenizers of byte-level BPE GGUFs: how llama.cpp splits text before BPE for each
//! `tokenizer.ggml.pre` name (`llm_tokenizer_bpe` in llama-vocab.cpp), as `tokenizers`
//! pre-tokenizer JSON. Each regex splits every piece the previous one left, keeping matches and
//! the text between them ("Isolated"), as llama.cpp's `unicode_regex_split` does; then the
//! pieces become GPT-2's byte alphabet. A name not listed here is an error, never a guess.

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};

/// GPT-2's split (what the `ByteLevel` pre-tokenizer applies itself when `use_regex` is true).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3: numbers in groups of at most three digits, case-insensitive contractions.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: like Llama 3's but one digit per piece.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5: Qwen2's with combining marks kept on their letters.
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken: a word is an optional run of capitals then lower-case letters.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o and Llama 4: Tekken's words with contractions, Llama 3's numbers.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Falcon: punctuation runs first, then GPT-2's split, then numbers in threes.
const FALCON: [&str; 3] = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"];
/// DeepSeek Coder.
const DEEPSEEK_CODER: [&str; 5] = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"];
/// DeepSeek LLM (llama.cpp's `deepseek-llm`, copied from llama-vocab.cpp): newlines alone, then
/// words of cased letters (an explicit class, not \p{L}) with one leading space, ASCII and
/// full-width punctuation runs, trailing whitespace, CJK runs, and numbers.
const DEEPSEEK_LLM: [&str; 6] = [
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u{3000}-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    "\\p{N}+",
];
/// DeepSeek V3 (and R1).
const DEEPSEEK3: [&str; 3] = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
/// BLOOM, Poro and GPT-3 Finnish: words with their leading space, punctuation apart.
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// Every `tokenizer.ggml.pre` name quill knows, for the error that lists them.
pub(super) const KNOWN: &[&str] = &[
    "default", "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "jina-v2-code", "gigachat",
    "roberta-bpe", "mpt", "olmo", "jais", "trillion", "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
    "minerva-7b", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx",
    "smaug-bpe", "chatglm-bpe", "glm4", "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "qwen35", "tekken",
    "gpt-4o", "llama4", "minimax-m2", "falcon", "deepseek-coder", "deepseek-v3", "bloom", "poro-chat", "gpt3-finnish",
    "viking", "deepseek-llm", "a.x-4.0", "mellum", "modern-bert", "exaone4", "jina-v5-nano", "kormo", "f2llmv2", "kanana2",
    "talkie",
];

/// The pre-tokenizer for `pre`, and whether BPE keeps a piece that already is a token whole
/// (`ignore_merges`, which llama.cpp sets for the Llama 3 family).
pub(super) fn pre_tokenizer_json(file: &str, pre: &str) -> Result<(Json, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let splits = |regexes: &[&str]| {
        let mut parts: Vec<Json> =
            regexes.iter().map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})).collect();
        parts.push(byte_level(false));
        json!({"type": "Sequence", "pretokenizers": parts})
    };
    Ok(match pre {
        // "default" is what transformers' GGUF converter gives a byte-level file that names no
        // split: GPT-2's.
        "default" | "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code"
        | "gigachat" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" => {
            (byte_level(true), false)
        }
        // Every digit on its own first, then GPT-2's split. SmolLM's tokenizer.json has only
        // the GPT-2 split, but its vocabulary holds no multi-digit or " 2"-like tokens, so the
        // two agree (the tests check it).
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => (splits(&[r"\p{N}", GPT2]), false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => (splits(&[LLAMA3]), true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => (splits(&[LLAMA3]), false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" | "kormo" | "f2llmv2" => (splits(&[QWEN2]), false),
        "qwen35" => (splits(&[QWEN35]), false),
        "tekken" => (splits(&[TEKKEN]), false),
        "gpt-4o" | "llama4" | "minimax-m2" | "kanana2" | "talkie" => (splits(&[GPT4O]), false),
        "falcon" => (splits(&FALCON), false),
        "deepseek-llm" => (splits(&DEEPSEEK_LLM), false),
        "deepseek-coder" => (splits(&DEEPSEEK_CODER), false),
        "deepseek-v3" => (splits(&DEEPSEEK3), false),
        "bloom" | "poro-chat" | "gpt3-finnish" => (splits(&[BLOOM]), false),
        "viking" => (splits(&[BLOOM, r"\p{N}"]), false),
        other => {
            return Err(Error::Unsupported(format!(
                "{file}: tokenizer.ggml.pre = \"{other}\" is a pre-tokenizer quill does not know, so it cannot split text the way \
                 the model was trained; known: {}",
                KNOWN.join(", ")
            )))
        }
    })
}
