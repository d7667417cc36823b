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
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default());
        if let Err(e) = validator.validate(&module) {
            failures.push(format!("{}.wgsl: validation error:\n{}", shader.name, e.emit_to_string(&source)));
        }
        assert!(!module.entry_points.is_empty(), "{}.wgsl has no entry point", shader.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
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
        assert!(quill::ops::SHADERS.iter().any(|s| s.name == stem), "shaders/{name} is not in ops::SHADERS");
    }
}
