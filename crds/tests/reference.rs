//! `docs/reference.md` is the reference the CRD schemas generate, and it
//! covers every field and every validation rule of both kinds.

mod common;

use std::path::PathBuf;

fn reference_path() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md")
}

#[test]
fn committed_reference_matches_the_crds() {
    let path = reference_path();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == ringwarden_crds::reference::markdown(),
        "{} is out of date with the CRD schemas in crds/src; run `make crds` and commit the result",
        path.display()
    );
}

#[test]
fn the_reference_has_a_heading_and_the_description_of_every_field() {
    let reference = ringwarden_crds::reference::markdown();
    let unescaped = reference.replace("&lt;", "<");
    let mut fields = 0;
    for kind in common::KINDS {
        let root = common::schema(kind);
        for top in ["spec", "status"] {
            let mut missing = Vec::new();
            common::walk_schema(
                &root["properties"][top],
                top.to_owned(),
                &mut |path, node| {
                    // Items and values of scalar lists and maps are described
                    // with their list or map.
                    let scalar_member = (path.ends_with("[]") || path.ends_with("{}"))
                        && node.get("properties").is_none();
                    if scalar_member {
                        return;
                    }
                    fields += 1;
                    if !reference.contains(&format!("#### `{path}`\n")) {
                        missing.push(format!("{kind} {path}"));
                    }
                    if let Some(description) = node["description"].as_str() {
                        let flowed = description.split_whitespace().collect::<Vec<_>>().join(" ");
                        if !unescaped.contains(&flowed) {
                            missing.push(format!("{kind} {path} (its description)"));
                        }
                    }
                },
            );
            assert!(missing.is_empty(), "no heading for: {missing:?}");
        }
    }
    assert!(fields > 40, "only {fields} fields walked");
}

#[test]
fn the_reference_lists_every_validation_rule_with_its_message() {
    let reference = ringwarden_crds::reference::markdown();
    let sites = common::sites();
    assert!(sites.len() > 10, "only {} rules found", sites.len());
    for site in sites {
        assert!(
            reference.contains(&site.rule),
            "{}: rule missing from the reference",
            site.key()
        );
        let message = site.message.replace('<', "&lt;");
        assert!(
            reference.contains(&message),
            "{}: message missing from the reference",
            site.key()
        );
    }
}

#[test]
fn the_reference_shows_defaults_and_limits_as_written_in_manifests() {
    let reference = ringwarden_crds::reference::markdown();
    for expected in [
        "#### `spec.ringBuffer.nodeBudget`\n\nstring, optional, default `64Mi`, at most 32 characters.",
        "#### `spec.maxDropRate`\n\nnumber, optional, default `0.01`, 0 ≤ value < 1.",
        "#### `spec.probes`\n\nlist of objects, required, 1 to 64 items, items unique by `name`.",
        "#### `spec.target`\n\nnumber, required, 0 < value < 100.",
        "one of `Met`, `AtRisk`, `Breached`, `Unreliable`, `NoData`",
        "| STATE | string | `.status.state` |",
    ] {
        assert!(reference.contains(expected), "missing: {expected}");
    }
}
