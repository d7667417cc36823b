//! A weight builder scoped by name prefixes (candle's `VarBuilder`, for two spellings): a
//! block loads itself from `b.pp(layer prefix).index(i)`, reading `attn_q` or
//! `self_attn.q_proj` as the file's naming says. A missing or misshapen tensor is an error
//! naming it. The builder also decides storage (a function from the load options) and fusion: Q/K/V into one
//! weight, gate/up into one interleaved weight, where their storage types agree.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor, Weight};
use crate::weights::{DType, TensorSource, TensorView};

/// Which of a table's two spellings a file uses: llama.cpp's GGUF names or Hugging Face's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Gguf,
    HuggingFace,
}

/// A name (or prefix) in both spellings, without the `.weight` / `.bias` suffix. An empty
/// spelling means the file has no such tensor in that naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub gguf: &'static str,
    pub hf: &'static str,
}

/// `Name { gguf, hf }`, short for name tables.
pub const fn name(gguf: &'static str, hf: &'static str) -> Name {
    Name { gguf, hf }
}

/// Q, K and V projections: one weight whose rows are [q | k | v] (one dispatch), or three
/// when the file stores them in different formats. Each with its biases where present.
pub enum Qkv {
    Fused(Weight, Option<Tensor>),
    Split([Weight; 3], Option<[Tensor; 3]>),
}

/// Gate and up projections: one weight with interleaved rows (gate r at 2r, up r at 2r + 1)
/// whose kernel applies the GLU as it stores, or two.
pub enum GateUp {
    Fused(Weight),
    Split(Weight, Weight),
}

/// Rows `rows` of tensor `name` ([rows, cols] in the file): a part of a fused weight.
struct Part<'a> {
    view: TensorView<'a>,
    rows: std::ops::Range<usize>,
}

/// What every scope of one load shares.
struct Shared<'a> {
    ctx: &'a Context,
    src: &'a dyn TensorSource,
    naming: Naming,
    /// The GPU storage type of a matrix stored as `DType` with rows of `usize` columns.
    storage: &'a dyn Fn(DType, usize) -> DType,
    progress: RefCell<&'a mut dyn FnMut(u64)>,
}

/// A scope of the file's tensor names.
#[derive(Clone)]
pub struct Builder<'a> {
    shared: &'a Shared<'a>,
    prefix: String,
}

/// Runs `f` with a builder at the root of `src`'s names; `storage` picks each matrix's GPU
/// storage type (`LoadOptions::storage`); `progress` is called with the file bytes of each
/// tensor read.
pub fn with_builder<T>(ctx: &Context, src: &dyn TensorSource, naming: Naming, storage: &dyn Fn(DType, usize) -> DType, progress: &mut dyn FnMut(u64), f: impl FnOnce(&Builder) -> Result<T>) -> Result<T> {
    let shared = Shared { ctx, src, naming, storage, progress: RefCell::new(progress) };
    f(&Builder { shared: &shared, prefix: String::new() })
}

impl<'a> Builder<'a> {
    pub fn naming(&self) -> Naming {
        self.shared.naming
    }
    pub fn ctx(&self) -> &'a Context {
        self.shared.ctx
    }
    /// The file(s) read, for messages.
    pub fn file(&self) -> &str {
        self.shared.src.file_name()
    }

    /// The scope `prefix.` below this one.
    pub fn pp(&self, prefix: Name) -> Builder<'a> {
        self.push(self.spell(prefix))
    }
    /// The scope of block `i` below this one (`blk.3.`, `model.layers.3.`).
    pub fn index(&self, i: usize) -> Builder<'a> {
        self.push(&i.to_string())
    }
    fn push(&self, segment: &str) -> Builder<'a> {
        let prefix = if segment.is_empty() { self.prefix.clone() } else { format!("{}{segment}.", self.prefix) };
        Builder { shared: self.shared, prefix }
    }
    fn spell(&self, n: Name) -> &'static str {
        match self.shared.naming {
            Naming::Gguf => n.gguf,
            Naming::HuggingFace => n.hf,
        }
    }

    /// The file's full name of `n` + `suffix` (".weight", ".bias") in this scope.
    pub fn full_name(&self, n: Name, suffix: &str) -> String {
        format!("{}{}{suffix}", self.prefix, self.spell(n))
    }

    /// Does the file hold `n.weight` in this scope?
    pub fn has(&self, n: Name) -> bool {
        !self.spell(n).is_empty() && self.shared.src.meta(&self.full_name(n, ".weight")).is_some()
    }

    fn view(&self, full: &str, shape: &[usize]) -> Result<TensorView<'a>> {
        self.shared.src.expect(full, shape)
    }
    fn count(&self, bytes: usize) {
        (self.shared.progress.borrow_mut())(bytes as u64)
    }

    /// Tensor `full` of `shape`, dequantized to f32.
    pub fn read_f32(&self, full: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.view(full, shape)?;
        let data = t.to_f32().map_err(|e| Error::tensor(self.file(), full, e.to_string()))?;
        self.count(t.data.len());
        Ok(data)
    }
    /// `n.weight` as f32 (norm weights, tables).
    pub fn f32(&self, n: Name, shape: &[usize]) -> Result<Vec<f32>> {
        self.read_f32(&self.full_name(n, ".weight"), shape)
    }
    /// `n.weight` uploaded as an f32 tensor (norm weights).
    pub fn vector(&self, n: Name, shape: &[usize]) -> Result<Tensor> {
        self.upload(&self.full_name(n, ".weight"), shape, |_| {})
    }
    /// `n.weight` as an f32 tensor, each value plus one: Hugging Face Gemma stores RMSNorm
    /// weights as w and applies (1 + w); the sum in f32 is what transformers computes.
    pub fn vector_plus_one(&self, n: Name, shape: &[usize]) -> Result<Tensor> {
        self.upload(&self.full_name(n, ".weight"), shape, |d| d.iter_mut().for_each(|w| *w += 1.0))
    }
    /// `n.bias` uploaded as an f32 tensor.
    pub fn bias(&self, n: Name, shape: &[usize]) -> Result<Tensor> {
        self.upload(&self.full_name(n, ".bias"), shape, |_| {})
    }
    fn upload(&self, full: &str, shape: &[usize], adjust: impl FnOnce(&mut [f32])) -> Result<Tensor> {
        let mut data = self.read_f32(full, shape)?;
        adjust(&mut data);
        Tensor::upload_f32(self.ctx(), full, shape, &data)
    }

    /// `n.weight`, a [rows, cols] matrix, in the storage type the load options ask for.
    pub fn weight(&self, n: Name, shape: &[usize]) -> Result<Weight> {
        let full = self.full_name(n, ".weight");
        let view = self.view(&full, shape)?;
        self.parts_weight(&full, &[Part { rows: 0..shape[0], view }], false)?.ok_or_else(|| Error::tensor(self.file(), &full, "no storage type"))
    }

    /// An f32 weight from data the architecture converted itself (GPT-2's transposed Conv1D).
    pub fn weight_from_f32(&self, label: &str, shape: &[usize], data: &[f32]) -> Result<Weight> {
        Weight::from_f32(self.ctx(), label, shape, data)
    }

    /// Q, K and V from three tensors of `shapes`, fused where their storage types agree.
    pub fn qkv(&self, names: [Name; 3], shapes: [[usize; 2]; 3], bias: bool) -> Result<Qkv> {
        let full: Vec<String> = names.iter().map(|&n| self.full_name(n, ".weight")).collect();
        let parts = full.iter().zip(&shapes).map(|(f, s)| Ok(Part { view: self.view(f, s)?, rows: 0..s[0] })).collect::<Result<Vec<_>>>()?;
        let biases = if bias { Some(self.qkv_biases(names.map(|n| self.full_name(n, ".bias")), shapes)?) } else { None };
        self.qkv_from_parts(&full, parts, biases)
    }

    /// Q, K and V stored as one tensor `n` of rows [q | k | v] (Phi-3's `qkv_proj`).
    pub fn qkv_fused(&self, n: Name, shapes: [[usize; 2]; 3]) -> Result<Qkv> {
        let full = self.full_name(n, ".weight");
        let total = shapes.iter().map(|s| s[0]).sum();
        let view = self.view(&full, &[total, shapes[0][1]])?;
        let (q, k) = (shapes[0][0], shapes[1][0]);
        let parts = [0..q, q..q + k, q + k..total].map(|rows| Part { view: view.clone(), rows }).into_iter().collect();
        self.qkv_from_parts(&[full.clone(), full.clone(), full], parts, None)
    }

    fn qkv_biases(&self, names: [String; 3], shapes: [[usize; 2]; 3]) -> Result<[Vec<f32>; 3]> {
        Ok([self.read_f32(&names[0], &[shapes[0][0]])?, self.read_f32(&names[1], &[shapes[1][0]])?, self.read_f32(&names[2], &[shapes[2][0]])?])
    }

    fn qkv_from_parts(&self, full: &[String], parts: Vec<Part<'a>>, biases: Option<[Vec<f32>; 3]>) -> Result<Qkv> {
        let ctx = self.ctx();
        let cols = parts[0].view.shape[1];
        // The fused kernel's Split3 store wants whole 32-wide units per row.
        if cols % 32 == 0 {
            if let Some(w) = self.parts_weight(&full.join("+"), &parts, false)? {
                let b = biases.map(|b| Tensor::upload_f32(ctx, &full[0], &[b.iter().map(Vec::len).sum()], &b.concat())).transpose()?;
                return Ok(Qkv::Fused(w, b));
            }
        }
        let mut split = parts.iter().zip(full).map(|(p, f)| self.parts_weight(f, std::slice::from_ref(p), false)?.ok_or_else(|| Error::tensor(self.file(), f, "no storage type")));
        let w = [split.next().transpose()?, split.next().transpose()?, split.next().transpose()?];
        let [Some(wq), Some(wk), Some(wv)] = w else { return Err(Error::tensor(self.file(), &full[0], "expected three projections")) };
        let b = match biases {
            Some([bq, bk, bv]) => Some([Tensor::upload_f32(ctx, &full[0], &[bq.len()], &bq)?, Tensor::upload_f32(ctx, &full[1], &[bk.len()], &bk)?, Tensor::upload_f32(ctx, &full[2], &[bv.len()], &bv)?]),
            None => None,
        };
        Ok(Qkv::Split([wq, wk, wv], b))
    }

    /// Gate and up projections from two tensors of `shape`, fused where their storage types agree.
    pub fn gate_up(&self, gate: Name, up: Name, shape: [usize; 2]) -> Result<GateUp> {
        let full = [self.full_name(gate, ".weight"), self.full_name(up, ".weight")];
        let parts = vec![Part { view: self.view(&full[0], &shape)?, rows: 0..shape[0] }, Part { view: self.view(&full[1], &shape)?, rows: 0..shape[0] }];
        self.gate_up_from_parts(&full, parts)
    }

    /// Gate and up stored as one tensor `n` of rows [gate | up] (Phi-3's `gate_up_proj`).
    pub fn gate_up_stacked(&self, n: Name, shape: [usize; 2]) -> Result<GateUp> {
        let full = self.full_name(n, ".weight");
        let view = self.view(&full, &[2 * shape[0], shape[1]])?;
        let parts = vec![Part { view: view.clone(), rows: 0..shape[0] }, Part { view, rows: shape[0]..2 * shape[0] }];
        self.gate_up_from_parts(&[full.clone(), full], parts)
    }

    fn gate_up_from_parts(&self, full: &[String; 2], parts: Vec<Part<'a>>) -> Result<GateUp> {
        if parts[0].view.shape[1] % 32 == 0 {
            if let Some(w) = self.parts_weight(&full.join("+"), &parts, true)? {
                return Ok(GateUp::Fused(w));
            }
        }
        let one = |p: &Part<'a>, f: &str| self.parts_weight(f, std::slice::from_ref(p), false)?.ok_or_else(|| Error::tensor(self.file(), f, "no storage type"));
        let mut parts = parts.iter();
        let (Some(g), Some(u)) = (parts.next(), parts.next()) else { return Err(Error::tensor(self.file(), &full[0], "expected two projections")) };
        Ok(GateUp::Split(one(g, &full[0])?, one(u, &full[1])?))
    }

    /// Uploads the row ranges `parts` (of equal width) as one weight: stacked ([a | b | c]) or
    /// with interleaved rows (a0, b0, a1, b1, …). None when their storage types differ.
    fn parts_weight(&self, label: &str, parts: &[Part<'a>], interleave: bool) -> Result<Option<Weight>> {
        let storage = self.shared.storage;
        let cols = parts[0].view.shape[1];
        let target = storage(parts[0].view.dtype, cols);
        if parts.iter().any(|p| storage(p.view.dtype, cols) != target) {
            return Ok(None);
        }
        let row_bytes = target.bytes_for(cols).ok_or_else(|| Error::tensor(self.file(), &parts[0].view.name, format!("{cols} columns are not whole {} blocks", target.name())))?;
        let mut converted = Vec::with_capacity(parts.len());
        for p in parts {
            let bytes = convert(&p.view, target).map_err(|e| Error::tensor(self.file(), &p.view.name, e.to_string()))?;
            // A tensor split into parts is counted once, with its first part.
            if p.rows.start == 0 {
                self.count(p.view.data.len());
            }
            converted.push((bytes, p.rows.clone()));
        }
        let per: Vec<Vec<&[u8]>> = converted.iter().map(|(b, rows)| b.chunks(row_bytes).skip(rows.start).take(rows.len()).collect()).collect();
        let rows: Vec<&[u8]> = if interleave { (0..per[0].len()).flat_map(|r| per.iter().map(move |p| p[r])).collect() } else { per.concat() };
        Weight::from_rows(self.ctx(), label, target, cols, &rows, self.ctx().binding_limit()).map(Some)
    }
}

impl Clone for Part<'_> {
    fn clone(&self) -> Self {
        Part { view: self.view.clone(), rows: self.rows.clone() }
    }
}

/// A tensor's bytes in storage type `to`: borrowed when the file already stores it so.
fn convert<'v>(v: &'v TensorView<'_>, to: DType) -> Result<Cow<'v, [u8]>> {
    if v.dtype == to {
        return Ok(Cow::Borrowed(&v.data));
    }
    let f = v.to_f32()?;
    Ok(Cow::Owned(match to {
        DType::F32 => bytemuck::cast_slice(&f).to_vec(),
        DType::F16 => f.iter().flat_map(|&x| crate::weights::dtype::f32_to_f16(x).to_le_bytes()).collect(),
        DType::Q8_0 => crate::weights::dtype::quantize_q8_0(&f),
        other => return Err(Error::Unsupported(format!("converting weights to {}", other.name()))),
    }))
}
