//! Storage types of weights in files, their block layouts, and dequantization to f32 on the CPU.
//! These loops are the reference that the GPU's dequantizing kernels are tested against.

use crate::error::{Error, Result};

/// A tensor's storage type as a file holds it. Quantized types are stored in blocks of
/// `block_len()` weights taking `block_bytes()` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // GGML's names
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 weights: f16 scale `d`, 32 × i8; w = d·q.
    Q8_0,
    /// 32 weights: f16 `d`, 4 bytes of fifth bits, 16 bytes of nibbles; w = d·(q − 16).
    Q5_0,
    /// 32 weights: f16 `d`, f16 `m`, 4 bytes of fifth bits, 16 bytes of nibbles; w = d·q + m.
    Q5_1,
    /// 32 weights: f16 scale `d`, 16 bytes of nibbles; w = d·(q − 8).
    Q4_0,
    /// 32 weights: f16 `d`, f16 `m`, 16 bytes of nibbles; w = d·q + m.
    Q4_1,
    /// 32 weights: f16 `d`, 16 bytes of nibbles indexing a fixed non-linear table; w = d·T[q].
    IQ4_NL,
    /// 256 weights: 16 bytes of 4-bit (scale, min) pairs (one per 16 weights), 64 bytes of 2-bit
    /// quants, f16 `d`, f16 `dmin`; w = d·sc·q − dmin·m.
    Q2_K,
    /// 256 weights: 32 bytes of high bits, 64 bytes of 2-bit lows, 12 bytes of 6-bit scales (one
    /// per 16 weights), f16 `d`; w = d·(sc − 32)·(q − 4·(1 − h)).
    Q3_K,
    /// 256 weights: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minimums for 8 groups of
    /// 32, 128 bytes of nibbles; w = d·sc·q − dmin·m.
    Q4_K,
    /// Q4_K with a fifth bit per weight (32 bytes of high bits before the nibbles).
    Q5_K,
    /// 256 weights: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 i8 scales (one per
    /// 16 weights), f16 `d`; w = d·sc·(q − 32).
    Q6_K,
    /// 256 weights: f16 `d`, 6-bit scales (2 high bits in a u16, 4 low bits in 4 bytes) for 8
    /// groups of 32, 128 bytes of nibbles into IQ4_NL's table; w = d·(sc − 32)·T[q].
    IQ4_XS,
}

/// IQ4_NL's (and IQ4_XS's) 16 non-linear quant values (GGML's kvalues_iq4nl).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Every storage type quill reads, in the enum's order, with its GGML type code, name, weights
/// per block and bytes per block. The one table that messages listing the supported types use.
const TABLE: [(DType, u32, &str, usize, usize); 15] = [
    (DType::F32, 0, "F32", 1, 4),
    (DType::F16, 1, "F16", 1, 2),
    (DType::BF16, 30, "BF16", 1, 2),
    (DType::Q8_0, 8, "Q8_0", 32, 34),
    (DType::Q5_0, 6, "Q5_0", 32, 22),
    (DType::Q5_1, 7, "Q5_1", 32, 24),
    (DType::Q4_0, 2, "Q4_0", 32, 18),
    (DType::Q4_1, 3, "Q4_1", 32, 20),
    (DType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (DType::Q2_K, 10, "Q2_K", 256, 84),
    (DType::Q3_K, 11, "Q3_K", 256, 110),
    (DType::Q4_K, 12, "Q4_K", 256, 144),
    (DType::Q5_K, 13, "Q5_K", 256, 176),
    (DType::Q6_K, 14, "Q6_K", 256, 210),
    (DType::IQ4_XS, 23, "IQ4_XS", 256, 136),
];

impl DType {
    /// Every type, in the table's order.
    pub const ALL: [DType; TABLE.len()] = {
        let mut all = [DType::F32; TABLE.len()];
        let mut i = 0;
        while i < TABLE.len() {
            // A row out of the enum's order fails the build, so `row` can index by variant.
            assert!(TABLE[i].0 as usize == i, "dtype::TABLE must list the variants in order");
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (DType, u32, &'static str, usize, usize) {
        &TABLE[self as usize]
    }
    pub fn name(self) -> &'static str {
        self.row().2
    }
    /// Weights per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        self.row().3
    }
    pub fn block_bytes(self) -> usize {
        self.row().4
    }
    /// The type of GGML type code `code` (as GGUF stores it).
    pub fn from_ggml(code: u32) -> Option<DType> {
        TABLE.iter().find(|r| r.1 == code).map(|r| r.0)
    }
    /// "F32, F16, …, IQ4_XS": the supported types, for error messages.
    pub fn supported_list() -> String {
        Self::names_where(|_| true)
    }
    /// The names of the types `keep` selects, comma-separated (safetensors has only the floats).
    pub fn names_where(keep: impl Fn(DType) -> bool) -> String {
        TABLE.iter().filter(|r| keep(r.0)).map(|r| r.2).collect::<Vec<_>>().join(", ")
    }
    /// Bytes taken by `n` weights, or None when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if n % self.block_len() != 0 {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }
}

/// IEEE half to f32, exact for every input (subnormals, infinities, NaN).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: value = m · 2^-24
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE half, rounding to nearest even (used by tests and by f16 uploads).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut r = m >> shift;
        if rest > half || (rest == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (r & 1) == 1) {
        r += 1; // may carry into the exponent, which is the right rounding
    }
    sign | r as u16
}

pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

fn le_u16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Dequantizes `n` weights of type `dtype` from `bytes` (which must hold exactly
/// `dtype.bytes_for(n)` bytes) into f32.
pub fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let need = dtype.bytes_for(n).ok_or_else(|| Error::Shape {
        op: "dequantize",
        msg: format!("{n} weights is not a whole number of {} blocks", dtype.name()),
    })?;
    if bytes.len() != need {
        return Err(Error::Shape {
            op: "dequantize",
            msg: format!("{n} {} weights need {need} bytes, got {}", dtype.name(), bytes.len()),
        });
    }
    let mut out = Vec::with_capacity(n);
    match dtype {
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        DType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        DType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_to_f32(le_u16(b, 0));
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        DType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_to_f32(le_u16(b, 0));
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0xf) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        DType::Q4_K | DType::Q5_K => {
            let five = dtype == DType::Q5_K;
            for b in bytes.chunks_exact(dtype.block_bytes()) {
                let d = f16_to_f32(le_u16(b, 0));
                let dmin = f16_to_f32(le_u16(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for j in 0..8 {
                    let (sc, m) = k_scale_min(scales, j);
                    let (d1, m1) = (d * sc as f32, dmin * m as f32);
                    let bytes = &qs[32 * (j / 2)..][..32];
                    for l in 0..32 {
                        let mut q = if j % 2 == 0 { bytes[l] & 0xf } else { bytes[l] >> 4 } as u32;
                        if five && qh[l] & (1 << j) != 0 {
                            q += 16;
                        }
                        out.push(d1 * q as f32 - m1);
                    }
                }
            }
        }
        DType::Q6_K => {
            for b in bytes.chunks_exact(210) {
                let (ql, qh) = (&b[0..128], &b[128..192]);
                let sc = |i: usize| b[192 + i] as i8 as f32;
                let d = f16_to_f32(le_u16(b, 208));
                for n in 0..2 {
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let (a, c, h) = (ql[64 * n + l], ql[64 * n + l + 32], qh[32 * n + l]);
                        let q1 = ((a & 0xf) | ((h & 3) << 4)) as i32 - 32;
                        let q2 = ((c & 0xf) | (((h >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
                        let is = 8 * n + l / 16;
                        y[l] = d * sc(is) * q1 as f32;
                        y[l + 32] = d * sc(is + 2) * q2 as f32;
                        y[l + 64] = d * sc(is + 4) * q3 as f32;
                        y[l + 96] = d * sc(is + 6) * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            // Byte j of the nibbles holds weights j (low) and j + 16 (high); bit i of the u32
            // `qh` is weight i's fifth bit.
            let one = dtype == DType::Q5_1;
            for b in bytes.chunks_exact(dtype.block_bytes()) {
                let d = f16_to_f32(le_u16(b, 0));
                let (m, rest) = if one { (f16_to_f32(le_u16(b, 2)), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let q = |i: usize| ((qs[i % 16] >> (4 * (i / 16))) & 0xf) as u32 | (((qh >> i) & 1) << 4);
                if one {
                    out.extend((0..32).map(|i| d * q(i) as f32 + m));
                } else {
                    out.extend((0..32).map(|i| d * (q(i) as i32 - 16) as f32));
                }
            }
        }
        DType::Q2_K => {
            for b in bytes.chunks_exact(84) {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_to_f32(le_u16(b, 80)), f16_to_f32(le_u16(b, 82)));
                // Weight 128h + 32s + l is bits 2s, 2s + 1 of byte 32h + l; group of 16: i / 16.
                for i in 0..256 {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let q = (qs[32 * h + l] >> (2 * s)) & 3;
                    let sc = scales[i / 16];
                    out.push(d * (sc & 0xf) as f32 * q as f32 - dmin * (sc >> 4) as f32);
                }
            }
        }
        DType::Q3_K => {
            for b in bytes.chunks_exact(110) {
                let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_to_f32(le_u16(b, 108));
                for i in 0..256 {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let low = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
                    // A clear high bit subtracts 4 (GGML's hmask).
                    let high = if hmask[l] & (1 << (i / 32)) != 0 { 0 } else { 4 };
                    out.push(d * q3_k_scale(scales, i / 16) as f32 * (low - high) as f32);
                }
            }
        }
        DType::IQ4_NL => {
            for b in bytes.chunks_exact(18) {
                let d = f16_to_f32(le_u16(b, 0));
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * IQ4_VALUES[(q & 0xf) as usize] as f32));
                out.extend(qs.iter().map(|&q| d * IQ4_VALUES[(q >> 4) as usize] as f32));
            }
        }
        DType::IQ4_XS => {
            for b in bytes.chunks_exact(136) {
                let d = f16_to_f32(le_u16(b, 0));
                let (scales_h, scales_l, qs) = (le_u16(b, 2), &b[4..8], &b[8..136]);
                for j in 0..8 {
                    let ls = ((scales_l[j / 2] >> (4 * (j % 2))) & 0xf) as i32 | ((((scales_h >> (2 * j)) & 3) as i32) << 4);
                    let dl = d * (ls - 32) as f32;
                    let group = &qs[16 * j..16 * j + 16];
                    out.extend(group.iter().map(|&q| dl * IQ4_VALUES[(q & 0xf) as usize] as f32));
                    out.extend(group.iter().map(|&q| dl * IQ4_VALUES[(q >> 4) as usize] as f32));
                }
            }
        }
        DType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16_to_f32(le_u16(b, 0));
                let m = f16_to_f32(le_u16(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0xf) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
    }
    Ok(out)
}

/// The 6-bit (scale, min) of group j (0..8) from a K-quant block's 12 packed bytes (GGML's
/// get_scale_min_k4).
fn k_scale_min(q: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The signed 6-bit scale of group i (0..16) from a Q3_K block's 12 packed bytes: 4 low bits
/// from byte i % 8 (low nibble for i < 8), 2 high bits from byte 8 + i % 4 (bits 2·(i / 4)).
fn q3_k_scale(q: &[u8], i: usize) -> i32 {
    let low = (q[i % 8] >> (4 * (i / 8))) & 0xf;
    let high = (q[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Quantizes f32 weights to Q8_0 (GGML's rounding: d = max|x| / 127, q = round(x / d)); `x.len()`
/// must be a multiple of 32. Used when a safetensors model is loaded with `--dtype q8_0`.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f32_to_f16(d).to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trips_every_finite_half() {
        for h in 0u16..=0xffff {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
                continue;
            }
            assert_eq!(f32_to_f16(x), h, "half {h:#06x} -> {x} did not round-trip");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00); // tie rounds to even
    }

    #[test]
    fn q4_1_block_layout() {
        // d = 0.5, m = -1: low nibble of byte j is weight j, high nibble is weight j+16.
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(-1.0).to_le_bytes());
        for j in 0..16 {
            b[4 + j] = (j as u8) | (((15 - j) as u8) << 4);
        }
        let w = dequantize(DType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(w[j], 0.5 * j as f32 - 1.0);
            assert_eq!(w[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f32_to_f16(0.25).to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let w = dequantize(DType::Q8_0, &b, 32).unwrap();
        assert!(w.iter().enumerate().all(|(j, &x)| x == 0.25 * (j as f32 - 16.0)));

        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&f32_to_f16(2.0).to_le_bytes());
        b[2] = 0x1f; // weight 0 = 15-8, weight 16 = 1-8
        let w = dequantize(DType::Q4_0, &b, 32).unwrap();
        assert_eq!(w[0], 14.0);
        assert_eq!(w[16], -14.0);
        assert_eq!(w[1], -16.0);
    }

    #[test]
    fn every_block_type_matches_gguf_py() {
        // tests/fixtures/quants.json (tests/fixtures/make_quants.py): random blocks of each type
        // (sane f16 scales) and their dequantization by gguf-py, the Python reference shipped
        // with llama.cpp.
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quants.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut seen = Vec::new();
        for case in v["cases"].as_array().unwrap() {
            let name = case["dtype"].as_str().unwrap();
            let dtype = DType::ALL.into_iter().find(|d| d.name() == name).unwrap();
            let hex = case["bytes_hex"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
            let want: Vec<f32> = case["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let got = dequantize(dtype, &bytes, want.len()).unwrap();
            // The same f32 products in the same order as gguf-py's numpy code: bit-exact.
            crate::ops::compare(&got, &want, 0.0, 0.0).unwrap_or_else(|e| panic!("{name}: {e}"));
            seen.push(name);
        }
        // Every type but F32 (whose bytes are its values).
        assert_eq!(seen.len(), DType::ALL.len() - 1, "{seen:?}");
    }

    #[test]
    fn q8_0_quantization_round_trips_within_half_a_step() {
        let x = crate::ops::test_values(96, 3);
        let q = quantize_q8_0(&x);
        let y = dequantize(DType::Q8_0, &q, 96).unwrap();
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, c) in xs.iter().zip(ys) {
                // half a step, plus the f16 rounding of d (2^-11 relative) times 127 steps
                assert!((a - c).abs() <= d * (0.5 + 127.0 / 2048.0), "block {b}: {a} vs {c}");
            }
        }
    }

    #[test]
    fn table_codes_and_sizes_are_ggml_s() {
        // GGML's type codes and block sizes (ggml-common.h), and the list errors print.
        let want = [(DType::Q5_0, 6, 32, 22), (DType::Q5_1, 7, 32, 24), (DType::Q2_K, 10, 256, 84), (DType::Q3_K, 11, 256, 110), (DType::IQ4_NL, 20, 32, 18), (DType::IQ4_XS, 23, 256, 136), (DType::BF16, 30, 1, 2)];
        for (d, code, len, bytes) in want {
            assert_eq!((DType::from_ggml(code), d.block_len(), d.block_bytes()), (Some(d), len, bytes), "{d:?}");
        }
        assert_eq!(DType::from_ggml(16), None); // IQ2_XXS
        assert_eq!(DType::names_where(|d| d.block_len() == 1), "F32, F16, BF16");
        assert_eq!(DType::supported_list(), "F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS");
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(DType::Q4_1, &[0u8; 20], 31).is_err());
        assert!(dequantize(DType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(dequantize(DType::F32, &[0u8; 7], 2).is_err());
    }
}
