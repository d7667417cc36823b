//! Every embedded WGSL shader parses and validates through naga. Needs no GPU.

#[test]
fn every_shader_validates_with_naga() {
    let mut failures = Vec::new();
    for shader in quill::ops::SHADERS {
        let source = shader.source();
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}.wgsl: parse error:\n{}", shader.name, e.emit_to_string(&source)));
                continue;
            }
        };
        // unpack2x16float (f16 scales read from u32 words) is core WGSL; naga gates it behind
        // the capability wgpu grants from the downlevel flag SHADER_F16_IN_F32, which every
        // WebGPU-compliant adapter has. No shader needs the `shader-f16` feature.
        // The subgroup kernels (quant_subgroup_*) need SUBGROUP, which wgpu grants only where
        // the adapter has it; quill compiles them only there.
        let caps = naga::valid::Capabilities::default() | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32 | naga::valid::Capabilities::SUBGROUP;
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
        if let Err(e) = validator.validate(&module) {
            failures.push(format!("{}.wgsl: validation error:\n{}", shader.name, e.emit_to_string(&source)));
        }
        assert!(!module.entry_points.is_empty(), "{}.wgsl has no entry point", shader.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn entry_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders").join(name)
}

#[test]
fn every_shader_file_is_embedded() {
    // A .wgsl file in shaders/ that no op embeds is dead code or a forgotten registration.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".wgsl") else { continue };
        if stem == "common" {
            continue;
        }
        // quant.wgsl is embedded once per storage format, as quant_<format>; quant_plain.wgsl
        // and quant_subgroup.wgsl are appended to it.
        let text = std::fs::read_to_string(entry_path(&name)).unwrap();
        let embedded = quill::ops::SHADERS.iter().any(|s| s.name == stem || s.source().contains(text.trim()));
        assert!(embedded, "shaders/{name} is not in ops::SHADERS");
    }
    let formats = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/formats");
    for entry in std::fs::read_dir(formats).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.strip_suffix(".wgsl").unwrap();
        assert!(quill::ops::SHADERS.iter().any(|s| s.name == format!("quant_{stem}")), "shaders/formats/{name} is not in ops::SHADERS");
    }
}
