//! The committed CRD YAML is exactly what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ringwarden.dev_crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == ringwarden_crds::crd_yaml(),
        "{} is out of date with the types in crds/src; run `make crds` and commit the result",
        path.display()
    );
}
