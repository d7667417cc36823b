// quant_subgroup.wgsl: the decode mat-vec (1 to 8 tokens) reduced with subgroup operations,
// appended after shaders/quant.wgsl (and its format file) for adapters with subgroups
// (ops::matmul::MatVecShape::Subgroup). Native only: naga takes subgroup builtins with no
// `enable subgroups;`, which it refuses and the browsers' compiler requires.
//
//   matvec_sg: a workgroup of SG_THREADS invocations takes SG_GROUPS groups of 4 rows. Each
//   subgroup takes the row groups subgroup_id, subgroup_id + num_subgroups, ...; its lanes
//   (as many as the driver made the subgroup) stride over the units of the 4 rows, so a
//   subgroup reads contiguous memory, x is read once per unit for 4 rows, and one subgroupAdd
//   per token sums the lanes: no workgroup memory and no barrier. With MV_TOKENS 1 a unit goes
//   through the format's unit_dot; with more it is decoded once (unit_w) for every token.

override SG_THREADS: u32 = 32u;
override SG_GROUPS: u32 = 1u;

@compute @workgroup_size(SG_THREADS)
fn matvec_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
             @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) width: u32) {
    let g = linear_workgroup(wid, nwg);
    let units = p.k / 32u;
    let k4 = p.k / 4u;
    let nt = min(p.t, MV_TOKENS);
    let limit = p.row0 + p.n;
    for (var gi = sg; gi < SG_GROUPS; gi += n_sg) {
        let r0 = (g * SG_GROUPS + gi) * 4u;
        if (r0 >= p.n) {
            break; // the whole subgroup: past the chunk's last row
        }
        let r = rows4(r0);
        var a = Acc8();
        for (var u = lane; u < units; u += width) {
            if (MV_TOKENS == 1u) {
                var s = 0.0;
                let x = load_xn(8u * u, 8u * u, &s);
                a.c0 += vec4<f32>(unit_dot(r.x, u, x), unit_dot(r.y, u, x), unit_dot(r.z, u, x), unit_dot(r.w, u, x));
                a.s0 += s;
            } else {
                a = acc_unit(a, W4(unit_w(r.x, u), unit_w(r.y, u), unit_w(r.z, u), unit_w(r.w, u)), 8u * u, k4);
            }
        }
        for (var i = 0u; i < nt; i++) {
            let c = subgroupAdd(acc_c(a, i));
            var ss = 0.0;
            if (NORM_IN) {
                ss = subgroupAdd(acc_s(a, i));
            }
            if (lane == 0u) {
                store4(i, p.row0 + r0, c * norm_scale(ss), limit);
            }
        }
    }
    if (p.mode == 255u) {
        y0[0] = f32(ws[0]) + bias[0]; // never runs: keeps every binding in the pipeline's layout
    }
}

// X_LANES (quant.wgsl): this invocation's lane (at most 7), and a unit of x loaded one vec4 per
// lane, then broadcast; with NORM_IN normed on the way (xn_lanes, the lane's squares added to
// *ss, its vec4 of the norm weight `gw` from lane_norm_w) and the lanes' sums totalled at the
// end (lanes_sum).
var<private> xl_lane: u32;
var<private> xl_own: f32; // 1 for lanes 0 to 7; a lane past them repeats the 8th's vec4: 0

fn x_lanes_init() {
    if (X_LANES) {
        let lane = subgroupExclusiveAdd(1u);
        xl_lane = min(lane, 7u);
        xl_own = select(0.0, 1.0, lane < 8u);
    }
}

fn lanes_of(v: vec4<f32>) -> X32 {
    return x32(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
               subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
}

fn x_lanes(base: u32) -> X32 {
    return lanes_of(x4[base + xl_lane]);
}

fn xn_lanes(base: u32, gw: vec4<f32>, ss: ptr<function, f32>) -> X32 {
    let v = x4[base + xl_lane];
    *ss += xl_own * dot(v, v);
    return lanes_of(v * gw);
}

fn lane_norm_w(gi: u32) -> vec4<f32> {
    if (NORM_IN && X_LANES) {
        return norm_w4(p.g_off + 4u * (gi + xl_lane));
    }
    return vec4<f32>(1.0);
}

fn lanes_sum(v: f32) -> f32 {
    return subgroupAdd(v);
}
