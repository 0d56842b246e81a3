//! The chart's templates of the mesh's own CRDs, checked against what their
//! Rust types generate (tests only): one place says how a template is laid
//! out and how to regenerate it.

/// Asserts that `charts/mesh/templates/<template>` is `crd_yaml` (what the
/// type in `source` generates) inside the chart's `meshAPI.installCRDs`
/// guard; with `MESH_WRITE_CRDS` set, writes it first.
pub fn assert_generated(template: &str, source: &str, crd_yaml: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/mesh/templates")
        .join(template);
    let body = crd_yaml.strip_prefix("---\n").unwrap_or(crd_yaml);
    let expected = format!(
        "{{{{- if .Values.meshAPI.installCRDs }}}}\n# Generated from mesh-discovery's kube-derive type ({source});\n# do not edit: its tests fail when this differs; regenerate with\n# MESH_WRITE_CRDS=1 cargo test -p mesh-discovery the_chart_installs\n{body}{{{{- end }}}}\n"
    );
    if std::env::var_os("MESH_WRITE_CRDS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == expected,
        "{} differs from the CRD the type generates; regenerate it: MESH_WRITE_CRDS=1 cargo test -p mesh-discovery the_chart_installs",
        path.display()
    );
}
