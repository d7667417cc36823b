//! Backward of the embedding gather: a deterministic scatter-add of the output gradients into
//! the table's rows (WGSL has no float atomics). The host, which holds the batch's ids, sorts
//! the token positions into one segment per distinct id; one thread per (segment, column) sums
//! its segment in token order, so repeated ids add in the same order on every run.

use super::Params;
use crate::error::{Error, Result};
use crate::gpu::{grid, OpInfo, Recorder, Tensor};

/// The plan embed.wgsl's embed_backward reads: segment ids, segment bounds, sorted positions.
/// Returns (plan, number of segments).
pub fn plan(ids: &[u32]) -> (Vec<u32>, usize) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&t| ids[t as usize]); // stable: equal ids keep token order
    let mut seg_ids = Vec::new();
    let mut starts = Vec::new();
    for (j, &t) in order.iter().enumerate() {
        if seg_ids.last() != Some(&ids[t as usize]) {
            seg_ids.push(ids[t as usize]);
            starts.push(j as u32);
        }
    }
    starts.push(order.len() as u32);
    let n_seg = seg_ids.len();
    let mut plan = seg_ids;
    plan.extend(starts);
    plan.extend(order);
    (plan, n_seg)
}

/// dtable[ids[t], :] += dy[t, :] for t < ids.len(). dy: (n_tokens, dim); dtable: (vocab, dim),
/// zeroed by the caller before the first micro-batch.
pub fn embed_backward(rec: &mut Recorder, ids: &[u32], dy: &Tensor, dtable: &Tensor, vocab: usize, dim: usize) -> Result<()> {
    if let Some((t, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        return Err(Error::arg("ids", format!("token {id} at position {t} is outside the vocabulary of {vocab}")));
    }
    if ids.is_empty() || dim == 0 {
        return Err(Error::Shape { op: "embed_backward", msg: format!("empty input: {} tokens of width {dim}", ids.len()) });
    }
    dy.holds("embed_backward", "dy", ids.len() * dim)?;
    dtable.holds("embed_backward", "dtable", vocab * dim)?;
    let (plan, n_seg) = plan(ids);
    let plan = rec.ctx.upload("embed_backward plan", &plan)?;
    let pipe = rec.ctx.pipeline(&super::SHADER, "embed_backward", &[])?;
    let p = Params { n_tokens: ids.len() as u32, dim: dim as u32, id_offset: n_seg as u32, vocab: vocab as u32, scale: 1.0, _pad: [0; 3] };
    let n = (ids.len() * dim) as u64;
    let info = OpInfo::new("embed_backward", n, 4 * (n + 2 * (n_seg * dim) as u64));
    rec.dispatch(info, &pipe, &[&plan, &dy.buf, &dtable.buf], &p, grid(rec.ctx, (n_seg * dim).div_ceil(256) as u32));
    Ok(())
}

/// CPU reference in f64: dtable (vocab, dim).
pub fn reference(ids: &[u32], dy: &[f64], vocab: usize, dim: usize) -> Vec<f64> {
    let mut dtable = vec![0.0; vocab * dim];
    for (t, &id) in ids.iter().enumerate() {
        for d in 0..dim {
            dtable[id as usize * dim + d] += dy[t * dim + d];
        }
    }
    dtable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::context::gpu_test;
    use crate::ops::compare;
    use crate::ops::gradcheck::{check, dot, to_f32, values};

    #[test]
    fn reference_equals_finite_differences() {
        let (vocab, dim) = (5, 3);
        let ids = [4u32, 1, 4, 0, 4];
        let table = values(vocab * dim, 41);
        let g = values(ids.len() * dim, 42);
        let gather = |tab: &[f64]| ids.iter().flat_map(|&id| tab[id as usize * dim..][..dim].to_vec()).collect::<Vec<f64>>();
        check("embed dtable", &table, &reference(&ids, &g, vocab, dim), |tab| dot(&g, &gather(tab))).unwrap();
    }

    #[test]
    fn plan_groups_positions_by_id_in_token_order() {
        let (plan, n_seg) = plan(&[4, 1, 4, 0, 4]);
        assert_eq!(n_seg, 3);
        assert_eq!(plan, vec![0, 1, 4, 0, 1, 2, 5, 3, 1, 0, 2, 4]);
    }

    gpu_test!(fn embed_backward_matches_reference_on_odd_sizes(ctx) {
        for &(n_tokens, vocab, dim) in &[(1usize, 1usize, 1usize), (37, 11, 7), (300, 257, 9)] {
            let ids: Vec<u32> = (0..n_tokens).map(|t| ((t * t * 31 + 7) % vocab) as u32).collect();
            let g = values(n_tokens * dim, 43);
            let start = values(vocab * dim, 44);
            let want: Vec<f64> = reference(&ids, &g, vocab, dim).iter().zip(&start).map(|(a, b)| a + b).collect();
            let gt = Tensor::upload_f32(ctx, "dy", &[n_tokens, dim], &to_f32(&g)).unwrap();
            let dt = Tensor::upload_f32(ctx, "dtable", &[vocab, dim], &to_f32(&start)).unwrap();
            let mut rec = Recorder::new(ctx, "test");
            embed_backward(&mut rec, &ids, &gt, &dt, vocab, dim).unwrap();
            rec.submit().unwrap();
            let got = ctx.read_f32_async(&dt.buf, 0, vocab * dim).await.unwrap();
            // f32 sums of <= ~30 values O(1) per row: 1e-5 absolute, 1e-5 relative.
            compare(&got, &to_f32(&want), 1e-5, 1e-5).unwrap_or_else(|e| panic!("tokens {n_tokens} vocab {vocab} dim {dim}: {e}"));
        }
        let t = Tensor::zeros(ctx, "t", &[4]).unwrap();
        let mut rec = Recorder::new(ctx, "test");
        let err = embed_backward(&mut rec, &[0, 9], &t, &t, 2, 2).unwrap_err().to_string();
        assert!(err.contains("position 1"), "{err}");
    });
}
