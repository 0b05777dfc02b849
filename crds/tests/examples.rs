//! Every manifest under `examples/` is one the API server would accept (the
//! generated schema and its CEL rules admit it) and standalone mode reads
//! (it parses and validates); every SLO there measures a probe that exists.

mod common;

use std::path::PathBuf;

use ringwarden_crds::{
    IndicatorKind,
    manifest::{self, load_file},
};
use serde::Deserialize;
use serde_json::Value;

fn examples() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no examples found in {}", dir.display());
    paths
}

/// The documents of a YAML file as JSON, skipping empty ones.
fn documents(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

#[test]
fn every_example_manifest_is_valid() {
    for path in examples() {
        let docs = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{} holds no object", path.display());
        let (probesets, slos) = manifest::split(docs);
        for ps in probesets {
            assert_eq!(ps.spec.validate(), vec![], "{}", path.display());
        }
        for slo in slos {
            assert_eq!(slo.spec.validate(), vec![], "{}", path.display());
        }
    }
}

#[test]
fn every_example_manifest_passes_the_generated_schema_and_its_rules() {
    let mut checked = 0;
    for path in examples() {
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            assert!(
                common::KINDS.contains(&kind.as_str()),
                "{}: kind {kind:?} is not one of ours",
                path.display()
            );
            let errors = common::schema_errors(&kind, &doc);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            for outcome in common::evaluate(&kind, &doc) {
                assert!(
                    outcome.admits(),
                    "{}: {} refused by {:?}: {:?}",
                    path.display(),
                    outcome.at,
                    outcome.message,
                    outcome.result
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example objects");
}

#[test]
fn every_example_slo_measures_an_example_probe() {
    let mut probesets = Vec::new();
    let mut slos = Vec::new();
    for path in examples() {
        let (p, s) = manifest::split(load_file(&path).unwrap_or_else(|e| panic!("{e}")));
        probesets.extend(p);
        slos.extend(s.into_iter().map(|slo| (path.clone(), slo)));
    }
    assert!(!slos.is_empty(), "the examples hold no SLO");
    for (path, slo) in &slos {
        let probe = slo
            .spec
            .find_probe(slo.metadata.namespace.as_deref(), &probesets)
            .unwrap_or_else(|e| panic!("{}: SLO {:?}: {e}", path.display(), slo.metadata.name));
        assert_eq!(probe.name, slo.spec.probe);
    }
}

#[test]
fn the_examples_show_most_probe_kinds_and_both_indicators() {
    let mut kinds = std::collections::BTreeSet::new();
    let (mut latency, mut errors) = (0, 0);
    for path in examples() {
        let (probesets, slos) = manifest::split(load_file(&path).unwrap());
        for ps in probesets {
            kinds.extend(ps.spec.probes.iter().map(|p| p.kind.as_str()));
        }
        for slo in slos {
            match slo.spec.indicator.kind() {
                Some(IndicatorKind::Latency(_)) => latency += 1,
                Some(IndicatorKind::Errors) => errors += 1,
                None => panic!("{}: SLO without a valid indicator", path.display()),
            }
        }
    }
    for kind in [
        "syscalls",
        "tcpConnect",
        "tcpRetransmit",
        "runqueue",
        "uprobe",
    ] {
        assert!(kinds.contains(kind), "no example of kind {kind}");
    }
    assert!(
        latency > 0 && errors > 0,
        "latency: {latency}, errors: {errors}"
    );
}
