//! Linear layers: y = x · Wᵀ (+ bias) (+ y), W row-major [n, k] in any storage format.
//! Weights whose rows are whole 32-weight units (every real model) go through `quant.wgsl`
//! with one small file per format (`shaders/formats/`), dequantizing in registers and
//! accumulating in f32: a mat-vec kernel for decode, a tiled matrix-matrix kernel for prefill.
//! f32 weights of other widths (tiny test models) take the plain f32 kernels of `matmul.wgsl`.
//! What follows a projection is fused into its store: bias, residual add, the Q/K/V split and
//! SwiGLU or GeGLU over interleaved gate/up rows (`Out`).

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, OpInfo, Recorder, Shader, Tensor, Weight};
use crate::weights::DType;

pub const SHADER: Shader = Shader { name: "matmul", body: include_str!("../../shaders/matmul.wgsl") };

/// The quantized-weight kernels, one shader per storage format in `DType::ALL`'s order (the
/// format's file of shaders/formats/ before quant.wgsl), and the same with
/// quant_subgroup.wgsl after it, compiled only on adapters with subgroups.
macro_rules! quant_shaders {
    ($($f:ident),* $(,)?) => {
        pub const QUANT_SHADERS: [Shader; DType::ALL.len()] = [$(Shader {
            name: concat!("quant_", stringify!($f)),
            body: concat!(
                include_str!(concat!("../../shaders/formats/", stringify!($f), ".wgsl")),
                "\n",
                include_str!("../../shaders/quant.wgsl"),
                "\n",
                include_str!("../../shaders/quant_plain.wgsl")
            ),
        }),*];
        pub const QUANT_SUBGROUP_SHADERS: [Shader; DType::ALL.len()] = [$(Shader {
            name: concat!("quant_subgroup_", stringify!($f)),
            body: concat!(
                include_str!(concat!("../../shaders/formats/", stringify!($f), ".wgsl")),
                "\n",
                include_str!("../../shaders/quant.wgsl"),
                "\n",
                include_str!("../../shaders/quant_subgroup.wgsl")
            ),
        }),*];
    };
}

quant_shaders!(f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, iq4_nl, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_xs);

/// The `quant.wgsl` shader for weights of `dtype` (the test below checks the order).
pub fn quant_shader(dtype: DType) -> &'static Shader {
    &QUANT_SHADERS[dtype as usize]
}

/// The subgroup variant of `quant_shader(dtype)`.
pub fn quant_subgroup_shader(dtype: DType) -> &'static Shader {
    &QUANT_SUBGROUP_SHADERS[dtype as usize]
}

/// Uniforms of `quant.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct QuantParams {
    pub t: u32,
    pub k: u32,
    pub n: u32,
    pub row0: u32,
    pub n_total: u32,
    pub mode: u32,
    pub split1: u32,
    pub split2: u32,
    pub has_bias: u32,
    pub id_offset: u32,
    pub vocab: u32,
    /// embed: multiplies every value.
    pub scale: f32,
    /// `NORM_IN`: the norm weight's first index in the bias binding, and its epsilon.
    pub g_off: u32,
    pub eps: f32,
    /// Mode 5 (`Out::RopeKv`): see `RopeKv`.
    pub head_dim: u32,
    pub rot_dim: u32,
    pub f_off: u32,
    pub kv_stride: u32,
    pub kv_f16: u32,
    pub amp: f32,
    /// Mode 5: each token's (first cache element of its position, position), two to a row.
    pub tok: [[u32; 4]; 4],
}

/// Uniforms of the f32 kernels of `matmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    k: u32,
    n: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

/// Up to this many tokens, a mat-vec kernel is used (the weights read once for all tokens), as
/// llama.cpp does for batches of up to 8.
pub const MATVEC_MAX_TOKENS: usize = 8;

/// How the decode mat-vec (1 to `MATVEC_MAX_TOKENS` tokens) spreads a weight over threads.
/// Every shape reads a group of 4 rows unit by unit (32 weights), x once per unit for the 4.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MatVecShape {
    /// GPUs without subgroups: `lanes` (8, 16, 32 or 64) lanes along K per group of 4 rows,
    /// 64 / lanes groups per 64-thread workgroup, the lanes' sums met in a shared-memory tree
    /// (`matvec`, `matvec_multi` with `MV_LANES`).
    Lanes(u32),
    /// GPUs with subgroups: a workgroup of `threads` (8 to 64) takes `groups` (1 to 16) groups
    /// of 4 rows, each subgroup a group at a time with all its lanes along K, summed by one
    /// `subgroupAdd` per token (`matvec_sg` of `quant_subgroup.wgsl`; native only).
    Subgroup { threads: u32, groups: u32 },
    /// CPU-type adapters (lavapipe, SwiftShader), where a workgroup's invocations are the SIMD
    /// lanes of one core: 4 rows per invocation, so x's address is the same in every lane and
    /// nothing is reduced across lanes (`matvec_rows`); faster there (see benches/ops.rs).
    Rows,
}

/// Environment variable choosing the mat-vec shape over the adapter's: `rows`, `lanes[:N]`
/// or `subgroup[:THREADS:GROUPS]` (README's kernel table).
pub const MATVEC_SHAPE_ENV: &str = "QUILL_MATVEC";

/// PCI vendor ids where the choice depends on the vendor.
const VENDOR_INTEL: u32 = 0x8086;

impl MatVecShape {
    /// Each kernel an adapter class could select, for tests (those `available` on the test's
    /// adapter run): the lanes' tree over 4 row groups, one subgroup walking 3 row groups (on
    /// lavapipe's subgroups of 8), the CPU shape. `matvec_shapes_at_their_extremes` adds the
    /// other ends of each (64 lanes; several subgroups in a workgroup, idle or walking).
    pub const ALL: [MatVecShape; 3] = [MatVecShape::Lanes(16), MatVecShape::Subgroup { threads: 8, groups: 3 }, MatVecShape::Rows];

    /// The shape for an adapter of this type, vendor and subgroup sizes (`subgroups`: whether
    /// quill may use subgroups on it, `Context::subgroups`). GPUs take 4 rows per workgroup
    /// where they can, so even a 2048-row projection launches 512 workgroups (6 per compute
    /// unit of an 82-unit GPU): with subgroups, one subgroup per workgroup (its smallest size,
    /// at least 32 threads; Intel's subgroups of 8 to 32 take 4 row groups in 32 threads);
    /// without, 64 lanes along K (discrete) or 32 (integrated, 8 rows). Chosen from the
    /// kernels' structure, not yet measured on a GPU.
    pub fn for_adapter(device_type: wgpu::DeviceType, vendor: u32, subgroups: bool, sg_min: u32) -> MatVecShape {
        match device_type {
            wgpu::DeviceType::Cpu => MatVecShape::Rows,
            _ if subgroups => {
                let threads = sg_min.clamp(32, 64);
                let groups = if vendor == VENDOR_INTEL { 4 } else { 1 };
                MatVecShape::Subgroup { threads, groups }
            }
            wgpu::DeviceType::IntegratedGpu => MatVecShape::Lanes(32),
            _ => MatVecShape::Lanes(64),
        }
    }

    /// The shape for this context's adapter, or the one `QUILL_MATVEC` names.
    pub fn chosen(ctx: &Context) -> Result<MatVecShape> {
        match std::env::var(MATVEC_SHAPE_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                let shape = Self::parse(&text, ctx.info.vendor, ctx.info.subgroup_min_size).map_err(|why| Error::arg(MATVEC_SHAPE_ENV, format!("'{text}': {why}")))?;
                if !shape.available(ctx) {
                    return Err(Error::arg(MATVEC_SHAPE_ENV, format!("'{text}' needs subgroups, which this adapter ({}) does not offer quill", ctx.info.name)));
                }
                Ok(shape)
            }
            _ => Ok(Self::for_adapter(ctx.info.device_type, ctx.info.vendor, ctx.subgroups(), ctx.info.subgroup_min_size)),
        }
    }

    /// `rows`, `lanes` (64), `lanes:N`, `subgroup` (the adapter's choice) or
    /// `subgroup:THREADS:GROUPS`.
    fn parse(text: &str, vendor: u32, sg_min: u32) -> std::result::Result<MatVecShape, String> {
        let lower = text.trim().to_ascii_lowercase();
        let mut parts = lower.split(':');
        let kind = parts.next().unwrap_or("");
        let nums: Vec<&str> = parts.collect();
        let num = |s: &str, what: &str, ok: &[u32]| -> std::result::Result<u32, String> {
            match s.parse::<u32>() {
                Ok(v) if ok.contains(&v) => Ok(v),
                _ => Err(format!("{what} must be one of {ok:?}, got '{s}'")),
            }
        };
        match (kind, nums.as_slice()) {
            ("rows", []) => Ok(MatVecShape::Rows),
            ("lanes", []) => Ok(MatVecShape::Lanes(64)),
            ("lanes", [n]) => Ok(MatVecShape::Lanes(num(n, "lanes", &[8, 16, 32, 64])?)),
            ("subgroup", []) => Ok(Self::for_adapter(wgpu::DeviceType::DiscreteGpu, vendor, true, sg_min)),
            ("subgroup", [t, g]) => Ok(MatVecShape::Subgroup { threads: num(t, "threads", &[8, 16, 32, 64])?, groups: num(g, "groups", &(1..=16).collect::<Vec<_>>())? }),
            _ => Err("not a mat-vec shape (rows, lanes[:8|16|32|64] or subgroup[:THREADS:GROUPS])".into()),
        }
    }

    /// Whether this context can run the shape (subgroup shapes need `Context::subgroups`).
    pub fn available(self, ctx: &Context) -> bool {
        !matches!(self, MatVecShape::Subgroup { .. }) || ctx.subgroups()
    }

    /// Rows of one workgroup.
    fn rows_per_workgroup(self) -> usize {
        match self {
            MatVecShape::Lanes(lanes) => 4 * (64 / lanes as usize),
            MatVecShape::Subgroup { groups, .. } => 4 * groups as usize,
            MatVecShape::Rows => MATVEC_ROWS_ROWS,
        }
    }
}

/// Which `quant.wgsl` kernel a linear layer over `t` tokens takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum QuantKernel {
    /// One token, `Lanes`: `matvec`, whose unit dot products scale once per unit.
    MatVec,
    /// 2 to 8 tokens, `Lanes`: `matvec_multi`, each unit dequantized once for all of them; the
    /// number is its `MV_TOKENS`, t itself (a constant, so its per-token branches fold away).
    MatVecMulti(usize),
    /// 1 to 8 tokens, `Subgroup`: `matvec_sg` with `MV_TOKENS` = t.
    MatVecSubgroup(usize),
    /// 1 to 8 tokens, `Rows`: `matvec_rows` with `MV_TOKENS` = t.
    MatVecRows(usize),
    /// More, `Rows` (CPU-type adapters): `matmul_rows`, `matvec_rows`'s shape over the tokens 8
    /// at a time (on lavapipe 1.4-1.7x a shared-memory tile's prefill at 64 tokens, 3.5-5x at 16).
    MatMulRows,
    /// More, the GPU shapes: `matmul_tiled`, whose rows per thread (`MT_RPT`, 4 or 2) come
    /// from the layer's size (`tiled_rows_per_thread`).
    MatMulTiled,
}

/// Whether `matvec_rows` and `matmul_rows` load x one vec4 per lane and broadcast it
/// (`X_LANES` in quant.wgsl): where the adapter has subgroups of at least 8 (lavapipe's are its
/// SIMD width, 8 with AVX2). Tests turn it off to run the other variant.
fn x_lanes(ctx: &Context) -> bool {
    #[cfg(test)]
    if tests::NO_X_LANES.with(|f| f.get()) {
        return false;
    }
    ctx.subgroups() && ctx.info.subgroup_min_size >= 8
}

pub(crate) fn quant_kernel(t: usize, shape: MatVecShape) -> QuantKernel {
    match (t, shape) {
        (t, MatVecShape::Rows) if t > MATVEC_MAX_TOKENS => QuantKernel::MatMulRows,
        (t, _) if t > MATVEC_MAX_TOKENS => QuantKernel::MatMulTiled,
        (t, MatVecShape::Rows) => QuantKernel::MatVecRows(t.max(1)),
        (t, MatVecShape::Subgroup { .. }) => QuantKernel::MatVecSubgroup(t.max(1)),
        (0 | 1, MatVecShape::Lanes(_)) => QuantKernel::MatVec,
        (t, MatVecShape::Lanes(_)) => QuantKernel::MatVecMulti(t),
    }
}

/// Output tiles a prefill projection should launch before `matmul_tiled` takes 64-row tiles:
/// fewer, and it takes 32-row tiles, twice as many workgroups (a discrete GPU has 30 to 130
/// compute units; SmolLM2's `o_proj` over a 64-token chunk has 9 tiles of 64 rows).
pub const TILED_MIN_TILES: usize = 64;

/// Rows per thread of `matmul_tiled` (`MT_RPT`) for a projection of `rows` output rows over
/// `t` tokens in tiles of `tile_tokens`: 4 (64-row tiles) when those make at least
/// `TILED_MIN_TILES` tiles, else 2.
pub fn tiled_rows_per_thread(rows: usize, t: usize, tile_tokens: usize) -> usize {
    #[cfg(test)]
    if let Some(rpt) = tests::FORCE_RPT.with(|f| f.get()) {
        return rpt;
    }
    if rows.div_ceil(64) * t.div_ceil(tile_tokens) >= TILED_MIN_TILES {
        4
    } else {
        2
    }
}

/// Rows of a `matvec_rows` workgroup (64 invocations of 4 rows: `MR_ROWS`).
const MATVEC_ROWS_ROWS: usize = 256;

/// How the result is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    /// y = x·Wᵀ + bias
    Write,
    /// y += x·Wᵀ + bias (a residual add fused into the projection)
    Accumulate,
}

/// Where a linear layer's rows go.
#[derive(Clone, Copy)]
pub enum Out<'a> {
    /// All rows into one tensor (t, n).
    One(&'a Tensor, Store),
    /// A fused Q/K/V projection: rows [0, s1) into the first tensor, [s1, s2) into the second,
    /// [s2, n) into the third, each (t, its rows).
    Split3(&'a Tensor, &'a Tensor, &'a Tensor, usize, usize),
    /// A fused gate/up projection whose rows interleave gate and up (gate r at 2r, up r at
    /// 2r + 1): silu(gate) · up into (t, n / 2).
    SwiGlu(&'a Tensor),
    /// As `SwiGlu` with gelu_tanh(gate) · up (Gemma's MLP).
    GeGlu(&'a Tensor),
    /// A fused Q/K/V projection straight into attention's inputs, RoPE and the cache write
    /// folded into its store (mode 5 of `quant.wgsl`; mat-vec kernels, with `NormIn`).
    RopeKv(&'a RopeKv<'a>),
}

/// An RMSNorm folded into a mat-vec's input (`NORM_IN` in `quant.wgsl`): x is the residual
/// stream, normed as it is loaded by the weight at `aux[off .. off + k]` (bound where a bias
/// would be, so a projection with a bias cannot take one) with `eps`. One dispatch fewer per
/// norm; mat-vecs only (`fuses(t, w)`), prefill keeps its norm pass.
#[derive(Clone, Copy)]
pub struct NormIn<'a> {
    pub aux: &'a Tensor,
    pub off: usize,
    pub eps: f32,
}

/// Mode 5's destinations: rows [0, q_rows) are Q heads, the next kv_rows K heads, the rest V
/// heads, all of `head_dim`. Q and K turn by RoPE in adjacent pairs (GGUF llama's layout) at
/// each token's position with the inverse frequencies at `NormIn::aux[freqs_off ..]` (cos and
/// sin times `amp`), dimensions from `rot_dim` on unturned; Q goes to `q` (t, q_rows), K and V
/// into the caches as `attention::kv_write` stores them, token i's position at cache element
/// `tokens[i].0` (slot and cache row; KV head h adds h · kv_stride) and RoPE position `tokens[i].1`.
pub struct RopeKv<'a> {
    pub q: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub q_rows: usize,
    pub kv_rows: usize,
    pub head_dim: usize,
    pub rot_dim: usize,
    pub freqs_off: usize,
    pub amp: f32,
    pub kv_f16: bool,
    pub kv_stride: usize,
    pub tokens: Vec<(u32, u32)>,
}

/// Values of normed x a `matvec_rows` workgroup stages (`MR_XS` vec4s): a norm folds into
/// that kernel while k · t fits.
const MATVEC_ROWS_STAGED: usize = 4 * 960;

/// Whether a norm can fold into the input of a linear layer over `t` tokens of `w` with the
/// mat-vec `shape` (`NormIn`).
pub fn fuses_norm(ctx: &Context, t: usize, w: &Weight, shape: MatVecShape) -> bool {
    fuses(t, w) && (shape != MatVecShape::Rows || x_lanes(ctx) || w.cols * t <= MATVEC_ROWS_STAGED)
}

/// Whether a linear layer over `t` tokens of `w` takes a mat-vec kernel of `quant.wgsl`, which
/// can fold a norm into its input (`NormIn`) and RoPE and the cache write into its store.
pub fn fuses(t: usize, w: &Weight) -> bool {
    (1..=MATVEC_MAX_TOKENS).contains(&t) && w.cols % 32 == 0 && w.cols % w.dtype.block_len() == 0
}

/// FLOPs and bytes of one linear layer over `t` tokens with `w_bytes` of weights.
pub fn cost(t: usize, k: usize, n: usize, w_bytes: u64, store: Store) -> (u64, u64) {
    let (t, k, n) = (t as u64, k as u64, n as u64);
    let y_bytes = if store == Store::Accumulate { 8 * t * n } else { 4 * t * n };
    (2 * t * k * n, w_bytes + 4 * t * k + y_bytes)
}

/// y[:t] = x[:t] · Wᵀ (+ bias) stored as `store` says; x: (>= t, k), w: (n, k), bias: (n,),
/// y: (>= t, n).
#[allow(clippy::too_many_arguments)]
pub fn linear(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, y: &Tensor, t: usize, store: Store) -> Result<()> {
    linear_out(rec, op, layer, x, w, bias, Out::One(y, store), t)
}

/// A linear layer whose rows go where `out` says.
#[allow(clippy::too_many_arguments)]
pub fn linear_out(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, out: Out, t: usize) -> Result<()> {
    let shape = MatVecShape::chosen(rec.ctx)?;
    linear_shaped(rec, op, layer, x, w, bias, out, t, shape)
}

/// `linear_out` with the mat-vec shape given (the tests run every adapter class's shape).
#[allow(clippy::too_many_arguments)]
pub fn linear_shaped(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, w: &Weight, bias: Option<&Tensor>, out: Out, t: usize, shape: MatVecShape) -> Result<()> {
    linear_fused(rec, op, layer, x, None, w, bias, out, t, shape)
}

/// A linear layer with an RMSNorm folded into its input where `norm` is given (x is then the
/// un-normed residual stream); see `NormIn` and `fuses`.
#[allow(clippy::too_many_arguments)]
pub fn linear_normed(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, norm: NormIn, w: &Weight, out: Out, t: usize) -> Result<()> {
    let shape = MatVecShape::chosen(rec.ctx)?;
    linear_fused(rec, op, layer, x, Some(norm), w, None, out, t, shape)
}

#[allow(clippy::too_many_arguments)]
pub fn linear_fused(rec: &mut Recorder, op: &'static str, layer: Option<usize>, x: &Tensor, norm: Option<NormIn>, w: &Weight, bias: Option<&Tensor>, out: Out, t: usize, shape: MatVecShape) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    let fused = norm.is_some() || matches!(out, Out::RopeKv(_));
    if fused && !fuses(t, w) {
        return Err(Error::Shape { op, msg: format!("a norm or RoPE folded into a projection needs a mat-vec kernel (1 to {MATVEC_MAX_TOKENS} tokens, whole 32-weight units), got {t} tokens of {k} columns") });
    }
    if fused && bias.is_some() {
        return Err(Error::Shape { op, msg: "a projection with a bias cannot take a folded norm (the bias binding holds its weight)".into() });
    }
    if let Some(nm) = &norm {
        nm.aux.holds(op, "norm weight", nm.off + k)?;
        if !fuses_norm(rec.ctx, t, w, shape) {
            return Err(Error::Shape { op, msg: format!("a norm folds into the {shape:?} mat-vec of at most {MATVEC_ROWS_STAGED} inputs (tokens × columns), got {t} × {k}") });
        }
    }
    if x.shape.last() != Some(&k) {
        return Err(Error::Shape { op, msg: format!("input {:?} does not end in the weight's in-features {k}", x.shape) });
    }
    x.holds(op, "input", t * k)?;
    if let Some(b) = bias {
        if b.numel() != n {
            return Err(Error::Shape { op, msg: format!("bias has {} values, expected {n}", b.numel()) });
        }
    }
    let (mode, split1, split2, y0, y1, y2, store) = match out {
        Out::One(y, store) => {
            y.holds(op, "output", t * n)?;
            (if store == Store::Accumulate { 1 } else { 0 }, 0, 0, y, None, None, store)
        }
        Out::Split3(a, b, c, s1, s2) => {
            if !(s1 <= s2 && s2 <= n) {
                return Err(Error::Shape { op, msg: format!("split rows {s1}, {s2} outside {n}") });
            }
            a.holds(op, "first output", t * s1)?;
            b.holds(op, "second output", t * (s2 - s1))?;
            c.holds(op, "third output", t * (n - s2))?;
            (2, s1, s2, a, Some(b), Some(c), Store::Write)
        }
        Out::SwiGlu(y) | Out::GeGlu(y) => {
            if n % 2 != 0 {
                return Err(Error::Shape { op, msg: format!("a gated MLP needs interleaved gate/up rows, got {n} rows") });
            }
            y.holds(op, "output", t * n / 2)?;
            (if matches!(out, Out::GeGlu(_)) { 4 } else { 3 }, 0, 0, y, None, None, Store::Write)
        }
        Out::RopeKv(r) => {
            let hd = r.head_dim;
            let Some(nm) = &norm else {
                return Err(Error::Shape { op, msg: "RoPE folded into the store needs a folded norm (its frequencies share the norm's binding)".into() });
            };
            if hd == 0 || hd % 2 != 0 || r.q_rows % hd != 0 || r.kv_rows % hd != 0 || r.q_rows + 2 * r.kv_rows != n || r.rot_dim > hd || r.rot_dim % 2 != 0 || r.tokens.len() != t {
                return Err(Error::Shape { op, msg: format!("{n} rows are not Q {} + K and V {} rows of heads of {hd} (even), rotary {}, {} token positions for {t} tokens", r.q_rows, r.kv_rows, r.rot_dim, r.tokens.len()) });
            }
            nm.aux.holds(op, "RoPE frequencies", r.freqs_off + r.rot_dim / 2)?;
            r.q.holds(op, "Q", t * r.q_rows)?;
            let per = if r.kv_f16 { 2 } else { 1 };
            let last = r.tokens.iter().map(|&(e, _)| e as usize).max().unwrap_or(0) + (r.kv_rows / hd - 1) * r.kv_stride + hd;
            for (cache, what) in [(r.k_cache, "K cache"), (r.v_cache, "V cache")] {
                if cache.numel() * per < last {
                    return Err(Error::Shape { op, msg: format!("the {what} holds {} values, a token's rows reach {last}", cache.numel() * per) });
                }
            }
            (5, r.q_rows, r.q_rows + r.kv_rows, r.q, Some(r.k_cache), Some(r.v_cache), Store::Write)
        }
    };
    let (flops, bytes) = cost(t, k, n, w.bytes(), store);
    let info = OpInfo { op, layer: layer.map(|l| l as u32), flops, bytes };

    if k % 32 != 0 {
        // Plain f32 kernels: any width, one chunk, one output.
        if w.dtype != DType::F32 || w.chunks.len() != 1 || mode > 1 {
            return Err(Error::Shape { op, msg: format!("{} weights with {k} columns (not whole 32-weight units) need f32 storage in one binding and a plain output", w.dtype.name()) });
        }
        let wbuf = &w.chunks[0].quants;
        let p = Params { t: t as u32, k: k as u32, n: n as u32, has_bias: bias.is_some() as u32, accumulate: mode, _pad: [0; 3] };
        let buffers = [&x.buf, wbuf, bias.map(|b| &b.buf).unwrap_or(wbuf), &y0.buf];
        if t <= MATVEC_MAX_TOKENS {
            let pipe = rec.ctx.pipeline(&SHADER, "matvec", &[])?;
            rec.dispatch(info, &pipe, &buffers, &p, grid(rec.ctx, (n.div_ceil(8) * t) as u32));
        } else {
            let pipe = rec.ctx.pipeline(&SHADER, "matmul", &[])?;
            rec.dispatch(info, &pipe, &buffers, &p, [n.div_ceil(64) as u32, t.div_ceil(32) as u32, 1]);
        }
        return Ok(());
    }

    if k % w.dtype.block_len() != 0 {
        return Err(Error::Shape { op, msg: format!("{k} columns are not whole {} blocks", w.dtype.name()) });
    }
    let shader = quant_shader(w.dtype);
    // matmul_tiled's tiles are 16, 32, 48 or 64 tokens tall, the least that covers t (up to 64).
    let tokens_per_thread = t.div_ceil(16).clamp(1, 4);
    let kernel = quant_kernel(t, shape);
    let rpt = tiled_rows_per_thread(n, t, 16 * tokens_per_thread);
    let norm_in = if norm.is_some() { 1.0 } else { 0.0 };
    if !shape.available(rec.ctx) {
        return Err(Error::Shape { op, msg: format!("the {shape:?} mat-vec needs subgroups, which this adapter does not offer quill") });
    }
    let lanes = match shape {
        MatVecShape::Lanes(l) => l as f64,
        _ => 8.0,
    };
    let pipe = match kernel {
        QuantKernel::MatVec => rec.ctx.pipeline(shader, "matvec", &[("MV_LANES", lanes), ("NORM_IN", norm_in)])?,
        QuantKernel::MatVecMulti(tokens) => rec.ctx.pipeline(shader, "matvec_multi", &[("MV_LANES", lanes), ("MV_TOKENS", tokens as f64), ("NORM_IN", norm_in)])?,
        QuantKernel::MatVecSubgroup(tokens) => {
            let MatVecShape::Subgroup { threads, groups } = shape else { unreachable!("quant_kernel gives MatVecSubgroup for Subgroup only") };
            let consts = [("SG_THREADS", threads as f64), ("SG_GROUPS", groups as f64), ("MV_TOKENS", tokens as f64), ("NORM_IN", norm_in)];
            rec.ctx.pipeline(quant_subgroup_shader(w.dtype), "matvec_sg", &consts)?
        }
        QuantKernel::MatVecRows(tokens) if x_lanes(rec.ctx) => rec.ctx.pipeline(quant_subgroup_shader(w.dtype), "matvec_rows", &[("MV_TOKENS", tokens as f64), ("NORM_IN", norm_in), ("X_LANES", 1.0)])?,
        QuantKernel::MatVecRows(tokens) => rec.ctx.pipeline(shader, "matvec_rows", &[("MV_TOKENS", tokens as f64), ("NORM_IN", norm_in)])?,
        QuantKernel::MatMulRows if x_lanes(rec.ctx) => rec.ctx.pipeline(quant_subgroup_shader(w.dtype), "matmul_rows", &[("X_LANES", 1.0)])?,
        QuantKernel::MatMulRows => rec.ctx.pipeline(shader, "matmul_rows", &[])?,
        QuantKernel::MatMulTiled => rec.ctx.pipeline(shader, "matmul_tiled", &[("TOKENS_PER_THREAD", tokens_per_thread as f64), ("MT_RPT", rpt as f64)])?,
    };
    let mut rope = QuantParams::default();
    if let Out::RopeKv(r) = out {
        rope.head_dim = r.head_dim as u32;
        rope.rot_dim = r.rot_dim as u32;
        rope.f_off = r.freqs_off as u32;
        rope.kv_stride = r.kv_stride as u32;
        rope.kv_f16 = r.kv_f16 as u32;
        rope.amp = r.amp;
        for (i, &(e, pos)) in r.tokens.iter().enumerate() {
            rope.tok[i / 2][2 * (i % 2)] = e;
            rope.tok[i / 2][2 * (i % 2) + 1] = pos;
        }
    }
    let aux = bias.or(norm.map(|nm| nm.aux));
    let [spare0, spare1] = &rec.ctx.spare;
    for (i, c) in w.chunks.iter().enumerate() {
        let p = QuantParams {
            t: t as u32,
            k: k as u32,
            n: c.rows as u32,
            row0: c.row0 as u32,
            n_total: n as u32,
            mode,
            split1: split1 as u32,
            split2: split2 as u32,
            has_bias: bias.is_some() as u32,
            g_off: norm.map_or(0, |nm| nm.off as u32),
            eps: norm.map_or(0.0, |nm| nm.eps),
            ..rope
        };
        let buffers = [
            &x.buf,
            &c.quants,
            c.scales.as_ref().unwrap_or(&c.quants),
            aux.map(|b| &b.buf).unwrap_or(&c.quants),
            &y0.buf,
            y1.map(|b| &b.buf).unwrap_or(spare0),
            y2.map(|b| &b.buf).unwrap_or(spare1),
        ];
        // The cost is counted once, on the first chunk's dispatch.
        let info = if i == 0 { info } else { OpInfo { flops: 0, bytes: 0, ..info } };
        let wg = match kernel {
            QuantKernel::MatVec => grid(rec.ctx, (c.rows.div_ceil(shape.rows_per_workgroup()) * t) as u32),
            QuantKernel::MatVecMulti(_) | QuantKernel::MatVecSubgroup(_) | QuantKernel::MatVecRows(_) | QuantKernel::MatMulRows => grid(rec.ctx, c.rows.div_ceil(shape.rows_per_workgroup()) as u32),
            QuantKernel::MatMulTiled => [c.rows.div_ceil(16 * rpt) as u32, t.div_ceil(16 * tokens_per_thread) as u32, 1],
        };
        rec.dispatch(info, &pipe, &buffers, &p, wg);
    }
    Ok(())
}

/// CPU reference, accumulating in f64: y (t, n) from x (t, k), w (n, k).
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, y0: Option<&[f32]>, t: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for r in 0..t {
        for c in 0..n {
            let mut acc: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
            acc += bias.map_or(0.0, |b| b[c] as f64);
            acc += y0.map_or(0.0, |y0| y0[r * n + c] as f64);
            y[r * n + c] = acc as f32;
        }
    }
    y
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::gpu::Context;
    use crate::ops::{compare, test_values};

    async fn run(ctx: &Context, t: usize, k: usize, n: usize, with_bias: bool, store: Store) {
        let x = test_values(t * k, 21 + t as u64);
        let w = test_values(n * k, 22 + n as u64);
        let b = test_values(n, 23);
        let y0 = test_values(t * n, 24);
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let wt = Weight::from_f32(ctx, "w", &[n, k], &w).unwrap();
        let bt = Tensor::upload_f32(ctx, "b", &[n], &b).unwrap();
        let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        linear(&mut rec, "test", None, &xt, &wt, with_bias.then_some(&bt), &yt, t, store).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap();
        let want = reference(&x, &w, with_bias.then_some(&b[..]), (store == Store::Accumulate).then_some(&y0[..]), t, k, n);
        // f32 accumulation of k products of values in [-1, 1]: a typical error of
        // 2^-24 * sqrt(k) * |sum|; 2e-6 * k absolute covers the worst orders with margin.
        compare(&got, &want, 2e-6 * k as f32, 1e-4).unwrap_or_else(|e| panic!("t {t} k {k} n {n} bias {with_bias} {store:?}: {e}"));
    }

    /// `rows` rows of `cols` random weights of `dtype` as a file stores them: random quants
    /// with scales set to small positive f16 values (minimums of either sign).
    pub(crate) fn random_rows(dtype: DType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        use crate::weights::dtype::f32_to_f16;
        let n = rows * cols;
        let noise = test_values(dtype.bytes_for(n).unwrap(), seed);
        let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
        let half = |v: f32| f32_to_f16(v).to_le_bytes();
        match dtype {
            DType::F32 => bytes = bytemuck::cast_slice(&test_values(n, seed)).to_vec(),
            DType::F16 => bytes = test_values(n, seed).iter().flat_map(|&v| half(v)).collect(),
            DType::BF16 => bytes = test_values(n, seed).iter().flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            _ => {
                // Where each block keeps its f16 scales (d, then a minimum where it has one).
                let scale_at: &[usize] = match dtype {
                    DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
                    DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
                    DType::Q2_K => &[80, 82],
                    DType::Q3_K => &[108],
                    DType::Q6_K => &[208],
                    DType::F32 | DType::F16 | DType::BF16 => &[],
                };
                let size = dtype.block_bytes();
                for (b, block) in bytes.chunks_exact_mut(size).enumerate() {
                    for (j, &at) in scale_at.iter().enumerate() {
                        let v = 0.002 + 0.02 * noise[b % noise.len()].abs();
                        block[at..at + 2].copy_from_slice(&half(if j == 1 && b % 2 == 1 { -v } else { v }));
                    }
                }
            }
        }
        bytes
    }

    /// A weight of `n` random rows of `k` in `dtype` (`random_rows`) on the GPU, and its
    /// dequantized values.
    fn random_weight(ctx: &Context, dtype: DType, n: usize, k: usize, seed: u64) -> (Weight, Vec<f32>) {
        let bytes = random_rows(dtype, n, k, seed);
        let rows: Vec<&[u8]> = bytes.chunks(dtype.bytes_for(k).unwrap()).collect();
        let w = Weight::from_rows(ctx, "w", dtype, k, &rows, u64::MAX).unwrap();
        (w, crate::weights::dtype::dequantize(dtype, &bytes, n * k).unwrap())
    }

    /// Runs one quantized linear layer on the GPU, with each adapter class's mat-vec shape
    /// where `t` takes a mat-vec, and checks it against dequantize-then-f32.
    async fn run_quant(ctx: &Context, dtype: DType, t: usize, k: usize, n: usize, out: &str, limit: u64) {
        // Prefill has two kernels: `matmul_rows` (Rows) and `matmul_tiled` (every GPU shape).
        let shapes: &[MatVecShape] = if t <= MATVEC_MAX_TOKENS { &MatVecShape::ALL } else { &[MatVecShape::Lanes(16), MatVecShape::Rows] };
        for &shape in shapes.iter().filter(|s| s.available(ctx)) {
            run_quant_shaped(ctx, dtype, t, k, n, out, limit, shape).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_quant_shaped(ctx: &Context, dtype: DType, t: usize, k: usize, n: usize, out: &str, limit: u64, shape: MatVecShape) {
        let bytes = random_rows(dtype, n, k, (n * 31 + k) as u64);
        let row_bytes = dtype.bytes_for(k).unwrap();
        let rows: Vec<&[u8]> = bytes.chunks(row_bytes).collect();
        let w = Weight::from_rows(ctx, "w", dtype, k, &rows, limit).unwrap();
        let wf = crate::weights::dtype::dequantize(dtype, &bytes, n * k).unwrap();
        let x = test_values(t * k, 41 + t as u64);
        let b = test_values(n, 43);
        let y0 = test_values(t * n, 44);
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let bt = Tensor::upload_f32(ctx, "b", &[n], &b).unwrap();
        let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
        // f32 accumulation of k products bounded by wmax (x in [-1, 1]), as in the f32 tests.
        let (abs, rel) = (2e-6 * k as f32 * wmax.max(1.0), 1e-4);
        let label = format!("{dtype:?} t {t} k {k} n {n} {out} chunks {} {shape:?}", w.chunks.len());
        let mut rec = Recorder::new(ctx, "test");
        let (got, want) = match out {
            "accumulate" => {
                let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), Out::One(&yt, Store::Accumulate), t, shape).unwrap();
                rec.submit().unwrap();
                (ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap(), reference(&x, &wf, Some(&b), Some(&y0), t, k, n))
            }
            "split3" => {
                let (s1, s2) = (n / 2, n / 2 + n / 4);
                let ys: Vec<Tensor> = [s1, s2 - s1, n - s2].iter().map(|&r| Tensor::zeros(ctx, "y", &[t, r.max(1)]).unwrap()).collect();
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), Out::Split3(&ys[0], &ys[1], &ys[2], s1, s2), t, shape).unwrap();
                rec.submit().unwrap();
                let full = reference(&x, &wf, Some(&b), None, t, k, n);
                let mut got = Vec::new();
                let mut want = Vec::new();
                for (y, (lo, hi)) in ys.iter().zip([(0, s1), (s1, s2), (s2, n)]) {
                    got.extend(ctx.read_f32_async(&y.buf, 0, t * (hi - lo)).await.unwrap());
                    for r in 0..t {
                        want.extend_from_slice(&full[r * n + lo..r * n + hi]);
                    }
                }
                (got, want)
            }
            "swiglu" | "geglu" => {
                let yt = Tensor::zeros(ctx, "y", &[t, n / 2]).unwrap();
                let fused = if out == "swiglu" { Out::SwiGlu(&yt) } else { Out::GeGlu(&yt) };
                linear_shaped(&mut rec, "test", None, &xt, &w, Some(&bt), fused, t, shape).unwrap();
                rec.submit().unwrap();
                let full = reference(&x, &wf, Some(&b), None, t, k, n);
                let (gate, up): (Vec<f32>, Vec<f32>) = full.chunks(2).map(|gu| (gu[0], gu[1])).unzip();
                let act = if out == "swiglu" { gate.iter().map(|&g| g / (1.0 + (-g).exp())).collect() } else { crate::ops::activation::gelu_reference(&gate, crate::ops::activation::Gelu::Tanh) };
                let want = act.iter().zip(&up).map(|(a, u)| a * u).collect();
                (ctx.read_f32_async(&yt.buf, 0, t * n / 2).await.unwrap(), want)
            }
            _ => {
                let yt = Tensor::zeros(ctx, "y", &[t, n]).unwrap();
                linear_shaped(&mut rec, "test", None, &xt, &w, None, Out::One(&yt, Store::Write), t, shape).unwrap();
                rec.submit().unwrap();
                (ctx.read_f32_async(&yt.buf, 0, t * n).await.unwrap(), reference(&x, &wf, None, None, t, k, n))
            }
        };
        compare(&got, &want, abs, rel).unwrap_or_else(|e| panic!("{label}: {e}"));
    }

    /// A norm folded into the input (`NormIn`) of the mat-vec kernel `shape` selects, against
    /// rms_norm then the dequantized linear layer on the CPU. The norm weight sits at an odd
    /// offset of its binding; x is large enough for the norm to matter.
    async fn run_norm_in(ctx: &Context, dtype: DType, t: usize, k: usize, n: usize, out: &str, shape: MatVecShape) {
        let (w, wf) = random_weight(ctx, dtype, n, k, (n * 17 + k) as u64);
        let x: Vec<f32> = test_values(t * k, 51 + t as u64).iter().map(|v| 4.0 * v).collect();
        let g: Vec<f32> = test_values(k, 52).iter().map(|v| 0.5 + v.abs()).collect();
        let (off, eps) = (3, 1e-5);
        let aux: Vec<f32> = [vec![9.0; off], g.clone()].concat();
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let at = Tensor::upload_f32(ctx, "aux", &[aux.len()], &aux).unwrap();
        let norm = NormIn { aux: &at, off, eps };
        if !fuses_norm(ctx, t, &w, shape) {
            let yt = Tensor::zeros(ctx, "y", &[t, n]).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            assert!(linear_fused(&mut rec, "test", None, &xt, Some(norm), &w, None, Out::One(&yt, Store::Write), t, shape).is_err());
            return;
        }
        let xn = crate::ops::norm::reference(&x, &g, eps);
        let full = reference(&xn, &wf, None, None, t, k, n);
        let y0 = test_values(t * n, 53);
        let yt = Tensor::upload_f32(ctx, "y", &[t, n], &y0).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let (o, len, want) = match out {
            "accumulate" => (Out::One(&yt, Store::Accumulate), t * n, full.iter().zip(&y0).map(|(a, b)| a + b).collect()),
            "swiglu" => {
                let want = full.chunks(2).map(|gu| gu[0] / (1.0 + (-gu[0]).exp()) * gu[1]).collect();
                (Out::SwiGlu(&yt), t * n / 2, want)
            }
            _ => (Out::One(&yt, Store::Write), t * n, full),
        };
        linear_fused(&mut rec, "test", None, &xt, Some(norm), &w, None, o, t, shape).unwrap();
        rec.submit().unwrap();
        let got = ctx.read_f32_async(&yt.buf, 0, len).await.unwrap();
        let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
        // As run_quant's bound, with x normed to RMS 1 and scaled by g < 1.5.
        compare(&got, &want, 3e-6 * k as f32 * wmax.max(1.0), 1e-4).unwrap_or_else(|e| panic!("norm in: {dtype:?} t {t} k {k} n {n} {out} {shape:?}: {e}"));
    }

    /// Mode 5: a normed Q/K/V projection with RoPE (adjacent pairs, partial rotary, a scale on
    /// cos and sin) and the cache write folded into its store, against rms_norm, the linear
    /// layer, the RoPE reference and kv_write's layout on the CPU. Heads of 10 (pairs cross the
    /// 4-row groups of the kernels), 3 Q heads on 1 KV head, tokens in two slots of a 7-row ring
    /// (positions past it wrap), an f32 or an f16 cache.
    async fn run_rope_kv(ctx: &Context, dtype: DType, t: usize, shape: MatVecShape, kv_f16: bool) {
        use crate::ops::rope::{reference_freqs_scaled, RopeStyle};
        use crate::weights::dtype::{f16_to_f32, f32_to_f16};
        let (hd, rot, nh, nkv, cache_len, n_slots) = (10, 6, 3, 1, 7, 2);
        let k = if dtype.block_len() == 256 { 256 } else { 64 };
        let (q_rows, kv_rows) = (nh * hd, nkv * hd);
        let n = q_rows + 2 * kv_rows;
        let (w, wf) = random_weight(ctx, dtype, n, k, (n * 13 + k) as u64);
        let x: Vec<f32> = test_values(t * k, 61 + t as u64).iter().map(|v| 3.0 * v).collect();
        let g: Vec<f32> = test_values(k, 62).iter().map(|v| 0.5 + v.abs()).collect();
        let inv_freq = [1.0f32, 0.3, 0.05];
        let (eps, amp) = (1e-6, 0.9);
        let aux: Vec<f32> = [g.clone(), inv_freq.to_vec()].concat();
        let at = Tensor::upload_f32(ctx, "aux", &[aux.len()], &aux).unwrap();
        let xt = Tensor::upload_f32(ctx, "x", &[t, k], &x).unwrap();
        let qt = Tensor::zeros(ctx, "q", &[t, q_rows]).unwrap();
        let per_word = if kv_f16 { 2 } else { 1 };
        let cache_elems = n_slots * nkv * cache_len * hd;
        let kc = Tensor::zeros(ctx, "k cache", &[cache_elems / per_word]).unwrap();
        let vc = Tensor::zeros(ctx, "v cache", &[cache_elems / per_word]).unwrap();
        // Token i: slot i % 2 at position 3 + i, cache row (3 + i) % cache_len.
        let place = |i: usize| (i % 2, 3 + i);
        let tokens = (0..t).map(|i| {
            let (slot, pos) = place(i);
            (((slot * nkv * cache_len) + pos % cache_len) as u32 * hd as u32, pos as u32)
        }).collect();
        let r = RopeKv { q: &qt, k_cache: &kc, v_cache: &vc, q_rows, kv_rows, head_dim: hd, rot_dim: rot, freqs_off: k, amp, kv_f16, kv_stride: cache_len * hd, tokens };
        let mut rec = Recorder::new(ctx, "test");
        linear_fused(&mut rec, "test", None, &xt, Some(NormIn { aux: &at, off: 0, eps }), &w, None, Out::RopeKv(&r), t, shape).unwrap();
        rec.submit().unwrap();

        let full = reference(&crate::ops::norm::reference(&x, &g, eps), &wf, None, None, t, k, n);
        let mut want_q = Vec::new();
        let mut want_k = vec![0f32; cache_elems];
        let mut want_v = vec![0f32; cache_elems];
        for i in 0..t {
            let row = &full[i * n..(i + 1) * n];
            let (slot, pos) = place(i);
            want_q.extend(reference_freqs_scaled(&row[..q_rows], nh, hd, pos, &inv_freq, RopeStyle::Adjacent, amp));
            let kr = reference_freqs_scaled(&row[q_rows..q_rows + kv_rows], nkv, hd, pos, &inv_freq, RopeStyle::Adjacent, amp);
            for h in 0..nkv {
                let at = ((slot * nkv + h) * cache_len + pos % cache_len) * hd;
                want_k[at..at + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
                want_v[at..at + hd].copy_from_slice(&row[q_rows + kv_rows + h * hd..q_rows + kv_rows + (h + 1) * hd]);
            }
        }
        let read_cache = |words: Vec<u32>| -> Vec<f32> {
            if kv_f16 {
                words.iter().flat_map(|&w| [f16_to_f32(w as u16), f16_to_f32((w >> 16) as u16)]).collect()
            } else {
                words.iter().map(|&w| f32::from_bits(w)).collect()
            }
        };
        let wmax = wf.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Q and K also carry sin/cos's error (WGSL allows 2^-11 absolute; SwiftShader uses
        // it) on both values of a pair: 2 · that · the largest projected value.
        let ymax = full.iter().fold(0f32, |m, v| m.max(v.abs()));
        let abs = 3e-6 * k as f32 * wmax.max(1.0) + 2.0 * crate::ops::sin_cos_tolerance(ctx) * ymax;
        let label = format!("rope kv: {dtype:?} t {t} {shape:?} f16 {kv_f16}");
        compare(&ctx.read_f32_async(&qt.buf, 0, t * q_rows).await.unwrap(), &want_q, abs, 1e-4).unwrap_or_else(|e| panic!("{label} Q: {e}"));
        for (cache, want, what) in [(&kc, want_k, "K"), (&vc, want_v, "V")] {
            let got = read_cache(ctx.read_u32_async(&cache.buf, 0, cache_elems / per_word).await.unwrap());
            // An f16 cache: the reference rounded to f16 as the store does, then the same bound.
            let want: Vec<f32> = if kv_f16 { want.iter().map(|&v| f16_to_f32(f32_to_f16(v))).collect() } else { want };
            let (abs, rel) = if kv_f16 { (abs, 2e-3) } else { (abs, 1e-4) };
            compare(&got, &want, abs, rel).unwrap_or_else(|e| panic!("{label} {what} cache: {e}"));
        }
    }

    gpu_test!(fn norm_folded_into_the_matvec_input_matches_reference(ctx) {
        // Every format through both shapes' one-token kernels; the norm is applied before a
        // format's code runs, so the multi-token kernels take three formats (a block of 32
        // with a minimum, a K-quant, f32), with 8 tokens too many to stage for Rows at k 512.
        for dtype in ALL {
            let k = if dtype.block_len() == 256 { 512 } else { 96 };
            for shape in MatVecShape::ALL.into_iter().filter(|s| s.available(ctx)) {
                run_norm_in(ctx, dtype, 1, k, 37, "write", shape).await;
                if matches!(dtype, DType::Q4_1 | DType::Q4_K | DType::F32) {
                    run_norm_in(ctx, dtype, 3, k, 66, "swiglu", shape).await;
                    run_norm_in(ctx, dtype, MATVEC_MAX_TOKENS, k, 33, "accumulate", shape).await;
                }
            }
        }
        // SmolLM2's 576 columns: 18 units, lanes with unequal counts; token counts that leave
        // staging invocations idle (64 % t != 0), and the most that fit the staged x (6 × 576).
        run_norm_in(ctx, DType::Q4_1, 1, 576, 65, "write", MatVecShape::Lanes(16)).await;
        for t in [5, 6, 7] {
            run_norm_in(ctx, DType::Q4_1, t, 576, 65, "write", MatVecShape::Rows).await;
        }
    });

    gpu_test!(fn rope_and_cache_write_folded_into_the_qkv_store_match_reference(ctx) {
        // The store runs after a format's code: three formats, each kernel of both shapes.
        for dtype in [DType::F32, DType::Q4_1, DType::Q6_K] {
            for shape in MatVecShape::ALL.into_iter().filter(|s| s.available(ctx)) {
                for (t, f16) in [(1, false), (5, true)] {
                    run_rope_kv(ctx, dtype, t, shape, f16).await;
                }
            }
        }
        for shape in MatVecShape::ALL.into_iter().filter(|s| s.available(ctx)) {
            run_rope_kv(ctx, DType::Q8_0, MATVEC_MAX_TOKENS, shape, true).await;
            run_rope_kv(ctx, DType::Q4_K, 2, shape, false).await;
        }
    });

    const ALL: [DType; DType::ALL.len()] = DType::ALL;

    thread_local! {
        /// `matmul_tiled`'s rows per thread, forced by a test (`tiled_rows_per_thread`).
        pub(super) static FORCE_RPT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        /// Set: `matvec_rows` and `matmul_rows` without X_LANES on adapters that would take it.
        pub(super) static NO_X_LANES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn each_type_has_its_own_shader() {
        for dtype in DType::ALL {
            assert_eq!(quant_shader(dtype).name, format!("quant_{}", dtype.name().to_lowercase()));
            assert_eq!(quant_subgroup_shader(dtype).name, format!("quant_subgroup_{}", dtype.name().to_lowercase()));
        }
    }

    #[test]
    fn batches_of_up_to_eight_tokens_take_a_matvec() {
        use MatVecShape::*;
        let sg = Subgroup { threads: 32, groups: 1 };
        assert_eq!(quant_kernel(1, Lanes(64)), QuantKernel::MatVec);
        let multi: Vec<_> = (2..=8).map(|t| quant_kernel(t, Lanes(8))).collect();
        assert_eq!(multi, [2, 3, 4, 5, 6, 7, 8].map(QuantKernel::MatVecMulti));
        let rows: Vec<_> = (1..=8).map(|t| quant_kernel(t, Rows)).collect();
        assert_eq!(rows, [1, 2, 3, 4, 5, 6, 7, 8].map(QuantKernel::MatVecRows));
        let sgs: Vec<_> = (1..=8).map(|t| quant_kernel(t, sg)).collect();
        assert_eq!(sgs, [1, 2, 3, 4, 5, 6, 7, 8].map(QuantKernel::MatVecSubgroup));
        assert_eq!(quant_kernel(9, Rows), QuantKernel::MatMulRows);
        for shape in [Lanes(64), sg] {
            assert_eq!(quant_kernel(9, shape), QuantKernel::MatMulTiled);
        }
        // 64-row tiles where they are many, 32-row tiles where they are few.
        assert_eq!(tiled_rows_per_thread(576, 64, 64), 2);
        assert_eq!(tiled_rows_per_thread(64 * TILED_MIN_TILES, 9, 16), 4);
        assert_eq!(tiled_rows_per_thread(1536, 512, 64), 4);
    }

    #[test]
    fn each_adapter_class_gets_its_matvec_shape_and_the_env_overrides_it() {
        use wgpu::DeviceType::*;
        use MatVecShape::*;
        let nvidia = 0x10de;
        assert_eq!(MatVecShape::for_adapter(Cpu, 0x10005, true, 8), Rows);
        assert_eq!(MatVecShape::for_adapter(DiscreteGpu, nvidia, true, 32), Subgroup { threads: 32, groups: 1 });
        assert_eq!(MatVecShape::for_adapter(DiscreteGpu, 0x1002, true, 64), Subgroup { threads: 64, groups: 1 });
        assert_eq!(MatVecShape::for_adapter(IntegratedGpu, VENDOR_INTEL, true, 8), Subgroup { threads: 32, groups: 4 });
        assert_eq!(MatVecShape::for_adapter(DiscreteGpu, nvidia, false, 0), Lanes(64));
        assert_eq!(MatVecShape::for_adapter(IntegratedGpu, 0x106b, false, 0), Lanes(32));
        // 4 rows per workgroup on a discrete GPU: a 2048-row projection launches 512.
        assert_eq!(MatVecShape::for_adapter(DiscreteGpu, nvidia, true, 32).rows_per_workgroup(), 4);
        assert_eq!(Lanes(64).rows_per_workgroup(), 4);
        assert_eq!(MatVecShape::parse(" Rows ", 0, 8), Ok(Rows));
        assert_eq!(MatVecShape::parse("lanes", 0, 8), Ok(Lanes(64)));
        assert_eq!(MatVecShape::parse("lanes:16", 0, 8), Ok(Lanes(16)));
        assert_eq!(MatVecShape::parse("subgroup", nvidia, 32), Ok(Subgroup { threads: 32, groups: 1 }));
        assert_eq!(MatVecShape::parse("subgroup:8:3", 0, 8), Ok(Subgroup { threads: 8, groups: 3 }));
        for bad in ["", "lanes:12", "lanes:64:2", "subgroup:32", "subgroup:32:0", "subgroup:128:1", "rows:4", "tiles"] {
            assert!(MatVecShape::parse(bad, 0, 8).is_err(), "'{bad}' was accepted");
        }
        assert!(MatVecShape::parse("lanes:12", 0, 8).unwrap_err().contains("[8, 16, 32, 64]"));
    }

    gpu_test!(fn quantized_matvec_matches_dequantized_reference(ctx) {
        for dtype in ALL {
            let k = if dtype.block_len() == 256 { 512 } else { 96 };
            run_quant(ctx, dtype, 1, k, 37, "write", u64::MAX).await;
            run_quant(ctx, dtype, 3, k, 131, "accumulate", u64::MAX).await;
            run_quant(ctx, dtype, MATVEC_MAX_TOKENS, k, 33, "write", u64::MAX).await;
            // Token counts the other tests leave out, one with the fused residual add.
            run_quant(ctx, dtype, 5, k, 29, "write", u64::MAX).await;
            run_quant(ctx, dtype, 2, k, 70, "accumulate", u64::MAX).await;
        }
        // 18 units per row (SmolLM2's 576 columns), and one lane with more units than others.
        run_quant(ctx, DType::Q4_1, 1, 576, 65, "write", u64::MAX).await;
        run_quant(ctx, DType::Q8_0, 2, 576, 33, "write", u64::MAX).await;
        run_quant(ctx, DType::Q6_K, 1, 768, 9, "write", u64::MAX).await;
    });

    gpu_test!(fn matvec_shapes_at_their_extremes(ctx) {
        // The shapes' other ends, on a format with a per-block minimum and a K-quant: 64 lanes
        // (a 6-level tree, 4 rows per workgroup); 4 subgroups of 8 in a workgroup with one row
        // group (3 idle); 8 subgroups walking 16 row groups (2 each, the last workgroup's
        // partly past the rows). Norm folded in and not, 1 and 5 tokens.
        let shapes = [MatVecShape::Lanes(64), MatVecShape::Subgroup { threads: 32, groups: 1 }, MatVecShape::Subgroup { threads: 64, groups: 16 }];
        for shape in shapes.into_iter().filter(|s| s.available(ctx)) {
            for dtype in [DType::Q4_1, DType::Q4_K] {
                let k = if dtype.block_len() == 256 { 512 } else { 576 };
                run_quant_shaped(ctx, dtype, 1, k, 77, "write", u64::MAX, shape).await;
                run_quant_shaped(ctx, dtype, 5, k, 131, "accumulate", u64::MAX, shape).await;
                run_norm_in(ctx, dtype, 1, k, 37, "write", shape).await;
                run_norm_in(ctx, dtype, 5, k, 66, "swiglu", shape).await;
            }
        }
        if std::env::var_os("CI").is_some() && ctx.info.backend == wgpu::Backend::Vulkan && ctx.info.device_type == wgpu::DeviceType::Cpu {
            // lavapipe has subgroups: the subgroup kernels must run here, not be skipped.
            assert!(ctx.subgroups(), "{} offers no subgroups: the subgroup mat-vec went untested", ctx.info.name);
        }
    });

    gpu_test!(fn rows_kernels_with_x_loaded_per_lane_and_without(ctx) {
        // On an adapter with subgroups of 8 or more (lavapipe), matvec_rows and matmul_rows take
        // X_LANES, which every other test here runs; this runs them without it as well (what
        // SwiftShader and CPU adapters without subgroups take), and with it again for formats
        // with and without a per-block minimum, odd row counts, norm folded in and not.
        // (Where X_LANES is not taken, as in the browser, both rounds would run the same code.)
        let rounds: &[bool] = if x_lanes(ctx) { &[true, false] } else { &[false] };
        for &no_x_lanes in rounds {
            NO_X_LANES.with(|f| f.set(no_x_lanes));
            for dtype in [DType::F32, DType::Q4_1, DType::Q8_0, DType::Q4_K] {
                let k = if dtype.block_len() == 256 { 512 } else { 96 };
                for t in [1, 3, 8] {
                    run_quant_shaped(ctx, dtype, t, k, 261, "write", u64::MAX, MatVecShape::Rows).await;
                    run_norm_in(ctx, dtype, t, k, 38, "swiglu", MatVecShape::Rows).await;
                }
                run_quant_shaped(ctx, dtype, 21, k, 67, "accumulate", u64::MAX, MatVecShape::Rows).await;
            }
            // k · t past what a workgroup stages: without X_LANES the norm does not fold (the
            // call is refused); with it, nothing is staged.
            run_norm_in(ctx, DType::Q4_1, 8, 576, 38, "write", MatVecShape::Rows).await;
        }
        NO_X_LANES.with(|f| f.set(false));
        if std::env::var_os("CI").is_some() && ctx.info.backend == wgpu::Backend::Vulkan && ctx.info.device_type == wgpu::DeviceType::Cpu {
            assert!(x_lanes(ctx), "{}: X_LANES went untested", ctx.info.name);
        }
    });

    gpu_test!(fn quantized_matmul_matches_dequantized_reference(ctx) {
        use MatVecShape::{Lanes, Rows};
        for dtype in ALL {
            // Two super-blocks per row for the K-quants.
            let k = if dtype.block_len() == 256 { 512 } else { 160 };
            // matmul_rows (CPU-type adapters): 8 tokens at a time, the last group of 4 (t = 12), 8
            // (t = 40) or 6 (t = 70).
            run_quant_shaped(ctx, dtype, 12, k, 37, "write", u64::MAX, Rows).await;
            run_quant_shaped(ctx, dtype, 40, k, 37, "write", u64::MAX, Rows).await;
            run_quant_shaped(ctx, dtype, 70, k, 67, "accumulate", u64::MAX, Rows).await;
            // matmul_tiled (GPUs): 32-row tiles (what a layer with few tiles takes), then 64-row
            // tiles, forced (a layer takes them where it has TILED_MIN_TILES of them), the last
            // one partial. Each pipeline costs seconds to compile in SwiftShader, so the taller
            // token tiles, whose code does not depend on the format, run for two formats.
            run_quant_shaped(ctx, dtype, 12, k, 37, "write", u64::MAX, Lanes(16)).await;
            FORCE_RPT.with(|f| f.set(Some(4)));
            run_quant_shaped(ctx, dtype, 12, k, 130, "swiglu", u64::MAX, Lanes(16)).await;
            if matches!(dtype, DType::F32 | DType::Q4_K) {
                run_quant_shaped(ctx, dtype, 70, k, 67, "accumulate", u64::MAX, Lanes(16)).await;
            }
            FORCE_RPT.with(|f| f.set(None));
            if matches!(dtype, DType::F32 | DType::Q4_K) {
                run_quant_shaped(ctx, dtype, 40, k, 37, "write", u64::MAX, Lanes(16)).await;
            }
        }
    });

    gpu_test!(fn fused_outputs_and_split_bindings(ctx) {
        for dtype in DType::ALL {
            let k = if dtype.block_len() == 256 { 256 } else { 64 };
            for t in [1, 2, 9] {
                run_quant(ctx, dtype, t, k, 75, "split3", u64::MAX).await;
                run_quant(ctx, dtype, t, k, 66, "swiglu", u64::MAX).await;
            }
            // A binding limit that holds 32 rows: the weight is split into chunks of rows.
            let row = crate::weights::repack::quant_bytes_per_row(dtype, k) as u64;
            for out in ["write", "split3", "swiglu", "accumulate"] {
                run_quant(ctx, dtype, 1, k, 130, out, 32 * row + 5).await;
                run_quant(ctx, dtype, 7, k, 130, out, 32 * row + 5).await;
            }
        }
    });

    gpu_test!(fn geglu_fused_store_matches_reference_for_every_format(ctx) {
        for dtype in ALL {
            let k = if dtype.block_len() == 256 { 256 } else { 64 };
            // Mat-vec (1, 8 tokens) and mat-mat (20 tokens; 12 for matmul_tiled, a pipeline the
            // other tests compile too) stores; a bias on gate and up.
            for t in [1, MATVEC_MAX_TOKENS] {
                run_quant(ctx, dtype, t, k, 66, "geglu", u64::MAX).await;
            }
            run_quant_shaped(ctx, dtype, 20, k, 66, "geglu", u64::MAX, MatVecShape::Rows).await;
            run_quant_shaped(ctx, dtype, 12, k, 66, "geglu", u64::MAX, MatVecShape::Lanes(16)).await;
            let row = crate::weights::repack::quant_bytes_per_row(dtype, k) as u64;
            run_quant(ctx, dtype, 3, k, 130, "geglu", 32 * row + 5).await; // split bindings
        }
    });

    gpu_test!(fn matvec_matches_reference_on_odd_sizes(ctx) {
        // k % 32 == 0 takes quant.wgsl's f32 format, other k the plain f32 kernels.
        for &(t, k, n) in &[(1, 1, 1), (1, 7, 3), (1, 577, 131), (3, 64, 1001), (4, 129, 9), (1, 4, 5), (1, 576, 193), (2, 1536, 77)] {
            run(ctx, t, k, n, false, Store::Write).await;
        }
        run(ctx, 1, 100, 37, true, Store::Accumulate).await;
        run(ctx, 2, 33, 65, true, Store::Write).await;
    });

    gpu_test!(fn matmul_matches_reference_on_odd_sizes(ctx) {
        for &(t, k, n) in &[(9, 1, 1), (12, 17, 3), (33, 65, 129), (70, 200, 67), (9, 576, 100), (10, 4, 3), (65, 68, 129), (130, 1536, 61)] {
            run(ctx, t, k, n, false, Store::Write).await;
        }
        run(ctx, 37, 50, 70, true, Store::Accumulate).await;
        run(ctx, 11, 31, 5, true, Store::Write).await;
        // Bias and a fused residual add, as prefill's o_proj/down_proj use them.
        run(ctx, 37, 52, 70, true, Store::Accumulate).await;
        run(ctx, 70, 576, 131, false, Store::Accumulate).await;
    });
}

#[path = "matmul_backward.rs"]
pub mod backward;
