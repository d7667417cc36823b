//! Native model files: finds the default model, memory-maps GGUF and safetensors files and
//! hands their bytes to the shared loaders in `models::load`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::models::load::{load_gguf_lora, load_hf_lora, HfFiles, LoadOptions};
use crate::train::adapter::{LoraFiles, LoraSpec};
use crate::models::LoadedModel;
use crate::weights::source::{ByteSource, Bytes};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FETCH_COMMAND: &str = "scripts/fetch-model.sh";
/// Gemma 3 270M (Q4_K_M), the second test model: `scripts/fetch-model.sh gemma3-270m`.
pub const GEMMA3_270M_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Where `scripts/fetch-model.sh` stores models: $QUILL_MODELS, else
/// $XDG_CACHE_HOME/quill/models, else ~/.cache/quill/models.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QUILL_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    cache.join("quill").join("models")
}

/// $HOME, which must be an absolute path: with HOME unset or relative, a default under it would
/// silently be relative to the current directory. Then `/nonexistent-home` stands in, so every
/// use of the default fails with a message showing that path instead of reading or writing
/// somewhere unexpected.
pub fn home_dir() -> PathBuf {
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(h) if h.is_absolute() => h,
        _ => PathBuf::from(NO_HOME),
    }
}

/// What `home_dir` gives when HOME is unset or not absolute (named in messages).
pub const NO_HOME: &str = "/HOME-is-unset";

/// Reads a UTF-8 text file of at most `limit` bytes without ever holding more than `limit + 1`
/// bytes: the file may be endless (/dev/zero, a FIFO) or far larger than what it is for.
/// `arg` (the option that named the file) and `why` (what the limit comes from) are for the
/// error message.
pub fn read_text_bounded(path: &Path, limit: u64, arg: &str, why: &str) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if let Ok(meta) = file.metadata() {
        if meta.is_dir() {
            return Err(Error::arg(arg, format!("{} is a directory, not a text file", path.display())));
        }
        // A regular file says its size: refuse it before reading a byte.
        if meta.is_file() && meta.len() > limit {
            return Err(too_long(path, arg, limit, why, &format!("is {} bytes", meta.len())));
        }
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_long(path, arg, limit, why, &format!("holds more than {limit} bytes (quill stopped reading there)")));
    }
    String::from_utf8(bytes).map_err(|e| Error::arg(arg, format!("{} is not valid UTF-8 (first bad byte at offset {})", path.display(), e.utf8_error().valid_up_to())))
}

fn too_long(path: &Path, arg: &str, limit: u64, why: &str, size: &str) -> Error {
    Error::arg(arg, format!("{} {size}; at most {limit} bytes are read ({why})", path.display()))
}

pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// Where `scripts/fetch-model.sh gemma3-270m` stores Gemma 3 270M, beside the default model.
pub fn gemma3_270m_path() -> PathBuf {
    models_dir().join(GEMMA3_270M_FILE)
}

/// The default model, or an error saying how to fetch it.
pub fn default_model() -> Result<PathBuf> {
    let p = default_model_path();
    if p.is_file() {
        Ok(p)
    } else {
        let home = if p.starts_with(NO_HOME) { " (HOME is unset or not an absolute path: set it, or QUILL_MODELS)" } else { "" };
        Err(Error::arg(
            "--model",
            format!("no model given and the default model is not at {}{home}; fetch it with `{FETCH_COMMAND}` or pass --model <file.gguf | hf-dir>", p.display()),
        ))
    }
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Safety: the map is read-only and quill does not expect the file to change while loaded;
    // a file truncated under us would fault, as with any reader of a mapped file.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

/// A memory-mapped model file as a `ByteSource` for the loaders. Each range is copied out and
/// its pages handed back to the kernel (`MADV_DONTNEED`: the map is read-only, so a page
/// touched again is read again from the file), so loading holds the model once, on the GPU,
/// rather than once more in mapped pages (on lavapipe both count as this process's memory).
pub struct MappedFile {
    label: String,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(MappedFile { label: path.display().to_string(), map: map(path)? })
    }
}

impl ByteSource for MappedFile {
    fn len(&self) -> u64 {
        self.map.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let bytes = Bytes(&self.map).read(offset, len).map_err(|e| Error::format(&self.label, e.to_string()))?.into_owned();
        // Only the whole pages inside the range: its neighbours' may still be wanted.
        const PAGE: usize = 4096;
        let (start, end) = ((offset as usize).next_multiple_of(PAGE), (offset as usize + len) / PAGE * PAGE);
        if end > start {
            // Safety: DONTNEED on a read-only file map drops clean pages only, which the
            // kernel reads again from the file on the next access; nothing is lost.
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
        Ok(Cow::Owned(bytes))
    }
}

/// Most bytes quill reads of each small file of a model directory, or downloads of it from a
/// hub: a FIFO, /dev/zero or a huge file in its place cannot make quill hold more.
/// tokenizer.json is the large one (a few MB; 33 MB for Gemma's 262144 tokens).
pub fn small_file_cap(name: &str) -> u64 {
    match name {
        "tokenizer.json" => 128 << 20,
        "model.safetensors.index.json" => 32 << 20,
        _ => 8 << 20,
    }
}

/// A small file of a model directory (at most `small_file_cap` bytes), or None when absent.
fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let cap = small_file_cap(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::format(path.display().to_string(), format!("more than {cap} bytes, more than any such file of a model holds (quill stopped reading there)")));
    }
    Ok(Some(bytes))
}

/// The shard file names a `model.safetensors.index.json` lists in its `weight_map`, sorted and
/// without repeats; `label` names the index in errors. A name that would leave the model's
/// directory, or a map that names no file, is an error.
pub fn shard_names(index: &[u8], label: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(index).map_err(|e| Error::format(label, e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::format(label, "no weight_map object"))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::format(label, "weight_map names no shard file"));
    }
    for f in &files {
        if f.is_empty() || f.contains('/') || f.contains('\\') || f.contains("..") {
            return Err(Error::format(label, format!("shard name '{f}' leaves the directory")));
        }
    }
    Ok(files)
}

/// The safetensors files of a Hugging Face directory: the shards of
/// model.safetensors.index.json, or model.safetensors.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if let Some(bytes) = read_opt(&index)? {
        return Ok(shard_names(&bytes, &index.display().to_string())?.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::format(dir.display().to_string(), "no model.safetensors or model.safetensors.index.json in the directory"))
}

/// Loads a model from a GGUF file or a Hugging Face directory.
pub fn load_model(ctx: &Context, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_model_with(ctx, path, &LoadOptions::default(), progress)
}

/// Loads a model with weights stored as `opts` says.
pub fn load_model_with(ctx: &Context, path: &Path, opts: &LoadOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    load_model_lora(ctx, path, opts, None, progress)
}

/// Loads a model with the LoRA adapter at `lora.0` (a PEFT directory or a GGUF LoRA file)
/// merged into its weights at scale multiplier `lora.1`.
pub fn load_model_lora(ctx: &Context, path: &Path, opts: &LoadOptions, lora: Option<(&Path, f32)>, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedModel> {
    let adapter = lora.map(|(p, scale)| read_adapter(p).map(|files| (files, scale))).transpose()?;
    let spec = adapter.as_ref().map(|(files, scale)| files.spec(*scale));
    let lora = spec.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let label = path.display().to_string();
    if meta.is_file() {
        // The same tensor-by-tensor path as the browser's, from the memory map.
        let file = MappedFile::open(path)?;
        return load_gguf_lora(ctx, &label, &file, opts, lora, &mut |p| progress(p.bytes, p.total_bytes));
    }
    if !meta.is_dir() {
        // A FIFO, a device or a socket: neither a file to map nor a directory to look into.
        return Err(Error::arg("--model", format!("{label} is not a regular file or a directory (give a GGUF file or a Hugging Face model directory)")));
    }
    let config_path = path.join("config.json");
    let config = read_opt(&config_path)?.ok_or_else(|| Error::io(&config_path, std::io::ErrorKind::NotFound.into()))?;
    let shards = shard_paths(path)?;
    let maps: Vec<memmap2::Mmap> = shards.iter().map(|p| map(p)).collect::<Result<_>>()?;
    let tokenizer_json = read_opt(&path.join("tokenizer.json"))?;
    let tokenizer_config = read_opt(&path.join("tokenizer_config.json"))?;
    let template_file = path.join("chat_template.jinja");
    let template = read_opt(&template_file)?.map(|b| crate::tokenizer::template_text(b, &template_file.display().to_string())).transpose()?;
    let generation = read_opt(&path.join("generation_config.json"))?;
    let files = HfFiles {
        dir: label,
        config_json: &config,
        safetensors: shards.iter().zip(&maps).map(|(p, m)| (p.display().to_string(), &m[..])).collect(),
        tokenizer_json: tokenizer_json.as_deref(),
        tokenizer_config_json: tokenizer_config.as_deref(),
        chat_template: template.as_deref(),
        generation_config_json: generation.as_deref(),
    };
    load_hf_lora(ctx, &files, opts, lora, progress)
}

/// Runs `f` on a model's config, tokenizer and tensors as the file has them (a GGUF file or a
/// Hugging Face directory, mapped from disk), for training on it.
pub fn with_model_source<T>(path: &Path, f: impl FnOnce(crate::models::ModelConfig, crate::tokenizer::Tokenizer, &dyn crate::weights::TensorSource, crate::models::builder::Naming) -> Result<T>) -> Result<T> {
    use crate::models::{builder::Naming, registry};
    let label = path.display().to_string();
    if std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
        let m = map(path)?;
        let g = crate::weights::gguf::Gguf::parse(&label, &m)?;
        let (_, cfg) = registry::from_gguf(&g)?;
        let tokenizer = crate::tokenizer::Tokenizer::from_gguf(&g)?;
        return f(cfg, tokenizer, &g, Naming::Gguf);
    }
    let config_path = path.join("config.json");
    let config = read_opt(&config_path)?.ok_or_else(|| Error::io(&config_path, std::io::ErrorKind::NotFound.into()))?;
    let (_, cfg) = registry::from_hf_json(&config, &config_path.display().to_string())?;
    let tokenizer_json = read_opt(&path.join("tokenizer.json"))?.ok_or_else(|| Error::format(format!("{label}/tokenizer.json"), "missing: quill needs the model's tokenizer.json"))?;
    let tokenizer = crate::tokenizer::Tokenizer::from_hf(&tokenizer_json, read_opt(&path.join("tokenizer_config.json"))?.as_deref(), None, &label)?;
    let shards = shard_paths(path)?;
    let maps: Vec<memmap2::Mmap> = shards.iter().map(|p| map(p)).collect::<Result<_>>()?;
    let files: Vec<(String, &[u8])> = shards.iter().zip(&maps).map(|(p, m)| (p.display().to_string(), &m[..])).collect();
    let src = crate::weights::safetensors::SafetensorsSource::parse(&files)?;
    f(cfg, tokenizer, &src, Naming::HuggingFace)
}

/// An adapter's files read into memory (adapters are small: a few MB).
pub enum AdapterBytes {
    Peft { dir: String, config: Vec<u8>, weights: Vec<u8> },
    Gguf { file: String, bytes: Vec<u8> },
}

impl AdapterBytes {
    pub fn spec(&self, scale: f32) -> LoraSpec<'_> {
        let files = match self {
            AdapterBytes::Peft { dir, config, weights } => LoraFiles::Peft { dir: dir.clone(), config, weights },
            AdapterBytes::Gguf { file, bytes } => LoraFiles::Gguf { file: file.clone(), bytes },
        };
        LoraSpec { files, scale }
    }
}

/// Reads a LoRA adapter: a PEFT directory (adapter_config.json, adapter_model.safetensors) or
/// a GGUF LoRA file.
pub fn read_adapter(path: &Path) -> Result<AdapterBytes> {
    let label = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(AdapterBytes::Gguf { file: label, bytes: std::fs::read(path).map_err(|e| Error::io(path, e))? });
    }
    let read = |name: &str| std::fs::read(path.join(name)).map_err(|e| Error::io(path.join(name), e));
    Ok(AdapterBytes::Peft { dir: label, config: read("adapter_config.json")?, weights: read("adapter_model.safetensors")? })
}

/// Where `quill bench-device` keeps each adapter's measured peak.
fn peak_cache_path() -> PathBuf {
    models_dir().parent().map(Path::to_path_buf).unwrap_or_else(models_dir).join("device-peak.json")
}

fn adapter_key(ctx: &Context) -> String {
    let i = &ctx.info;
    format!("{} | {:?} | {} {}", i.name, i.backend, i.driver, i.driver_info)
}

/// The peak `quill bench-device` measured on this adapter, if any.
pub fn cached_peak(ctx: &Context) -> Option<crate::gpu::profiler::DevicePeak> {
    let bytes = std::fs::read(peak_cache_path()).ok()?;
    let map: std::collections::BTreeMap<String, crate::gpu::profiler::DevicePeak> = serde_json::from_slice(&bytes).ok()?;
    map.get(&adapter_key(ctx)).copied()
}

/// Stores this adapter's measured peak beside the others.
pub fn store_peak(ctx: &Context, peak: crate::gpu::profiler::DevicePeak) -> Result<PathBuf> {
    let path = peak_cache_path();
    let mut map: std::collections::BTreeMap<String, crate::gpu::profiler::DevicePeak> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    map.insert(adapter_key(ctx), peak);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(&map).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Replaces `path` with `bytes` so that a crash, a kill or a full disk at any moment leaves
/// either the old file or the new one, whole: the bytes go to a temporary file beside it,
/// are flushed to the disk, and the temporary file is renamed over `path` (then the folder
/// is flushed so the rename itself survives a power loss). When `keep_previous` is set, the
/// file being replaced stays as `path~` (one previous version). A failure leaves `path`
/// untouched and removes the temporary file.
pub fn atomic_write(path: &Path, bytes: &[u8], keep_previous: bool) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if keep_previous && path.is_file() {
        let mut prev = path.as_os_str().to_owned();
        prev.push("~");
        // A hard link keeps the old version without a window where `path` is missing.
        let prev = PathBuf::from(prev);
        let _ = std::fs::remove_file(&prev);
        if std::fs::hard_link(path, &prev).is_err() {
            std::fs::copy(path, &prev).map_err(|e| Error::io(&prev, e))?;
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod atomic_tests {
    use super::atomic_write;

    #[test]
    fn replaces_whole_and_keeps_previous() {
        let dir = std::env::temp_dir().join(format!("quill-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("story.txt");
        atomic_write(&p, b"one", true).unwrap();
        atomic_write(&p, b"one two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one two");
        assert_eq!(std::fs::read(dir.join("story.txt~")).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // A folder that does not exist is an error naming the temporary file's path.
        let bad = dir.join("missing").join("x.txt");
        let e = atomic_write(&bad, b"x", true).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
