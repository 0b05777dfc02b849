//! Just enough of CEL's type checker for the cost model: the type of every
//! subexpression and the overload each call resolves to, for the functions
//! of the Kubernetes CRD environment (standard library, strings extension,
//! the Kubernetes libraries). A function it does not know is an error, so
//! a new rule cannot be underestimated by being silently priced at 1.

use std::collections::HashMap;

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr, LiteralValue};

use crate::decl::{Decl, DeclKind};

#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    Null,
    Dyn,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// An object of the schema, with its fields.
    Object(Box<Decl>),
    /// `URL`, `Quantity`: values of the Kubernetes libraries.
    Opaque(&'static str),
}

impl Ty {
    pub fn of(decl: &Decl) -> Ty {
        match &decl.kind {
            DeclKind::Bool => Ty::Bool,
            DeclKind::Int => Ty::Int,
            DeclKind::Double => Ty::Double,
            DeclKind::String => Ty::String,
            DeclKind::Bytes => Ty::Bytes,
            DeclKind::Duration => Ty::Duration,
            DeclKind::Timestamp => Ty::Timestamp,
            DeclKind::Dyn => Ty::Dyn,
            DeclKind::List(elem) => Ty::List(Box::new(Ty::of(elem))),
            DeclKind::Map(value) => Ty::Map(Box::new(Ty::String), Box::new(Ty::of(value))),
            DeclKind::Object(_) => Ty::Object(Box::new(decl.clone())),
        }
    }

    /// `isScalar` of checker/cost.go: values of a fixed size.
    pub fn is_scalar(&self) -> bool {
        matches!(
            self,
            Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Duration | Ty::Timestamp
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Int => "int64",
            Ty::Uint => "uint64",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Bytes => "bytes",
            Ty::Duration => "duration",
            Ty::Timestamp => "timestamp",
            Ty::Null => "null",
            Ty::Dyn => "dyn",
            Ty::List(_) => "list",
            Ty::Map(..) => "map",
            Ty::Object(_) => "object",
            Ty::Opaque(name) => name,
        }
    }
}

/// The checker's results, by expression id.
#[derive(Default)]
pub struct Checked {
    pub types: HashMap<u64, Ty>,
    pub overloads: HashMap<u64, Vec<String>>,
}

impl Checked {
    pub fn ty(&self, e: &IdedExpr) -> &Ty {
        self.types.get(&e.id).unwrap_or(&Ty::Dyn)
    }
}

/// Types `expr` with `self` (and `oldSelf`) of type `root`.
pub fn check(expr: &IdedExpr, root: &Decl) -> Result<Checked, String> {
    let mut checker = Checker {
        root: Ty::of(root),
        scopes: Vec::new(),
        out: Checked::default(),
    };
    checker.expr(expr)?;
    Ok(checker.out)
}

struct Checker {
    root: Ty,
    scopes: Vec<(String, Ty)>,
    out: Checked,
}

impl Checker {
    fn expr(&mut self, e: &IdedExpr) -> Result<Ty, String> {
        let ty = match &e.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => match self.scopes.iter().rev().find(|(n, _)| n == name) {
                Some((_, ty)) => ty.clone(),
                None if name == "self" || name == "oldSelf" => self.root.clone(),
                None => return Err(format!("undeclared reference to {name:?}")),
            },
            Expr::Select(select) => {
                let operand = self.expr(&select.operand)?;
                if select.test {
                    Ty::Bool
                } else {
                    match operand {
                        Ty::Object(decl) => match &decl.kind {
                            DeclKind::Object(fields) => Ty::of(
                                fields
                                    .get(&select.field)
                                    .ok_or_else(|| format!("no such field {:?}", select.field))?,
                            ),
                            _ => unreachable!("an object type holds an object declaration"),
                        },
                        Ty::Map(_, value) => *value,
                        Ty::Dyn => Ty::Dyn,
                        other => {
                            return Err(format!("cannot select {:?} from {other:?}", select.field));
                        }
                    }
                }
            }
            Expr::List(list) => {
                let mut elem = None;
                for item in &list.elements {
                    let ty = self.expr(item)?;
                    elem.get_or_insert(ty);
                }
                Ty::List(Box::new(elem.unwrap_or(Ty::Dyn)))
            }
            Expr::Map(map) => {
                let (mut key, mut value) = (None, None);
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err("struct literals are not supported".into());
                    };
                    let k = self.expr(&entry.key)?;
                    let v = self.expr(&entry.value)?;
                    key.get_or_insert(k);
                    value.get_or_insert(v);
                }
                Ty::Map(
                    Box::new(key.unwrap_or(Ty::Dyn)),
                    Box::new(value.unwrap_or(Ty::Dyn)),
                )
            }
            Expr::Comprehension(c) => {
                let range = self.expr(&c.iter_range)?;
                let accu = self.expr(&c.accu_init)?;
                let (first, second) = match &range {
                    Ty::List(elem) => (Ty::Int, (**elem).clone()),
                    Ty::Map(key, value) => ((**key).clone(), (**value).clone()),
                    _ => (Ty::Dyn, Ty::Dyn),
                };
                self.scopes.push((c.accu_var.clone(), accu));
                match &c.iter_var2 {
                    Some(var2) => {
                        self.scopes.push((c.iter_var.clone(), first));
                        self.scopes.push((var2.clone(), second));
                    }
                    None => {
                        let single = match &range {
                            Ty::List(_) => second,
                            _ => first,
                        };
                        self.scopes.push((c.iter_var.clone(), single));
                    }
                }
                self.expr(&c.loop_cond)?;
                let step = self.expr(&c.loop_step)?;
                self.scopes
                    .truncate(self.scopes.len() - 1 - usize::from(c.iter_var2.is_some()));
                // The accumulator takes the step's type (`map` starts from `[]`).
                self.scopes.last_mut().expect("the accumulator").1 = step;
                let result = self.expr(&c.result)?;
                self.scopes.pop();
                result
            }
            Expr::Call(call) => {
                let target = match &call.target {
                    Some(t) => Some(self.expr(t)?),
                    None => None,
                };
                let args = call
                    .args
                    .iter()
                    .map(|a| self.expr(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let (overloads, ty) = resolve(&call.func_name, target.as_ref(), &args)?;
                self.out.overloads.insert(e.id, overloads);
                ty
            }
            Expr::Struct(_) | Expr::Unspecified => {
                return Err("struct literals are not supported".into());
            }
        };
        self.out.types.insert(e.id, ty.clone());
        Ok(ty)
    }
}

fn one(id: impl Into<String>, ty: Ty) -> Result<(Vec<String>, Ty), String> {
    Ok((vec![id.into()], ty))
}

/// The overload ids (as cel-go's `common/overloads` names them where the
/// cost model cares) and result type of `function` on these argument types.
fn resolve(function: &str, target: Option<&Ty>, args: &[Ty]) -> Result<(Vec<String>, Ty), String> {
    use Ty::*;
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Dyn);
    let member = |t: &Ty| target.is_some_and(|target| target == t || *target == Dyn);
    let comparison = |op: &str| {
        let id = match (arg(0), arg(1)) {
            (String, String) => format!("{op}_string"),
            (Bytes, Bytes) => format!("{op}_bytes"),
            (a, _) => format!("{op}_{}", a.name()),
        };
        one(id, Bool)
    };
    match (function, target) {
        ("_&&_", None) => one("logical_and", Bool),
        ("_||_", None) => one("logical_or", Bool),
        ("!_", None) => one("logical_not", Bool),
        ("@not_strictly_false", None) => one("not_strictly_false", Bool),
        ("_?_:_", None) => {
            let ty = if arg(1) == arg(2) { arg(1) } else { Dyn };
            one("conditional", ty)
        }
        ("_==_", None) => one("equals", Bool),
        ("_!=_", None) => one("not_equals", Bool),
        ("_<_", None) => comparison("less"),
        ("_<=_", None) => comparison("less_equals"),
        ("_>_", None) => comparison("greater"),
        ("_>=_", None) => comparison("greater_equals"),
        ("_+_", None) => match (arg(0), arg(1)) {
            (String, String) => one("add_string", String),
            (Bytes, Bytes) => one("add_bytes", Bytes),
            (List(a), List(b)) => one("add_list", List(if *a == Dyn { b } else { a })),
            (Duration, Timestamp) => one("add_duration_timestamp", Timestamp),
            (a, _) => one(format!("add_{}", a.name()), a),
        },
        ("_-_", None) => match (arg(0), arg(1)) {
            (Timestamp, Timestamp) => one("subtract_timestamp_timestamp", Duration),
            (a, _) => one(format!("subtract_{}", a.name()), a),
        },
        ("_*_" | "_/_" | "_%_", None) => one(format!("arithmetic_{}", arg(0).name()), arg(0)),
        ("-_", None) => one(format!("negate_{}", arg(0).name()), arg(0)),
        ("_[_]", None) => match arg(0) {
            List(elem) => one("index_list", *elem),
            Map(_, value) => one("index_map", *value),
            Dyn => Ok((vec!["index_list".into(), "index_map".into()], Dyn)),
            other => Err(format!("cannot index {other:?}")),
        },
        ("@in", None) => match arg(1) {
            List(_) => one("in_list", Bool),
            Map(..) => one("in_map", Bool),
            Dyn => Ok((vec!["in_list".into(), "in_map".into()], Bool)),
            other => Err(format!("cannot test membership in {other:?}")),
        },
        ("size", _) => one("size", Int),
        ("matches", Some(String)) => one("matches_string", Bool),
        ("matches", None) => one("matches", Bool),
        ("contains", Some(String)) => one("contains_string", Bool),
        ("startsWith", Some(String)) => one("starts_with_string", Bool),
        ("endsWith", Some(String)) => one("ends_with_string", Bool),
        ("string", None) => match arg(0) {
            Bytes => one("bytes_to_string", String),
            a => one(format!("{}_to_string", a.name()), String),
        },
        ("bytes", None) => match arg(0) {
            String => one("string_to_bytes", Bytes),
            a => one(format!("{}_to_bytes", a.name()), Bytes),
        },
        ("int", None) => one(format!("{}_to_int64", arg(0).name()), Int),
        ("uint", None) => one(format!("{}_to_uint64", arg(0).name()), Uint),
        ("double", None) => one(format!("{}_to_double", arg(0).name()), Double),
        ("bool", None) => one(format!("{}_to_bool", arg(0).name()), Bool),
        ("duration", None) => one(format!("{}_to_duration", arg(0).name()), Duration),
        ("timestamp", None) => one(format!("{}_to_timestamp", arg(0).name()), Timestamp),
        ("dyn", None) => one("to_dyn", Dyn),
        (
            "getSeconds" | "getMinutes" | "getHours" | "getMilliseconds" | "getFullYear"
            | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate" | "getDayOfWeek",
            Some(Duration | Timestamp),
        ) => one(function, Int),
        // The strings extension and the Kubernetes libraries.
        ("split", Some(String)) => one("string_split_string", List(Box::new(String))),
        ("join", Some(List(_))) => one("list_join", String),
        ("lowerAscii" | "upperAscii" | "trim" | "substring" | "charAt" | "replace" | "find", _)
            if member(&String) =>
        {
            one(function, String)
        }
        ("findAll", _) if member(&String) => one(function, List(Box::new(String))),
        ("indexOf" | "lastIndexOf", Some(_)) => one(function, Int),
        ("isSorted", Some(List(_))) => one(function, Bool),
        ("sum" | "min" | "max", Some(List(elem))) => one(function, (**elem).clone()),
        ("url", None) => one(function, Opaque("URL")),
        ("isURL", None) => one(function, Bool),
        (
            "getScheme" | "getHost" | "getHostname" | "getPort" | "getEscapedPath",
            Some(Opaque("URL")),
        ) => one(function, String),
        ("quantity", None) => one(function, Opaque("Quantity")),
        ("isQuantity", None) => one(function, Bool),
        ("sign" | "asInteger" | "compareTo", Some(Opaque("Quantity"))) => one(function, Int),
        ("isInteger" | "isGreaterThan" | "isLessThan", Some(Opaque("Quantity"))) => {
            one(function, Bool)
        }
        ("asApproximateFloat", Some(Opaque("Quantity"))) => one(function, Double),
        ("add" | "sub", Some(Opaque("Quantity"))) => one(function, Opaque("Quantity")),
        _ => Err(format!(
            "the cost model does not know {function}() on {target:?} with {args:?}; add it \
             with its upstream cost"
        )),
    }
}
