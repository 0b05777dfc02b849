//! Reading ringwarden objects from YAML manifests, the way standalone mode
//! and tests do (in a cluster the API server does this job).
//!
//! Every problem names the file, the document, the field and the fix:
//! unknown fields (typos), bad values, and what [`ProbeSetSpec::validate`]
//! finds. All problems of a file are reported together.

use std::{fmt, path::Path};

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::{API_VERSION, ProbeSet};

/// A ringwarden object read from a manifest.
#[derive(Debug, Clone)]
pub enum Manifest {
    ProbeSet(Box<ProbeSet>),
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
            (API_VERSION, "ProbeSet") => match parse_probeset(value) {
                Ok(ps) => out.push(Manifest::ProbeSet(Box::new(ps))),
                Err(errs) => errs.into_iter().for_each(|(f, m)| error(Some(f), m)),
            },
            (_, "") => error(
                Some("kind".into()),
                "missing; add `kind: ProbeSet` and `apiVersion: ringwarden.dev/v1alpha1`".into(),
            ),
            (_, "ProbeSet") => error(
                Some("apiVersion".into()),
                format!("{api_version:?} is not served; use `apiVersion: {API_VERSION}`"),
            ),
            (_, other) => error(
                Some("kind".into()),
                format!(
                    "{other:?} is not a ringwarden kind this agent reads; \
                     use `kind: ProbeSet` with `apiVersion: {API_VERSION}`"
                ),
            ),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Deserializes one ProbeSet, collecting unknown fields, type errors and
/// validation errors as `(field, message)`.
fn parse_probeset(value: Value) -> Result<ProbeSet, Vec<(String, String)>> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<ProbeSet, _> = serde_path_to_error::deserialize(de);
    let mut errors: Vec<(String, String)> = unknown
        .into_iter()
        // The derived type carries apiVersion and kind implicitly; both were checked already.
        .filter(|field| field != "apiVersion" && field != "kind")
        .map(|field| {
            let known = known_fields(&field);
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
        Ok(ps) => {
            if ps.metadata.name.as_deref().unwrap_or("").is_empty() {
                errors.push((
                    "metadata.name".into(),
                    "missing; give the ProbeSet a name".into(),
                ));
            }
            errors.extend(ps.spec.validate().into_iter().map(|e| (e.field, e.message)));
            if errors.is_empty() {
                Ok(ps)
            } else {
                Err(errors)
            }
        }
    }
}

/// Formats a serde_ignored path like serde_path_to_error does: `a.b[0].c`.
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
fn known_fields(field: &str) -> Vec<String> {
    let crd = ProbeSet::crd();
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
                "spec.probes[0].filtr: unknown field; remove it or use one of: export, filter, kind, \
                 maxSeries, name, peakEventRate, priority, sampling, uprobe"
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

    #[test]
    fn invalid_yaml_is_reported_not_panicked_on() {
        let e = errors("kind: [unclosed");
        assert!(e[0].contains("not valid YAML"), "{e:?}");
    }
}
