//! Reading ringwarden objects from YAML manifests, the way standalone mode
//! and tests do (in a cluster the API server does this job).
//!
//! Every problem names the file, the document, the field and the fix:
//! unknown fields (typos), bad values, and what [`ProbeSetSpec::validate`]
//! and [`SloSpec::validate`] find. All problems of a file are reported
//! together.
//!
//! [`ProbeSetSpec::validate`]: crate::ProbeSetSpec::validate
//! [`SloSpec::validate`]: crate::SloSpec::validate

use std::{fmt, path::Path};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::{Deserialize, de::DeserializeOwned};
use serde_yaml_ng::Value;

use crate::{API_VERSION, ProbeSet, Slo, probeset::FieldError};

/// A ringwarden object read from a manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    ProbeSet(Box<ProbeSet>),
    Slo(Box<Slo>),
}

/// The kinds this module reads, as `kind:` spells them.
const KINDS: [&str; 3] = ["ProbeSet", "ClusterProbeSet", "SLO"];

/// Splits manifests by kind, keeping their order within each kind.
pub fn split(manifests: Vec<Manifest>) -> (Vec<ProbeSet>, Vec<Slo>) {
    let mut probesets = Vec::new();
    let mut slos = Vec::new();
    for m in manifests {
        match m {
            Manifest::ProbeSet(ps) => probesets.push(*ps),
            Manifest::Slo(slo) => slos.push(*slo),
        }
    }
    (probesets, slos)
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file, as given.
    pub file: String,
    /// 1-based index of the YAML document within the file.
    pub document: usize,
    /// Path of the offending field (`spec.probes[0].kind`), if one is to blame.
    pub field: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)?;
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one or more manifests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads every ringwarden object in a YAML file (documents separated by `---`).
pub fn load_file(path: &Path) -> Result<Vec<Manifest>, ManifestErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ManifestErrors(vec![ManifestError {
            file: file.clone(),
            document: 0,
            field: None,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse_str(&file, &text)
}

/// Parses every ringwarden object in YAML text; `file` names it in errors.
pub fn parse_str(file: &str, text: &str) -> Result<Vec<Manifest>, ManifestErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut error = |field: Option<String>, message: String| {
            errors.push(ManifestError {
                file: file.to_string(),
                document,
                field,
                message,
            })
        };
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue, // empty document, e.g. a trailing `---`
            Ok(v) => v,
            Err(e) => {
                error(None, format!("not valid YAML: {e}"));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        match (api_version, kind) {
            (API_VERSION, "ProbeSet") => {
                match parse_object(value, |ps: &ProbeSet| ps.spec.validate()) {
                    Ok(ps) => out.push(Manifest::ProbeSet(Box::new(ps))),
                    Err(errs) => errs.into_iter().for_each(|(f, m)| error(Some(f), m)),
                }
            }
            // Standalone mode has no namespaces: a ClusterProbeSet runs as a
            // ProbeSet without one, its namespaceSelector and sloNamespaces
            // checked and unused.
            // It is read as a ProbeSet so that unknown fields are found
            // (serde's `flatten` in its spec type would swallow them).
            (API_VERSION, "ClusterProbeSet") => {
                let mut value = value;
                let selector = value
                    .get_mut("spec")
                    .and_then(Value::as_mapping_mut)
                    .and_then(|m| m.remove("namespaceSelector"));
                if let Some(s) = selector {
                    namespace_selector_problems(s)
                        .into_iter()
                        .for_each(|(f, m)| error(Some(f), m));
                }
                // Who may write SLOs on it: checked, and unused here.
                let slo_namespaces = value
                    .get_mut("spec")
                    .and_then(Value::as_mapping_mut)
                    .and_then(|m| m.remove("sloNamespaces"));
                if let Some(list) = slo_namespaces {
                    match serde_yaml_ng::from_value::<Vec<String>>(list) {
                        Ok(list) => crate::cluster::slo_namespace_problems(&list)
                            .into_iter()
                            .for_each(|e| error(Some(e.field), e.message)),
                        Err(_) => error(
                            Some("spec.sloNamespaces".into()),
                            "must be a list of namespace names, e.g. [platform-slos]".into(),
                        ),
                    }
                }
                match parse_object(value, |ps: &ProbeSet| ps.spec.validate()) {
                    Ok(mut ps) => {
                        ps.metadata.namespace = None;
                        out.push(Manifest::ProbeSet(Box::new(ps)));
                    }
                    Err(errs) => errs.into_iter().for_each(|(f, m)| error(Some(f), m)),
                }
            }
            (API_VERSION, "SLO") => match parse_object(value, |slo: &Slo| slo.spec.validate()) {
                Ok(slo) => out.push(Manifest::Slo(Box::new(slo))),
                Err(errs) => errs.into_iter().for_each(|(f, m)| error(Some(f), m)),
            },
            (_, "") => error(
                Some("kind".into()),
                format!(
                    "missing; add `kind: ProbeSet` or `kind: SLO`, with `apiVersion: {API_VERSION}`"
                ),
            ),
            (_, "ProbeSet" | "ClusterProbeSet" | "SLO") => error(
                Some("apiVersion".into()),
                format!("{api_version:?} is not served; use `apiVersion: {API_VERSION}`"),
            ),
            (_, other) => match KINDS.iter().find(|k| k.eq_ignore_ascii_case(other)) {
                Some(kind) => error(
                    Some("kind".into()),
                    format!(
                        "{other:?} is not a kind; kinds are case-sensitive, use `kind: {kind}`"
                    ),
                ),
                None => error(
                    Some("kind".into()),
                    format!(
                        "{other:?} is not a ringwarden kind this agent reads; \
                         use `kind: ProbeSet` or `kind: SLO`, with `apiVersion: {API_VERSION}`"
                    ),
                ),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Deserializes one object of kind `K`, collecting unknown fields, type
/// errors and what `validate` finds as `(field, message)`.
fn parse_object<K>(
    value: Value,
    validate: impl FnOnce(&K) -> Vec<FieldError>,
) -> Result<K, Vec<(String, String)>>
where
    K: CustomResourceExt + kube::Resource + DeserializeOwned,
{
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<K, _> = serde_path_to_error::deserialize(de);
    let crd = K::crd();
    let mut errors: Vec<(String, String)> = unknown
        .into_iter()
        // The derived type carries apiVersion and kind implicitly; both were checked already.
        .filter(|field| field != "apiVersion" && field != "kind")
        .map(|field| {
            let known = known_fields(&crd, &field);
            let hint = if known.is_empty() {
                "remove it".to_string()
            } else {
                format!("remove it or use one of: {}", known.join(", "))
            };
            (field, format!("unknown field; {hint}"))
        })
        .collect();
    match parsed {
        Err(e) => {
            let field = e.path().to_string();
            errors.push((field, e.into_inner().to_string()));
            Err(errors)
        }
        Ok(object) => {
            if object.meta().name.as_deref().unwrap_or("").is_empty() {
                errors.push((
                    "metadata.name".into(),
                    format!("missing; give the {} a name", crd.spec.names.kind),
                ));
            }
            errors.extend(validate(&object).into_iter().map(|e| (e.field, e.message)));
            if errors.is_empty() {
                Ok(object)
            } else {
                Err(errors)
            }
        }
    }
}

/// Formats a serde_ignored path like serde_path_to_error does: `a.b[0].c`.
/// What is wrong with a ClusterProbeSet's `spec.namespaceSelector`.
fn namespace_selector_problems(value: Value) -> Vec<(String, String)> {
    let at = "spec.namespaceSelector";
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, _> =
        serde_path_to_error::deserialize(de);
    let mut out: Vec<(String, String)> = unknown
        .into_iter()
        .map(|f| {
            (
                format!("{at}.{f}"),
                "unknown field; remove it or use one of: matchExpressions, matchLabels".into(),
            )
        })
        .collect();
    match parsed {
        Err(e) => out.push((format!("{at}.{}", e.path()), e.into_inner().to_string())),
        Ok(s) => out.extend(
            crate::selector::label_selector_problems(&s)
                .into_iter()
                .map(|(f, m)| (format!("{at}{f}"), m)),
        ),
    }
    out
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// The fields the CRD schema allows beside `field` (its siblings), for hints.
fn known_fields(crd: &CustomResourceDefinition, field: &str) -> Vec<String> {
    let Some(mut schema) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return Vec::new();
    };
    // Walk every segment but the last (the unknown key itself).
    let segments: Vec<&str> = field.split('.').collect();
    for seg in &segments[..segments.len().saturating_sub(1)] {
        let (name, indexed) = match seg.find('[') {
            Some(i) => (&seg[..i], true),
            None => (*seg, false),
        };
        let Some(next) = schema.properties.as_ref().and_then(|p| p.get(name)) else {
            return Vec::new();
        };
        schema = next;
        if indexed {
            use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray as Items;
            match &schema.items {
                Some(Items::Schema(s)) => schema = s,
                _ => return Vec::new(),
            }
        }
    }
    schema
        .properties
        .as_ref()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        parse_str("t.yaml", yaml)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const GOOD: &str = "
apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: demo}
spec:
  reportInterval: 2s
  probes:
    - name: sys
      kind: syscalls
      filter: {comms: [nginx], pids: [42]}
";

    #[test]
    fn a_good_manifest_parses_with_defaults() {
        let docs = parse_str("t.yaml", &format!("{GOOD}---\n")).unwrap();
        let [Manifest::ProbeSet(ps)] = docs.as_slice() else {
            panic!("one ProbeSet expected, got {docs:?}")
        };
        assert_eq!(ps.spec.report_interval, std::time::Duration::from_secs(2));
        assert_eq!(ps.spec.probes[0].filter.as_ref().unwrap().pids, [42]);
    }

    #[test]
    fn an_unknown_probe_kind_names_the_field_and_the_valid_kinds() {
        let e = errors(&GOOD.replace("kind: syscalls", "kind: sycalls"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.yaml (document 1): spec.probes[0].kind: unknown variant `sycalls`"),
            "{e:?}"
        );
        assert!(
            e[0].contains("`syscalls`") && e[0].contains("`blockIO`"),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_duration_names_the_field_and_the_fix() {
        let e = errors(&GOOD.replace("reportInterval: 2s", "reportInterval: \"2\""));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("spec.reportInterval: "), "{e:?}");
        assert!(
            e[0].contains("missing unit; write it like \"10s\""),
            "the fix shows a valid duration: {e:?}"
        );
    }

    #[test]
    fn an_unknown_field_names_its_path_and_the_known_fields() {
        let e = errors(&GOOD.replace("filter:", "filtr:"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains(
                "spec.probes[0].filtr: unknown field; remove it or use one of: export, filter, \
                 goRuntime, kind, maxSeries, name, peakEventRate, priority, sampling, uprobe"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn validation_errors_are_reported_after_parsing() {
        let e = errors(&GOOD.replace("name: sys", "name: Sys"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("spec.probes[0].name: \"Sys\" is not a DNS label"),
            "{e:?}"
        );
    }

    #[test]
    fn foreign_kinds_and_versions_are_refused() {
        let e = errors(&GOOD.replace("kind: ProbeSet", "kind: Deployment"));
        assert!(
            e[0].contains(": kind: \"Deployment\" is not a ringwarden kind"),
            "{e:?}"
        );
        let e = errors(&GOOD.replace("v1alpha1", "v9"));
        assert!(
            e[0].contains(": apiVersion: \"ringwarden.dev/v9\" is not served"),
            "{e:?}"
        );
    }

    #[test]
    fn problems_in_several_documents_are_all_reported() {
        let bad1 = GOOD.replace("kind: syscalls", "kind: nope");
        let bad2 = GOOD.replace("pids: [42]", "pids: [0]");
        let e = errors(&format!("{bad1}---{GOOD}---{bad2}"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.yaml (document 1): spec.probes[0].kind"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.yaml (document 3): spec.probes[0].filter.pids[0]"),
            "{e:?}"
        );
    }

    const SLO: &str = "
apiVersion: ringwarden.dev/v1alpha1
kind: SLO
metadata: {name: read-fast, namespace: default}
spec:
  probeSet: demo
  probe: sys
  series: [read]
  indicator:
    latency: {threshold: 1ms}
  target: 99.9
";

    #[test]
    fn an_slo_parses_with_defaults_and_splits_from_probesets() {
        let docs = parse_str("t.yaml", &format!("{GOOD}---{SLO}")).unwrap();
        let (probesets, slos) = split(docs);
        assert_eq!(probesets.len(), 1);
        let [slo] = slos.as_slice() else {
            panic!("one SLO expected, got {slos:?}")
        };
        assert_eq!(slo.spec.window, std::time::Duration::from_secs(30 * 86_400));
        assert_eq!(slo.spec.max_drop_rate, 0.01);
        assert_eq!(
            slo.spec.indicator.kind(),
            Some(crate::IndicatorKind::Latency(
                std::time::Duration::from_millis(1)
            ))
        );
        let missing = slo
            .spec
            .find_probe(Some("default"), &probesets)
            .unwrap_err();
        assert_eq!(missing.field, "spec.probeSet");
        assert!(
            missing
                .message
                .starts_with("no ProbeSet \"demo\" in namespace \"default\"; create it"),
            "{missing}"
        );
        assert_eq!(
            slo.spec.find_probe(None, &probesets).unwrap().name,
            "sys",
            "the ProbeSet in GOOD has no namespace"
        );
    }

    #[test]
    fn a_cluster_probeset_is_read_with_the_same_checks() {
        let cluster = GOOD
            .replacen("kind: ProbeSet", "kind: ClusterProbeSet", 1)
            .replacen(
                "\nspec:\n",
                "\nspec:\n  namespaceSelector: {matchLabels: {team: retail}}\n",
                1,
            );
        let docs = parse_str("c.yaml", &cluster).unwrap();
        assert!(matches!(&docs[0], Manifest::ProbeSet(ps) if ps.metadata.namespace.is_none()));
        let e = errors(&cluster.replace("namespaceSelector:", "namespaceSelectr:"));
        assert!(
            e.iter()
                .any(|e| e.contains("spec.namespaceSelectr: unknown field")),
            "{e:?}"
        );
        let e = errors(&cluster.replace("{team: retail}", "{team: 'no spaces'}"));
        assert!(
            e.iter()
                .any(|e| e.contains("spec.namespaceSelector.matchLabels")),
            "{e:?}"
        );
        let listed = cluster.replacen("\nspec:\n", "\nspec:\n  sloNamespaces: [platform]\n", 1);
        assert_eq!(parse_str("c.yaml", &listed).unwrap().len(), 1);
        let e = errors(&listed.replace("[platform]", "[Platform]"));
        assert!(
            e.iter().any(|e| e.contains("spec.sloNamespaces[0]")),
            "{e:?}"
        );
        let e = errors(&listed.replace("[platform]", "platform"));
        assert!(
            e.iter()
                .any(|e| e.contains("spec.sloNamespaces: must be a list")),
            "{e:?}"
        );
        let e = errors(&GOOD.replacen("kind: ProbeSet", "kind: clusterprobeset", 1));
        assert!(e[0].contains("use `kind: ClusterProbeSet`"), "{e:?}");
    }

    #[test]
    fn an_unknown_slo_field_names_the_known_slo_fields() {
        let e = errors(&SLO.replace("target:", "objective:"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains(
                "spec.objective: unknown field; remove it or use one of: clusterProbeSet, indicator, \
                 maxDropRate, probe, probeSet, series, target, window"
            ),
            "{e:?}"
        );
        assert!(e[1].contains("spec: missing field `target`"), "{e:?}");
        let e = errors(&SLO.replace("{threshold: 1ms}", "{threshold: 1ms, percentile: 99}"));
        assert!(
            e[0].contains(
                "spec.indicator.latency.percentile: unknown field; remove it or use one of: \
                 threshold"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn slo_problems_name_the_field_and_the_fix() {
        let e = errors(&SLO.replace("target: 99.9", "target: 100"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("spec.target: 100 is not a percentage below 100; use e.g. 99.9"),
            "{e:?}"
        );
        let e = errors(&SLO.replace(
            "latency: {threshold: 1ms}",
            "errors: {}\n    latency: {threshold: 1ms}",
        ));
        assert!(
            e[0].contains("spec.indicator: needs exactly one of"),
            "{e:?}"
        );
        let e = errors(&format!("{SLO}  window: 1h1d\n"));
        assert!(
            e[0].contains("spec.window: invalid duration \"1h1d\": days must come first"),
            "{e:?}"
        );
    }

    #[test]
    fn slo_kinds_and_versions_are_checked_like_probesets() {
        let e = errors(&SLO.replace("kind: SLO", "kind: Slo"));
        assert!(
            e[0].contains(
                ": kind: \"Slo\" is not a kind; kinds are case-sensitive, use `kind: SLO`"
            ),
            "{e:?}"
        );
        let e = errors(&SLO.replace("v1alpha1", "v1"));
        assert!(
            e[0].contains(": apiVersion: \"ringwarden.dev/v1\" is not served"),
            "{e:?}"
        );
        let e = errors(&SLO.replace("kind: SLO\n", ""));
        assert!(
            e[0].contains(": kind: missing; add `kind: ProbeSet` or `kind: SLO`"),
            "{e:?}"
        );
        let e = errors(&SLO.replace(
            "metadata: {name: read-fast, namespace: default}",
            "metadata: {}",
        ));
        assert!(
            e[0].contains("metadata.name: missing; give the SLO a name"),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_yaml_is_reported_not_panicked_on() {
        let e = errors("kind: [unclosed");
        assert!(e[0].contains("not valid YAML"), "{e:?}");
    }
}
