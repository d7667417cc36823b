//! How weights are laid out on the GPU. The shaders read every format as 32-weight units: the
//! quants of a unit as whole 16-byte vectors (`wq`) and its scales as 32-bit words (`ws`), so the
//! GGUF blocks (34 or 18 bytes for Q8_0/Q4_0, 210 for Q6_K) are split at load into a quants
//! array and a scales array, row by row. What goes where, per format, is described at the top
//! of its `shaders/formats/` file. The bits are unchanged: a GPU weight dequantizes to
//! exactly what `dtype::dequantize` gives for the file's block. Rows are independent (each
//! row's scales are padded to whole words), so rows of several tensors can be stacked or
//! interleaved into one fused weight.

use super::dtype::DType;

/// Bytes of quants (`wq`) per row of `cols` weights.
pub fn quant_bytes_per_row(dtype: DType, cols: usize) -> usize {
    let units = cols / 32;
    match dtype {
        DType::F32 => 4 * cols,
        DType::F16 | DType::BF16 => 2 * cols,
        DType::Q8_0 => 32 * units,
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::IQ4_NL => 16 * units,
        DType::Q2_K => 64 * (cols / 256),
        DType::Q3_K => 96 * (cols / 256),
        DType::Q4_K | DType::IQ4_XS => 128 * (cols / 256),
        DType::Q5_K => 160 * (cols / 256),
        DType::Q6_K => 192 * (cols / 256),
    }
}

/// Bytes of scales (`ws`) per row of `cols` weights; a whole number of 4-byte words.
pub fn scale_bytes_per_row(dtype: DType, cols: usize) -> usize {
    let units = cols / 32;
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => 0,
        // f16 d per unit, two per word, the row padded to an even count
        DType::Q8_0 | DType::Q4_0 | DType::IQ4_NL => 2 * units.next_multiple_of(2),
        DType::Q4_1 => 4 * units,
        // two words per unit: the f16 scale(s), then the 32 fifth bits
        DType::Q5_0 | DType::Q5_1 => 8 * units,
        DType::IQ4_XS => 8 * (cols / 256),
        DType::Q4_K | DType::Q5_K | DType::Q3_K => 16 * (cols / 256),
        DType::Q6_K | DType::Q2_K => 20 * (cols / 256),
    }
}

/// Appends the GPU layout of one row (`row`: the file's bytes of `cols` weights) to `quants`
/// and `scales`.
pub fn repack_row(dtype: DType, row: &[u8], quants: &mut Vec<u8>, scales: &mut Vec<u8>) {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => quants.extend_from_slice(row),
        DType::Q8_0 | DType::Q4_0 | DType::IQ4_NL => {
            let size = dtype.block_bytes();
            let start = scales.len();
            for b in row.chunks_exact(size) {
                scales.extend_from_slice(&b[0..2]);
                quants.extend_from_slice(&b[2..]);
            }
            if (scales.len() - start) % 4 != 0 {
                scales.extend_from_slice(&[0, 0]);
            }
        }
        DType::Q4_1 => split_blocks(row, 20, 4, scales, quants),
        DType::Q4_K | DType::Q5_K => split_blocks(row, dtype.block_bytes(), 16, scales, quants),
        // ql and qh as the file has them; the 16 scale bytes and f16 d
        DType::Q6_K => split_tail(row, 210, 192, scales, quants),
        DType::Q5_0 => {
            for b in row.chunks_exact(22) {
                scales.extend_from_slice(&[b[0], b[1], 0, 0]);
                scales.extend_from_slice(&b[2..6]);
                quants.extend_from_slice(&b[6..22]);
            }
        }
        // (d, m), then the fifth bits: as the file has them
        DType::Q5_1 => split_blocks(row, 24, 8, scales, quants),
        // the 16 (scale, min) bytes, then f16 (d, dmin) from the block's end
        DType::Q2_K => {
            for b in row.chunks_exact(84) {
                scales.extend_from_slice(&b[0..16]);
                scales.extend_from_slice(&b[80..84]);
                quants.extend_from_slice(&b[16..80]);
            }
        }
        // high bits and 2-bit quants as the file has them; the 12 scale bytes and f16 d
        DType::Q3_K => split_tail(row, 110, 96, scales, quants),
        // f16 d, the u16 of high scale bits, the 4 bytes of low scale bits
        DType::IQ4_XS => split_blocks(row, 136, 8, scales, quants),
    }
}

/// Splits each `size`-byte block of `row` whose first `q_len` bytes are quants and the rest
/// scales, padding each block's scales to whole words.
fn split_tail(row: &[u8], size: usize, q_len: usize, scales: &mut Vec<u8>, quants: &mut Vec<u8>) {
    for b in row.chunks_exact(size) {
        quants.extend_from_slice(&b[..q_len]);
        scales.extend_from_slice(&b[q_len..]);
        scales.extend(std::iter::repeat_n(0, (size - q_len).next_multiple_of(4) - (size - q_len)));
    }
}

/// Splits each `size`-byte block of `row` into its first `head` bytes (scales) and the rest (quants).
fn split_blocks(row: &[u8], size: usize, head: usize, scales: &mut Vec<u8>, quants: &mut Vec<u8>) {
    for b in row.chunks_exact(size) {
        scales.extend_from_slice(&b[..head]);
        quants.extend_from_slice(&b[head..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sizes_match_what_repack_writes() {
        for dtype in DType::ALL {
            for cols in [256usize, 512, 32 * 9, 256 * 3] {
                if cols % dtype.block_len() != 0 {
                    continue;
                }
                let row = vec![7u8; dtype.bytes_for(cols).unwrap()];
                let (mut q, mut s) = (Vec::new(), Vec::new());
                repack_row(dtype, &row, &mut q, &mut s);
                assert_eq!(q.len(), quant_bytes_per_row(dtype, cols), "{dtype:?} {cols}");
                assert_eq!(s.len(), scale_bytes_per_row(dtype, cols), "{dtype:?} {cols}");
                assert_eq!(q.len() % 16, 0, "{dtype:?} {cols}: quants must be whole vec4<u32>");
                assert_eq!(s.len() % 4, 0, "{dtype:?} {cols}");
            }
        }
    }
}
