//! A CRD schema node as the API server declares it to CEL: the CEL type,
//! the largest size a value can have (`MaxElements`) and the smallest it
//! can serialize to (`MinSerializedSize`), which bounds unbounded lists and
//! maps by the request size. Ported from `SchemaDeclType` in
//! k8s.io/apiserver/pkg/cel/common/schemas.go and the `DeclType`
//! constructors of k8s.io/apiserver/pkg/cel/types.go and limits.go.

use std::collections::BTreeMap;

use serde_json::Value;

/// `MaxRequestSizeBytes`: the largest request the API server accepts.
pub const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub enum DeclKind {
    Bool,
    Int,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    /// `x-kubernetes-int-or-string`.
    Dyn,
    List(Box<Decl>),
    /// Keys are strings whose `MaxElements` is 0, as upstream declares them.
    Map(Box<Decl>),
    Object(BTreeMap<String, Decl>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    pub kind: DeclKind,
    pub max_elements: u64,
    pub min_serialized_size: u64,
}

impl Decl {
    fn simple(kind: DeclKind, min_serialized_size: u64) -> Decl {
        Decl {
            kind,
            max_elements: 0,
            min_serialized_size,
        }
    }

    /// The declaration of map keys (`apiservercel.StringType`).
    pub fn map_key() -> Decl {
        Decl::simple(DeclKind::String, 2)
    }

    /// `SchemaDeclType(schema, isResourceRoot)`; `None` where the schema is
    /// not visible to CEL.
    pub fn from_schema(schema: &Value, is_resource_root: bool) -> Option<Decl> {
        let int = |key: &str| schema.get(key).and_then(Value::as_u64);
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            let mut dyn_ = Decl::simple(DeclKind::Dyn, 1);
            dyn_.max_elements = match int("maxLength") {
                Some(n) => n * 4,
                None => MAX_REQUEST_SIZE_BYTES - 2,
            };
            return Some(dyn_);
        }
        match schema.get("type").and_then(Value::as_str)? {
            "array" => {
                let items = Decl::from_schema(schema.get("items")?, false)?;
                let max_items = int("maxItems").unwrap_or(
                    // `estimateMaxArrayItemsFromMinSize`: `[` and `]`, a comma each.
                    (MAX_REQUEST_SIZE_BYTES - 2) / (items.min_serialized_size + 1),
                );
                Some(Decl {
                    kind: DeclKind::List(Box::new(items)),
                    max_elements: max_items,
                    min_serialized_size: 2,
                })
            }
            "object" => {
                if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                    let values = Decl::from_schema(values, false)?;
                    let max_properties = int("maxProperties").unwrap_or(
                        // `estimateMaxAdditionalPropertiesFromMinSize`: `"":` and a comma.
                        (MAX_REQUEST_SIZE_BYTES - 2) / (values.min_serialized_size + 6),
                    );
                    return Some(Decl {
                        kind: DeclKind::Map(Box::new(values)),
                        max_elements: max_properties,
                        min_serialized_size: 2,
                    });
                }
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut fields = BTreeMap::new();
                let mut min_size = 2;
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (name, property) in properties {
                        let Some(field) = Decl::from_schema(property, false) else {
                            continue;
                        };
                        // Required fields without a default appear in every object.
                        if required.contains(&name.as_str()) && property.get("default").is_none() {
                            min_size += name.len() as u64 + field.min_serialized_size + 4;
                        }
                        fields.insert(name.clone(), field);
                    }
                }
                if is_resource_root {
                    // apiVersion, kind and metadata.name/generateName are always
                    // visible at the root of a resource.
                    let string =
                        || Decl::from_schema(&serde_json::json!({"type": "string"}), false);
                    fields.insert("apiVersion".into(), string()?);
                    fields.insert("kind".into(), string()?);
                    let mut meta = BTreeMap::new();
                    meta.insert("name".to_string(), string()?);
                    meta.insert("generateName".to_string(), string()?);
                    fields.insert("metadata".into(), Decl::simple(DeclKind::Object(meta), 2));
                }
                Some(Decl::simple(DeclKind::Object(fields), min_size))
            }
            "string" => Some(match schema.get("format").and_then(Value::as_str) {
                Some("byte") => Decl {
                    kind: DeclKind::Bytes,
                    max_elements: int("maxLength").unwrap_or(MAX_REQUEST_SIZE_BYTES - 2),
                    min_serialized_size: 2,
                },
                // `MaxDurationSizeJSON`, `JSONDateSize`, `MaxDatetimeSizeJSON`:
                // maxLength does not apply to these.
                Some("duration") => Decl {
                    kind: DeclKind::Duration,
                    max_elements: 32,
                    min_serialized_size: 3,
                },
                Some("date") => Decl {
                    kind: DeclKind::Timestamp,
                    max_elements: 12,
                    min_serialized_size: 12,
                },
                Some("date-time") => Decl {
                    kind: DeclKind::Timestamp,
                    max_elements: 32,
                    min_serialized_size: 21,
                },
                _ => {
                    let longest_enum = schema
                        .get("enum")
                        .and_then(Value::as_array)
                        .filter(|values| !values.is_empty())
                        .map(|values| {
                            values
                                .iter()
                                .filter_map(Value::as_str)
                                .map(|s| s.len() as u64)
                                .max()
                                .unwrap_or(0)
                        });
                    Decl {
                        kind: DeclKind::String,
                        // maxLength counts characters; a character is up to 4 bytes.
                        max_elements: match (int("maxLength"), longest_enum) {
                            (Some(n), _) => n * 4,
                            (None, Some(n)) => n,
                            (None, None) => MAX_REQUEST_SIZE_BYTES - 2,
                        },
                        min_serialized_size: 2,
                    }
                }
            }),
            "boolean" => Some(Decl::simple(DeclKind::Bool, 4)),
            "number" => Some(Decl::simple(DeclKind::Double, 1)),
            "integer" => Some(Decl::simple(DeclKind::Int, 1)),
            _ => None,
        }
    }

    /// The declaration at a cost-estimator path below this one (`@items`,
    /// `@values`, `@keys` or a field name), as the apiextensions
    /// `sizeEstimator` walks it.
    pub fn at<'a>(&'a self, path: &[String]) -> Option<&'a Decl> {
        let mut node = self;
        for step in path {
            node = match (&node.kind, step.as_str()) {
                (DeclKind::List(elem) | DeclKind::Map(elem), "@items" | "@values") => elem,
                (DeclKind::Map(_), "@keys") => return Some(map_key()),
                (DeclKind::Object(fields), name) => fields.get(name)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

fn map_key() -> &'static Decl {
    static KEY: std::sync::OnceLock<Decl> = std::sync::OnceLock::new();
    KEY.get_or_init(Decl::map_key)
}

/// `maxCardinality`: how often a value this small could repeat in one
/// request, used when an enclosing list or map has no maxItems or
/// maxProperties.
pub fn max_cardinality(min_serialized_size: u64) -> u64 {
    MAX_REQUEST_SIZE_BYTES / (min_serialized_size + 1)
}

/// `extractMaxElements`: by how much a schema multiplies the cardinality of
/// its children; `None` for a list or map without a bound.
pub fn max_elements_factor(schema: &Value) -> Option<u64> {
    let int = |key: &str| schema.get(key).and_then(Value::as_u64);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") if schema.get("additionalProperties").is_some() => int("maxProperties"),
        Some("array") => int("maxItems"),
        _ => Some(1),
    }
}
