//! Every manifest under `examples/` parses and validates.

use ringwarden_crds::manifest::{Manifest, load_file};

#[test]
fn every_example_manifest_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let docs = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!docs.is_empty(), "{} holds no object", path.display());
            for Manifest::ProbeSet(ps) in docs {
                assert!(ps.spec.validate().is_empty());
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no examples found in {}", dir.display());
}
