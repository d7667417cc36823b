//! LoRA adapters as files: PEFT's (`adapter_config.json` + `adapter_model.safetensors`) and
//! llama.cpp's GGUF LoRA, read and written from bytes (so the browser can use them too), and
//! merged into a base model's weights at load: W += scale · B · A on the dequantized matrix,
//! which is then stored on the GPU as f32 (a side path would keep quantized bases small; the
//! merge keeps the forward pass unchanged).
//!
//! In memory an adapter is in Hugging Face's row order. llama.cpp's converter permutes a Llama
//! base's Q and K rows for its adjacent-pairs RoPE, and applies the same permutation to the
//! rows of `lora_b` (its `LoraTorchTensor.permute` touches B only); both directions happen
//! here, where a GGUF file is read, written or merged into.

use std::collections::HashMap;

use safetensors::tensor::TensorView as StView;
use safetensors::Dtype;

use super::llama::PROJECTIONS;
use crate::error::{Error, Result};
use crate::models::builder::Naming;
use crate::models::ModelConfig;
use crate::weights::gguf::Gguf;
use crate::weights::safetensors::SafetensorsSource;
use crate::weights::{DType, TensorMeta, TensorSource, TensorView};

/// llama.cpp's names of `PROJECTIONS`, in the same order.
pub const GGUF_PROJECTIONS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
/// PEFT's `target_modules` names of `PROJECTIONS`, in the same order.
pub const TARGET_NAMES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// One projection's low-rank update, Hugging Face row order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub a: Vec<f32>, // lora_A (rank, inp)
    pub b: Vec<f32>, // lora_B (out, rank)
    pub out: usize,
    pub inp: usize,
}

/// A LoRA adapter: y = x · (W + scale · B · A)ᵀ for every targeted projection.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraAdapter {
    pub rank: usize,
    pub alpha: f32,
    /// [layer][PROJECTIONS index]; None where the projection is not targeted.
    pub layers: Vec<Vec<Option<LoraPair>>>,
    /// Where it came from, for messages.
    pub source: String,
}

/// PEFT's tensor name of projection `i` of layer `l`, `ab` = "A" or "B".
pub fn peft_name(l: usize, i: usize, ab: &str) -> String {
    format!("base_model.model.model.layers.{l}.{}.lora_{ab}.weight", PROJECTIONS[i])
}

/// `--targets q,k,v,o,gate,up,down` as PROJECTIONS indices (`q` or `q_proj` both work).
pub fn parse_targets(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let i = TARGET_NAMES.iter().position(|n| *n == t || n.strip_suffix("_proj") == Some(t));
        match i {
            Some(i) if !out.contains(&i) => out.push(i),
            Some(_) => {}
            None => return Err(Error::arg("--targets", format!("'{t}' is not one of q, k, v, o, gate, up, down"))),
        }
    }
    if out.is_empty() {
        return Err(Error::arg("--targets", "name at least one projection"));
    }
    out.sort_unstable();
    Ok(out)
}

/// PEFT's adapter_config.json, the fields quill reads.
#[derive(serde::Deserialize)]
struct PeftConfig {
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

impl LoraAdapter {
    /// alpha / rank, as PEFT scales the update.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Targeted projections (PROJECTIONS indices) of the first layer that has any.
    pub fn targets(&self) -> Vec<usize> {
        let layer = self.layers.iter().find(|l| l.iter().any(Option::is_some));
        layer.map(|l| (0..l.len()).filter(|&i| l[i].is_some()).collect()).unwrap_or_default()
    }

    /// Reads a PEFT adapter: `config` is adapter_config.json, `weights` adapter_model.safetensors.
    pub fn from_peft(config: &[u8], weights: &[u8], dir: &str) -> Result<Self> {
        let cfg_file = format!("{dir}/adapter_config.json");
        let cfg: PeftConfig = serde_json::from_slice(config).map_err(|e| Error::format(&cfg_file, format!("malformed adapter_config.json: {e}")))?;
        let unsupported = [(cfg.use_dora, "use_dora"), (cfg.use_rslora, "use_rslora"), (cfg.fan_in_fan_out, "fan_in_fan_out"), (!cfg.rank_pattern.is_empty(), "rank_pattern"), (!cfg.alpha_pattern.is_empty(), "alpha_pattern")];
        if let Some((_, field)) = unsupported.iter().find(|(on, _)| *on) {
            return Err(Error::format(&cfg_file, format!("'{field}' is set: quill reads plain LoRA adapters only")));
        }
        if cfg.r == 0 || !cfg.lora_alpha.is_finite() {
            return Err(Error::format(&cfg_file, format!("r = {} and lora_alpha = {} do not make a LoRA scale", cfg.r, cfg.lora_alpha)));
        }
        let file = format!("{dir}/adapter_model.safetensors");
        let src = SafetensorsSource::parse(&[(file.clone(), weights)])?;
        let mut pairs = HashMap::new();
        for name in src.names() {
            let Some((l, i, ab)) = parse_peft_name(name) else {
                return Err(Error::tensor(&file, name, "is not a lora_A / lora_B of a q, k, v, o, gate, up or down projection of a decoder layer"));
            };
            pairs.entry((l, i)).or_insert([None, None])[(ab == 'B') as usize] = src.tensor(name)?;
        }
        Self::assemble(cfg.r, cfg.lora_alpha, &file, pairs, |l, i, ab| peft_name(l, i, &ab.to_string()))
    }

    /// Reads llama.cpp's GGUF LoRA (`general.type = adapter`, `adapter.type = lora`) for a base
    /// whose heads `cfg` gives (lora_b's Q/K rows are un-permuted with them).
    pub fn from_gguf(bytes: &[u8], file: &str, cfg: &ModelConfig) -> Result<Self> {
        let g = Gguf::parse(file, bytes)?;
        for (key, want) in [("general.type", "adapter"), ("adapter.type", "lora")] {
            let got = g.get(key).and_then(|v| v.as_str());
            if got != Some(want) {
                return Err(Error::format(file, format!("{key} is {got:?}, not \"{want}\": not a GGUF LoRA adapter")));
            }
        }
        let alpha = g.f64("adapter.lora.alpha")? as f32;
        let mut pairs = HashMap::new();
        let mut rank = 0;
        for t in &g.tensors {
            let parsed = parse_gguf_name(&t.name);
            let Some((l, i, ab)) = parsed else {
                return Err(Error::tensor(file, &t.name, "is not a lora_a / lora_b of a decoder layer's projection"));
            };
            if ab == 'A' {
                rank = t.shape.first().copied().unwrap_or(0);
            }
            pairs.entry((l, i)).or_insert([None, None])[(ab == 'B') as usize] = g.tensor(&t.name)?;
        }
        let mut ad = Self::assemble(rank, alpha, file, pairs, gguf_name)?;
        ad.permute_qk(cfg, false);
        Ok(ad)
    }

    /// Checks and converts (layer, projection) → [A, B] views into an adapter of `rank`.
    fn assemble(rank: usize, alpha: f32, file: &str, pairs: HashMap<(usize, usize), [Option<TensorView>; 2]>, name: impl Fn(usize, usize, char) -> String) -> Result<Self> {
        if pairs.is_empty() {
            return Err(Error::format(file, "holds no LoRA tensors"));
        }
        let n_layers = pairs.keys().map(|k| k.0 + 1).max().unwrap_or(0);
        let mut layers = vec![vec![None; PROJECTIONS.len()]; n_layers];
        for ((l, i), [a, b]) in pairs {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::tensor(file, name(l, i, 'A'), "has no matching lora_B (or lora_A)"));
            };
            let (&[ar, inp], &[out, br]) = (&a.shape[..], &b.shape[..]) else {
                return Err(Error::tensor(file, &a.name, format!("shapes {:?} and {:?} are not matrices", a.shape, b.shape)));
            };
            if ar != rank || br != rank {
                return Err(Error::tensor(file, &b.name, format!("rank {ar} / {br}, expected the adapter's {rank} (A is {:?}, B is {:?})", a.shape, b.shape)));
            }
            layers[l][i] = Some(LoraPair { a: a.to_f32()?, b: b.to_f32()?, out, inp });
        }
        Ok(Self { rank, alpha, layers, source: file.to_string() })
    }

    /// PEFT's adapter_config.json and adapter_model.safetensors, for a base named `base`.
    pub fn to_peft(&self, base: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let targets: Vec<&str> = self.targets().iter().map(|&i| TARGET_NAMES[i]).collect();
        let config = serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
            "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": 0.0, "bias": "none",
            "target_modules": targets, "fan_in_fan_out": false, "use_rslora": false, "use_dora": false,
            "inference_mode": true, "init_lora_weights": true,
        });
        let mut tensors = Vec::new();
        for (l, i, p) in self.pairs() {
            tensors.push((peft_name(l, i, "A"), vec![self.rank, p.inp], bytemuck::cast_slice(&p.a).to_vec()));
            tensors.push((peft_name(l, i, "B"), vec![p.out, self.rank], bytemuck::cast_slice(&p.b).to_vec()));
        }
        let views: Vec<(String, StView)> = tensors
            .iter()
            .map(|(n, shape, bytes)| StView::new(Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::format("adapter_model.safetensors", format!("cannot write: {e}")))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let weights = safetensors::serialize(views, Some(meta)).map_err(|e| Error::format("adapter_model.safetensors", format!("cannot write: {e}")))?;
        let config = serde_json::to_vec_pretty(&config).map_err(|e| Error::format("adapter_config.json", e.to_string()))?;
        Ok((config, weights))
    }

    /// llama.cpp's GGUF LoRA (f32 tensors, Q/K lora_b rows permuted for `cfg`'s heads).
    pub fn to_gguf(&self, cfg: &ModelConfig) -> Vec<u8> {
        let mut ad = self.clone();
        ad.permute_qk(cfg, true);
        let kv = [
            ("general.architecture", GgufValue::Str(cfg.arch.name())),
            ("general.type", GgufValue::Str("adapter")),
            ("adapter.type", GgufValue::Str("lora")),
            ("adapter.lora.alpha", GgufValue::F32(self.alpha)),
        ];
        let mut tensors = Vec::new();
        for (l, i, p) in ad.pairs() {
            tensors.push((gguf_name(l, i, 'A'), [p.inp as u64, self.rank as u64], &p.a));
            tensors.push((gguf_name(l, i, 'B'), [self.rank as u64, p.out as u64], &p.b));
        }
        write_gguf(&kv, &tensors)
    }

    /// (layer, projection, pair) of every targeted projection.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(l, ps)| ps.iter().enumerate().filter_map(move |(i, p)| p.as_ref().map(|p| (l, i, p))))
    }

    /// Permutes (`to_gguf`) or un-permutes lora_b's rows of Q and K as llama.cpp's converter
    /// does for a Llama base; other architectures' GGUF rows are in Hugging Face's order.
    fn permute_qk(&mut self, cfg: &ModelConfig, to_gguf: bool) {
        if cfg.arch.name() != "llama" {
            return;
        }
        for layer in &mut self.layers {
            for (i, heads) in [(0, cfg.n_heads), (1, cfg.n_kv_heads)] {
                if let Some(p) = &mut layer[i] {
                    p.b = permute_rows(&p.b, p.out, self.rank, heads, to_gguf);
                }
            }
        }
    }

    /// The base's tensors with this adapter merged (W + `scale` · B · A as f32), read through
    /// `naming`'s names. A projection the base lacks, or whose shape differs, is an error naming
    /// both tensors and shapes.
    pub fn merge<'a>(&self, base: &'a dyn TensorSource, naming: Naming, cfg: &ModelConfig, scale: f32) -> Result<MergedSource<'a>> {
        let mut ad = self.clone();
        if naming == Naming::Gguf {
            ad.permute_qk(cfg, true);
        }
        let mut merged = HashMap::new();
        for (l, i, p) in ad.pairs() {
            let name = match naming {
                Naming::Gguf => format!("blk.{l}.{}.weight", GGUF_PROJECTIONS[i]),
                Naming::HuggingFace => format!("model.layers.{l}.{}.weight", PROJECTIONS[i]),
            };
            let lora = peft_name(l, i, "B");
            let w = base.tensor(&name)?.ok_or_else(|| Error::tensor(&self.source, &lora, format!("targets {name}, which {} does not have (an adapter for another model?)", base.file_name())))?;
            if w.shape != [p.out, p.inp] {
                let msg = format!("B·A is [{}, {}] but {name} in {} is {:?} (an adapter for another model?)", p.out, p.inp, base.file_name(), w.shape);
                return Err(Error::tensor(&self.source, &lora, msg));
            }
            let mut w32 = w.to_f32()?;
            add_low_rank(&mut w32, p, self.rank, scale);
            merged.insert(name, (w.shape.clone(), w32));
        }
        Ok(MergedSource { base, merged })
    }
}

/// An adapter's files as bytes, before the base's config is known (a GGUF LoRA's Q/K rows
/// need the base's heads to be read).
pub enum LoraFiles<'a> {
    /// A PEFT directory: adapter_config.json, adapter_model.safetensors.
    Peft { dir: String, config: &'a [u8], weights: &'a [u8] },
    /// llama.cpp's GGUF LoRA.
    Gguf { file: String, bytes: &'a [u8] },
}

/// An adapter to merge at load and its `--lora-scale` (a multiplier of alpha / rank, as
/// llama.cpp's `--lora-scaled`).
pub struct LoraSpec<'a> {
    pub files: LoraFiles<'a>,
    pub scale: f32,
}

impl LoraSpec<'_> {
    /// Merges the adapter into `base` (a model of `cfg`, named as `naming` says).
    pub fn merge<'b>(&self, base: &'b dyn TensorSource, naming: Naming, cfg: &ModelConfig) -> Result<MergedSource<'b>> {
        let ad = match &self.files {
            LoraFiles::Peft { dir, config, weights } => LoraAdapter::from_peft(config, weights, dir)?,
            LoraFiles::Gguf { file, bytes } => LoraAdapter::from_gguf(bytes, file, cfg)?,
        };
        if !self.scale.is_finite() {
            return Err(Error::arg("--lora-scale", format!("{} is not a finite number", self.scale)));
        }
        ad.merge(base, naming, cfg, self.scale * ad.scale())
    }
}

/// w (out, inp) += scale · B (out, rank) · A (rank, inp).
fn add_low_rank(w: &mut [f32], p: &LoraPair, rank: usize, scale: f32) {
    for (o, row) in w.chunks_exact_mut(p.inp).enumerate() {
        for r in 0..rank {
            let b = scale * p.b[o * rank + r];
            for (wi, ai) in row.iter_mut().zip(&p.a[r * p.inp..(r + 1) * p.inp]) {
                *wi += b * ai;
            }
        }
    }
}

/// llama.cpp's `permute(w, n_head)`: within each head, row s·half + j (Hugging Face) goes to
/// 2j + s (adjacent pairs); `forward` = false undoes it. `m` is (rows, cols).
pub fn permute_rows(m: &[f32], rows: usize, cols: usize, n_head: usize, forward: bool) -> Vec<f32> {
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    let mut out = vec![0.0; m.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for j in 0..half {
                let (hf, gg) = (h * hd + s * half + j, h * hd + 2 * j + s);
                let (from, to) = if forward { (hf, gg) } else { (gg, hf) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&m[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn parse_peft_name(name: &str) -> Option<(usize, usize, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let i = PROJECTIONS.iter().position(|p| rest.starts_with(&format!("{p}.lora_")))?;
    let ab = match &rest[PROJECTIONS[i].len()..] {
        ".lora_A.weight" => 'A',
        ".lora_B.weight" => 'B',
        _ => return None,
    };
    Some((l.parse().ok()?, i, ab))
}

fn gguf_name(l: usize, i: usize, ab: char) -> String {
    format!("blk.{l}.{}.weight.lora_{}", GGUF_PROJECTIONS[i], ab.to_ascii_lowercase())
}

fn parse_gguf_name(name: &str) -> Option<(usize, usize, char)> {
    let rest = name.strip_prefix("blk.")?;
    let (l, rest) = rest.split_once('.')?;
    let (proj, ab) = rest.split_once(".weight.lora_")?;
    let i = GGUF_PROJECTIONS.iter().position(|p| *p == proj)?;
    let ab = match ab {
        "a" => 'A',
        "b" => 'B',
        _ => return None,
    };
    Some((l.parse().ok()?, i, ab))
}

/// A base model's tensors with some replaced by merged f32 copies.
pub struct MergedSource<'a> {
    base: &'a dyn TensorSource,
    merged: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorSource for MergedSource<'_> {
    fn file_name(&self) -> &str {
        self.base.file_name()
    }
    fn meta(&self, name: &str) -> Option<TensorMeta> {
        match self.merged.get(name) {
            Some((shape, w)) => Some(TensorMeta { shape: shape.clone(), dtype: DType::F32, n_bytes: 4 * w.len() }),
            None => self.base.meta(name),
        }
    }
    fn read(&self, name: &str, range: std::ops::Range<usize>) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self.merged.get(name) {
            Some((_, w)) => {
                let bytes: &[u8] = bytemuck::cast_slice(w);
                bytes.get(range.clone()).map(std::borrow::Cow::Borrowed).ok_or_else(|| Error::tensor(self.base.file_name(), name, format!("bytes {range:?} of its {} asked for", bytes.len())))
            }
            None => self.base.read(name, range),
        }
    }
}

enum GgufValue<'a> {
    Str(&'a str),
    F32(f32),
}

/// A GGUF v3 file of metadata `kv` and f32 tensors (name, ne innermost first, data), aligned to
/// 32 bytes as llama.cpp's writer does by default.
fn write_gguf(kv: &[(&str, GgufValue)], tensors: &[(String, [u64; 2], &Vec<f32>)]) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    let pad = |b: &mut Vec<u8>| b.resize(b.len().div_ceil(32) * 32, 0);
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        string(&mut b, key);
        match value {
            GgufValue::Str(s) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                string(&mut b, s);
            }
            GgufValue::F32(x) => {
                b.extend_from_slice(&6u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    let mut offset = 0u64;
    for (name, ne, data) in tensors {
        string(&mut b, name);
        b.extend_from_slice(&2u32.to_le_bytes());
        ne.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
        b.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
        b.extend_from_slice(&offset.to_le_bytes());
        offset += (data.len() as u64 * 4).div_ceil(32) * 32;
    }
    pad(&mut b);
    for (_, _, data) in tensors {
        b.extend_from_slice(bytemuck::cast_slice(data));
        pad(&mut b);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const LORA: &[u8] = include_bytes!("../../tests/fixtures/train/lora/adapter_model.safetensors");
    const LORA_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/train/lora/adapter_config.json");
    const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/llama-tiny/config.json");

    fn tiny_cfg() -> ModelConfig {
        crate::models::registry::from_hf_json(CONFIG, "config.json").unwrap().1
    }

    #[test]
    fn reads_the_peft_fixture() {
        let ad = LoraAdapter::from_peft(LORA_CONFIG, LORA, "lora").unwrap();
        assert_eq!((ad.rank, ad.alpha, ad.scale(), ad.layers.len()), (4, 8.0, 2.0, 2));
        assert_eq!(ad.targets(), (0..7).collect::<Vec<_>>());
        let q = ad.layers[0][0].as_ref().unwrap();
        assert_eq!((q.out, q.inp), (64, 64));
        assert!(q.b.iter().any(|&x| x != 0.0), "the fixture's B is non-zero");
    }

    #[test]
    fn peft_and_gguf_round_trips_are_exact() {
        let cfg = tiny_cfg();
        let ad = LoraAdapter::from_peft(LORA_CONFIG, LORA, "lora").unwrap();
        let (config, weights) = ad.to_peft("llama-tiny").unwrap();
        let back = LoraAdapter::from_peft(&config, &weights, "lora").unwrap();
        assert_eq!(back.layers, ad.layers);
        let gguf = ad.to_gguf(&cfg);
        let g = Gguf::parse("a.gguf", &gguf).unwrap();
        // On file, Q's lora_b rows are in llama.cpp's order: row 1 of head 0 is HF's row 8 (head dim 16).
        let b = g.tensor("blk.0.attn_q.weight.lora_b").unwrap().unwrap().to_f32().unwrap();
        let hf = &ad.layers[0][0].as_ref().unwrap().b;
        assert_eq!(&b[4..8], &hf[8 * 4..9 * 4]);
        assert_eq!(g.tensor("blk.1.ffn_down.weight.lora_a").unwrap().unwrap().shape, [4, 128]);
        let back = LoraAdapter::from_gguf(&gguf, "a.gguf", &cfg).unwrap();
        assert_eq!((back.rank, back.alpha, &back.layers), (ad.rank, ad.alpha, &ad.layers));
    }

    #[test]
    fn permutation_is_llama_cpps() {
        // Two heads of 4 rows, one column: HF rows [0 1 2 3 | 4 5 6 7] pair (0, 2), (1, 3) per head.
        let m: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = permute_rows(&m, 8, 1, 2, true);
        assert_eq!(p, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&p, 8, 1, 2, false), m);
    }

    #[test]
    fn merge_adds_scaled_b_times_a() {
        let p = LoraPair { a: vec![1.0, 2.0, 3.0], b: vec![1.0, -1.0], out: 2, inp: 3 };
        let mut w = vec![0.5; 6];
        add_low_rank(&mut w, &p, 1, 2.0);
        assert_eq!(w, [2.5, 4.5, 6.5, -1.5, -3.5, -5.5]);
    }

    #[test]
    fn bad_adapters_name_the_tensor() {
        let e = LoraAdapter::from_peft(br#"{"r": 4, "lora_alpha": 8, "use_dora": true}"#, LORA, "d").unwrap_err().to_string();
        assert!(e.contains("use_dora"), "{e}");
        let e = LoraAdapter::from_peft(b"{", LORA, "d").unwrap_err().to_string();
        assert!(e.contains("adapter_config.json"), "{e}");
        // Rank 4 tensors under a config that says 8.
        let e = LoraAdapter::from_peft(br#"{"r": 8, "lora_alpha": 8}"#, LORA, "d").unwrap_err().to_string();
        assert!(e.contains("rank 4") && e.contains("lora_B"), "{e}");
        let e = parse_targets("q,x").unwrap_err().to_string();
        assert!(e.contains("'x'"), "{e}");
        assert_eq!(parse_targets("v_proj,q").unwrap(), [0, 2]);
    }
}
