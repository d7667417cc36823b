// quant_plain.wgsl: appended after shaders/quant.wgsl where quant_subgroup.wgsl is not (adapters
// without subgroups, and the browser): X_LANES stays off, so these only stand in for the
// subgroup versions of quant_subgroup.wgsl and never broadcast anything.

fn x_lanes_init() {}

fn x_lanes(base: u32) -> X32 {
    return load_x32_each(base);
}

fn xn_lanes(base: u32, gw: vec4<f32>, ss: ptr<function, f32>) -> X32 {
    return X32();
}

fn lane_norm_w(gi: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}

fn lanes_sum(v: f32) -> f32 {
    return v;
}
