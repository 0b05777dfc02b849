//! Helpers shared by the schema tests: the generated CRD schemas, defaulting
//! as the API server does it, a Draft 4 view of the schemas for a JSON-schema
//! validator, and evaluation of the CEL rules with `self` bound where the API
//! server binds it.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use serde_json::{Map, Value, json};

/// The kinds of the API.
pub const KINDS: [&str; 2] = ["ProbeSet", "SLO"];

/// Every generated CRD, as JSON.
pub fn crds() -> Vec<Value> {
    ringwarden_crds::crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("a CRD is JSON"))
        .collect()
}

/// The `openAPIV3Schema` of `kind`.
pub fn schema(kind: &str) -> Value {
    crds()
        .into_iter()
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))["spec"]["versions"][0]["schema"]
        ["openAPIV3Schema"]
        .clone()
}

/// Parses one YAML document into JSON.
pub fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("bad YAML fixture: {e}\n{text}"))
}

/// Fills in schema defaults the way the API server does before validating:
/// an absent property with a `default` gets it, then defaults apply inside.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    if let (false, Some(default)) =
                        (object.contains_key(name), property.get("default"))
                    {
                        object.insert(name.clone(), default.clone());
                    }
                }
                for (name, child) in object.iter_mut() {
                    if let Some(property) = properties.get(name) {
                        apply_defaults(property, child);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for child in object.values_mut() {
                    apply_defaults(&schema["additionalProperties"], child);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(&schema["items"], item);
            }
        }
        _ => {}
    }
}

/// `spec.probes[0].name` from a JSON pointer (`/spec/probes/0/name`).
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

/// The CRD schema of `kind` as a Draft 4 JSON schema (OpenAPI 3.0 schema
/// objects are a Draft 4 dialect): `nullable` becomes a null alternative,
/// `x-kubernetes-list-type: set` becomes `uniqueItems`, objects with declared
/// properties refuse others (as `kubectl apply` does with its default strict
/// field validation), and the root declares what every object carries.
pub fn draft4_schema(kind: &str) -> Value {
    let mut root = draft4(&schema(kind));
    let properties = root["properties"].as_object_mut().expect("root properties");
    properties.insert(
        "apiVersion".into(),
        json!({"type": "string", "enum": [ringwarden_crds::API_VERSION]}),
    );
    properties.insert("kind".into(), json!({"type": "string", "enum": [kind]}));
    properties.insert(
        "metadata".into(),
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "maxLength": 253,
                    "pattern": ringwarden_crds::cel::DNS_SUBDOMAIN_REGEX,
                },
                "namespace": {
                    "type": "string",
                    "maxLength": 63,
                    "pattern": ringwarden_crds::cel::DNS_LABEL_REGEX,
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }),
    );
    root["required"]
        .as_array_mut()
        .expect("root required")
        .extend([json!("apiVersion"), json!("kind"), json!("metadata")]);
    root
}

/// Any CRD schema node as a Draft 4 JSON schema (see [`draft4_schema`]).
pub fn draft4_of(schema: &Value) -> Value {
    draft4(schema)
}

fn draft4(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "properties" => {
                let properties = value
                    .as_object()
                    .expect("properties is a map")
                    .iter()
                    .map(|(name, property)| (name.clone(), draft4(property)))
                    .collect();
                out.insert(key.clone(), Value::Object(properties));
            }
            "items" | "additionalProperties" => {
                out.insert(key.clone(), draft4(value));
            }
            "x-kubernetes-list-type" if value == "set" => {
                out.insert("uniqueItems".into(), true.into());
            }
            // Kubernetes' own keywords; CEL rules are checked separately.
            k if k.starts_with("x-kubernetes-") => {}
            "nullable" => {}
            // int32, uint32, double...: OpenAPI formats, not JSON Schema's.
            "format" if value != "date-time" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let preserves = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if out.contains_key("properties") && !out.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".into(), false.into());
    }
    if schema.get("nullable") == Some(&json!(true)) {
        json!({"anyOf": [{"type": "null"}, Value::Object(out)]})
    } else {
        Value::Object(out)
    }
}

/// What the schema (without CEL) finds wrong with `object`, after defaulting,
/// as `(field, message)`.
pub fn schema_errors(kind: &str, object: &Value) -> Vec<(String, String)> {
    let mut object = object.clone();
    apply_defaults(&schema(kind), &mut object);
    let schema = draft4_schema(kind);
    let validator = jsonschema::draft4::new(&schema).expect("the schema compiles");
    validator
        .iter_errors(&object)
        .map(|e| (dotted(e.instance_path().as_str()), e.to_string()))
        .collect()
}

/// One `x-kubernetes-validations` entry and where it sits.
#[derive(Clone, Debug)]
pub struct Site {
    pub kind: &'static str,
    /// Schema location: `spec.probes[].export`.
    pub path: String,
    pub rule: String,
    pub message: String,
    pub field_path: Option<String>,
    pub reason: Option<String>,
}

impl Site {
    /// How tests name a rule: kind, location and message.
    pub fn key(&self) -> String {
        format!("{} {}: {}", self.kind, self.path, self.message)
    }
}

/// Every rule of every CRD, found by walking the generated schemas.
pub fn sites() -> Vec<Site> {
    static SITES: OnceLock<Vec<Site>> = OnceLock::new();
    SITES.get_or_init(find_sites).clone()
}

fn find_sites() -> Vec<Site> {
    let mut out = Vec::new();
    for kind in KINDS {
        walk_schema(&schema(kind), String::new(), &mut |path, node| {
            for entry in node["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
                out.push(Site {
                    kind,
                    path: path.to_owned(),
                    rule: text("rule").expect("every entry has a rule"),
                    message: text("message").expect("every entry has a message"),
                    field_path: text("fieldPath"),
                    reason: text("reason"),
                });
            }
        });
    }
    out
}

/// Calls `visit(path, node)` on every schema node, depth first.
pub fn walk_schema(node: &Value, path: String, visit: &mut impl FnMut(&str, &Value)) {
    visit(&path, node);
    if let Some(properties) = node["properties"].as_object() {
        for (name, property) in properties {
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            walk_schema(property, child, visit);
        }
    }
    if node["items"].is_object() {
        walk_schema(&node["items"], format!("{path}[]"), visit);
    }
    if node["additionalProperties"].is_object() {
        walk_schema(&node["additionalProperties"], format!("{path}{{}}"), visit);
    }
}

/// The CEL environment of CRD validation rules: the standard library and
/// the strings extension (`split`, `substring`...), which the API server
/// offers too.
pub fn env() -> Arc<cel::Env> {
    thread_local! {
        static ENV: Arc<cel::Env> = {
            let mut env = cel::Env::stdlib();
            env.add_extension(cel::extensions::strings)
                .expect("the strings extension registers");
            Arc::new(env)
        };
    }
    ENV.with(Arc::clone)
}

/// Evaluates `rule` with `self` bound to `value`: `Ok(true)` admits,
/// `Ok(false)` rejects, and `Err` (an evaluation error) rejects too, as it
/// does in the API server.
pub fn eval(env: &Arc<cel::Env>, rule: &str, value: cel::Value) -> Result<bool, String> {
    thread_local! {
        static PROGRAMS: RefCell<HashMap<String, Arc<cel::Program>>> = RefCell::default();
    }
    let cached = PROGRAMS.with(|p| p.borrow().get(rule).cloned());
    let program = match cached {
        Some(program) => program,
        None => {
            let program = Arc::new(
                env.compile(rule)
                    .map_err(|e| format!("does not compile: {e}"))?,
            );
            PROGRAMS.with(|p| p.borrow_mut().insert(rule.to_owned(), program.clone()));
            program
        }
    };
    let mut context = cel::Context::with_env(env.clone());
    context.add_variable_from_value("self", value);
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluates to {other:?}, not a bool")),
        Err(e) => Err(format!("evaluation error: {e}")),
    }
}

/// `value` as the API server hands it to CEL: typed by its schema, so a
/// `type: number` field is a double even when written as `1000`.
pub fn to_cel(value: &Value, schema: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match schema["type"].as_str() {
            Some("number") => cel::Value::Float(n.as_f64().expect("a number")),
            _ => match n.as_i64() {
                Some(i) => cel::Value::Int(i),
                None => cel::Value::Float(n.as_f64().expect("a number")),
            },
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(
            items.iter().map(|v| to_cel(v, &schema["items"])).collect(),
        )),
        Value::Object(object) => {
            let map: HashMap<String, cel::Value> = object
                .iter()
                .map(|(k, v)| {
                    let child = schema["properties"]
                        .get(k)
                        .unwrap_or(&schema["additionalProperties"]);
                    (k.clone(), to_cel(v, child))
                })
                .collect();
            map.into()
        }
    }
}

/// One evaluation of one rule on one object.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// [`Site::key`] of the rule.
    pub key: String,
    pub message: String,
    /// Where `self` was: `spec.probes[0].export`.
    pub at: String,
    /// The field the API server would blame: `at` plus the rule's fieldPath.
    pub field: String,
    pub result: Result<bool, String>,
}

impl Outcome {
    pub fn admits(&self) -> bool {
        self.result == Ok(true)
    }
}

/// Evaluates every rule of `kind`'s schema on `object` (after defaulting),
/// wherever the object has a non-null value at the rule's location.
pub fn evaluate(kind: &str, object: &Value) -> Vec<Outcome> {
    let schema = schema(kind);
    let mut object = object.clone();
    apply_defaults(&schema, &mut object);
    let env = env();
    let mut out = Vec::new();
    walk_object(
        kind,
        &env,
        &schema,
        &object,
        String::new(),
        String::new(),
        &mut out,
    );
    out
}

/// Evaluates every rule of `schema` (any node) on `value`, after defaulting.
pub fn evaluate_at(schema: &Value, value: &Value) -> Vec<Outcome> {
    let mut value = value.clone();
    apply_defaults(schema, &mut value);
    let mut out = Vec::new();
    walk_object(
        "",
        &env(),
        schema,
        &value,
        String::new(),
        String::new(),
        &mut out,
    );
    out
}

fn walk_object(
    kind: &str,
    env: &Arc<cel::Env>,
    schema: &Value,
    value: &Value,
    schema_path: String,
    at: String,
    out: &mut Vec<Outcome>,
) {
    // The API server does not validate a null that `nullable` allows.
    if value.is_null() {
        return;
    }
    for entry in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rule = entry["rule"].as_str().expect("a rule");
        let message = entry["message"].as_str().expect("a message").to_owned();
        let field_path = entry["fieldPath"].as_str().unwrap_or("");
        out.push(Outcome {
            key: format!("{kind} {schema_path}: {message}"),
            message,
            field: format!("{at}{field_path}"),
            at: at.clone(),
            result: eval(env, rule, to_cel(value, schema)),
        });
    }
    let join = |base: &str, name: &str| {
        if base.is_empty() {
            name.to_owned()
        } else {
            format!("{base}.{name}")
        }
    };
    match value {
        Value::Object(object) => {
            for (name, child) in object {
                if let Some(property) = schema["properties"].get(name) {
                    walk_object(
                        kind,
                        env,
                        property,
                        child,
                        join(&schema_path, name),
                        join(&at, name),
                        out,
                    );
                } else if schema["additionalProperties"].is_object() {
                    walk_object(
                        kind,
                        env,
                        &schema["additionalProperties"],
                        child,
                        format!("{schema_path}{{}}"),
                        format!("{at}[{name}]"),
                        out,
                    );
                }
                // Anything else is an unknown field, which the API server prunes.
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, item) in items.iter().enumerate() {
                walk_object(
                    kind,
                    env,
                    &schema["items"],
                    item,
                    format!("{schema_path}[]"),
                    format!("{at}[{i}]"),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Reads `object` (JSON) as a manifest the way standalone mode does: serde
/// plus the Rust `validate()`. Returns the fields of the problems found.
pub fn rust_errors(object: &Value) -> Vec<(Option<String>, String)> {
    let text = serde_yaml_ng::to_string(object).expect("JSON is YAML");
    match ringwarden_crds::manifest::parse_str("fixture.yaml", &text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.into_iter().map(|e| (e.field, e.message)).collect(),
    }
}
