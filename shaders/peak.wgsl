// peak.wgsl: micro-benchmarks of the device's best memory bandwidth and arithmetic rate,
// the denominators of the profiler's "fraction of peak" columns.
//   read_bw: every thread sums `per_thread` vec4s, strided so that neighbouring threads read
//            neighbouring vec4s (coalesced), and writes one sum: bytes moved = buffer size.
//   fma_rate: every thread runs `iters` rounds of 8 independent vec4 FMA chains: 64 FLOPs a round.

struct Params {
    n_threads: u32,
    per_thread: u32,
    iters: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;     // (n_threads * per_thread,)
@group(0) @binding(1) var<storage, read_write> sums: array<f32>;    // (n_threads,)
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn read_bw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_workgroup(wid, nwg) * 256u + lid;
    if (t >= p.n_threads) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < p.per_thread; j++) {
        acc += src[j * p.n_threads + t];
    }
    sums[t] = acc.x + acc.y + acc.z + acc.w;
}

@group(0) @binding(0) var<storage, read_write> fma_out: array<f32>; // (n_threads,)
@group(0) @binding(1) var<uniform> pf: Params;

@compute @workgroup_size(256)
fn fma_rate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let t = linear_workgroup(wid, nwg) * 256u + lid;
    if (t >= pf.n_threads) {
        return;
    }
    let b = vec4<f32>(0.999, 0.998, 0.997, 0.996);
    let c = vec4<f32>(0.001, 0.002, 0.003, 0.004);
    var a0 = vec4<f32>(f32(t % 7u)); var a1 = a0 + 1.0; var a2 = a0 + 2.0; var a3 = a0 + 3.0;
    var a4 = a0 + 4.0; var a5 = a0 + 5.0; var a6 = a0 + 6.0; var a7 = a0 + 7.0;
    for (var i = 0u; i < pf.iters; i++) {
        a0 = fma(a0, b, c); a1 = fma(a1, b, c); a2 = fma(a2, b, c); a3 = fma(a3, b, c);
        a4 = fma(a4, b, c); a5 = fma(a5, b, c); a6 = fma(a6, b, c); a7 = fma(a7, b, c);
    }
    let s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    fma_out[t] = s.x + s.y + s.z + s.w;
}
