//! The static cost estimate of a CEL expression, as the API server computes
//! it before it accepts a CRD: a port of cel-go's `checker/cost.go` (the
//! `coster`), with the estimator Kubernetes plugs into it
//! (k8s.io/apiserver/pkg/cel/library/cost.go `EstimateCallCost`, and the
//! apiextensions `sizeEstimator` that reads maxLength, maxItems and
//! maxProperties from the schema by path) and Kubernetes' option
//! `PresenceTestHasCost(false)`. Only the maximum matters to the API
//! server; the minimum is carried along as upstream does.

use std::collections::HashMap;

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr, LiteralValue};

use crate::checker::{Checked, Ty, check};
use crate::decl::Decl;

/// `common.StringTraversalCostFactor`.
const STRING_TRAVERSAL: f64 = 0.1;
/// `common.RegexStringLengthCostFactor`.
const REGEX_LENGTH: f64 = 0.25;
/// `common.SelectAndIdentCost`.
const SELECT_AND_IDENT: u64 = 1;
/// `common.ConstCost`.
const CONST: u64 = 0;
/// `common.ListCreateBaseCost`, `MapCreateBaseCost`.
const LIST_CREATE: u64 = 10;
const MAP_CREATE: u64 = 30;
/// Kubernetes sets `PresenceTestHasCost(false)` (environment/base.go).
const PRESENCE_TEST: u64 = 0;

/// A range of sizes (of a string, bytes, list or map) or of costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

pub type Cost = Range;
pub type Size = Range;

impl Range {
    pub const fn fixed(n: u64) -> Range {
        Range { min: n, max: n }
    }
    pub const UNKNOWN: Range = Range {
        min: 0,
        max: u64::MAX,
    };
    pub fn add(self, o: Range) -> Range {
        Range {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }
    pub fn mul(self, o: Range) -> Range {
        Range {
            min: self.min.saturating_mul(o.min),
            max: self.max.saturating_mul(o.max),
        }
    }
    /// `MultiplyByCostFactor`: rounded up, saturating.
    pub fn factor(self, f: f64) -> Range {
        Range {
            min: by_factor(self.min, f),
            max: by_factor(self.max, f),
        }
    }
    pub fn union(self, o: Range) -> Range {
        Range {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

fn by_factor(x: u64, f: f64) -> u64 {
    let x = x as f64;
    if x > 0.0 && f > 0.0 && x > u64::MAX as f64 / f {
        return u64::MAX;
    }
    let ceil = (x * f).ceil();
    if ceil >= 2f64.powi(64) {
        u64::MAX
    } else {
        ceil as u64
    }
}

/// `entrySizeEstimate`: the key and value sizes of a list or map literal.
#[derive(Clone, Copy, Debug)]
struct EntrySize {
    is_list: bool,
    key: Size,
    val: Size,
}

impl EntrySize {
    fn union(a: Option<EntrySize>, b: Option<EntrySize>) -> Option<EntrySize> {
        let (a, b) = (a?, b?);
        Some(EntrySize {
            is_list: a.is_list,
            key: a.key.union(b.key),
            val: a.val.union(b.val),
        })
    }
}

#[derive(Clone, Debug)]
struct Local {
    path: Vec<String>,
    size: Option<Size>,
    entry: Option<EntrySize>,
}

/// An argument or target as the call estimators see it (`checker.AstNode`).
struct Node<'e> {
    path: Vec<String>,
    ty: Ty,
    expr: &'e IdedExpr,
    computed: Option<Size>,
}

/// The estimated cost of `rule` with `self` declared as `root`.
pub fn estimate(rule: &str, root: &Decl) -> Result<Cost, String> {
    let expr = cel::parser::Parser::default()
        .parse(rule)
        .map_err(|e| format!("does not parse: {e}"))?;
    let checked = check(&expr, root)?;
    let mut coster = Coster {
        checked: &checked,
        root,
        paths: HashMap::new(),
        sizes: HashMap::new(),
        entry_sizes: HashMap::new(),
        locals: HashMap::new(),
    };
    coster.cost(&expr)
}

struct Coster<'a> {
    checked: &'a Checked,
    root: &'a Decl,
    paths: HashMap<u64, Vec<String>>,
    sizes: HashMap<u64, Size>,
    entry_sizes: HashMap<u64, EntrySize>,
    locals: HashMap<String, Vec<Local>>,
}

impl Coster<'_> {
    fn cost(&mut self, e: &IdedExpr) -> Result<Cost, String> {
        Ok(match &e.expr {
            Expr::Literal(_) => Cost::fixed(CONST),
            Expr::Ident(name) => {
                let path = match self.local(name) {
                    Some(local) => local.path.clone(),
                    None => vec![name.clone()],
                };
                self.paths.insert(e.id, path);
                Cost::fixed(SELECT_AND_IDENT)
            }
            Expr::Select(select) => {
                if select.test {
                    // has(): only the operand is priced.
                    return Ok(Cost::fixed(PRESENCE_TEST).add(self.cost(&select.operand)?));
                }
                let mut sum = self.cost(&select.operand)?;
                if matches!(
                    self.checked.ty(&select.operand),
                    Ty::Map(..) | Ty::Object(_)
                ) {
                    sum = sum.add(Cost::fixed(SELECT_AND_IDENT));
                }
                let mut path = self.path(&select.operand);
                path.push(select.field.clone());
                self.paths.insert(e.id, path);
                sum
            }
            Expr::Call(_) => self.call(e)?,
            Expr::List(list) => {
                let mut sum = Cost::fixed(0);
                let mut item = Size {
                    min: if list.elements.is_empty() {
                        0
                    } else {
                        u64::MAX
                    },
                    max: 0,
                };
                for element in &list.elements {
                    sum = sum.add(self.cost(element)?);
                    item = item.union(self.size_or_unknown(element));
                }
                self.entry_sizes.insert(
                    e.id,
                    EntrySize {
                        is_list: true,
                        key: Size::fixed(1),
                        val: item,
                    },
                );
                sum.add(Cost::fixed(LIST_CREATE))
            }
            Expr::Map(map) => {
                let mut sum = Cost::fixed(0);
                let empty = if map.entries.is_empty() { 0 } else { u64::MAX };
                let mut key = Size { min: empty, max: 0 };
                let mut val = Size { min: empty, max: 0 };
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err("struct literals are not supported".into());
                    };
                    sum = sum
                        .add(self.cost(&entry.key)?)
                        .add(self.cost(&entry.value)?);
                    key = key.union(self.size_or_unknown(&entry.key));
                    val = val.union(self.size_or_unknown(&entry.value));
                }
                self.entry_sizes.insert(
                    e.id,
                    EntrySize {
                        is_list: false,
                        key,
                        val,
                    },
                );
                sum.add(Cost::fixed(MAP_CREATE))
            }
            Expr::Comprehension(c) => {
                let mut sum = self.cost(&c.iter_range)?.add(self.cost(&c.accu_init)?);
                let accu = Local {
                    path: self.path(&c.accu_init),
                    size: self.compute_size(&c.accu_init),
                    entry: self.entry_size(&c.accu_init),
                };
                self.push(&c.accu_var, accu);
                let range_entry = self.entry_size(&c.iter_range);
                let is_list = match range_entry {
                    Some(entry) => entry.is_list,
                    None => matches!(self.checked.ty(&c.iter_range), Ty::List(_)),
                };
                let range_path = self.path(&c.iter_range);
                let with = |sub: &str| {
                    let mut p = range_path.clone();
                    p.push(sub.to_string());
                    p
                };
                let local = |path, size| Local {
                    path,
                    size,
                    entry: None,
                };
                match &c.iter_var2 {
                    Some(var2) => {
                        let key = if is_list { "@indices" } else { "@keys" };
                        let value = if is_list { "@items" } else { "@values" };
                        self.push(&c.iter_var, local(with(key), range_entry.map(|s| s.key)));
                        self.push(var2, local(with(value), range_entry.map(|s| s.val)));
                    }
                    None if is_list => self.push(
                        &c.iter_var,
                        local(with("@items"), range_entry.map(|s| s.val)),
                    ),
                    None => self.push(
                        &c.iter_var,
                        local(with("@keys"), range_entry.map(|s| s.key)),
                    ),
                }
                let loop_cost = self.cost(&c.loop_cond)?;
                let step_cost = self.cost(&c.loop_step)?;
                self.pop(&c.iter_var);
                if let Some(var2) = &c.iter_var2 {
                    self.pop(var2);
                }
                sum = sum.add(self.cost(&c.result)?);
                self.pop(&c.accu_var);
                let range_count = self.size_or_unknown(&c.iter_range);
                sum = sum.add(range_count.mul(step_cost.add(loop_cost)));
                match &c.accu_init.expr {
                    Expr::Literal(_) => {
                        if let Some(size) = self.compute_size(&c.accu_init) {
                            self.sizes.insert(e.id, size);
                        }
                    }
                    Expr::List(_) | Expr::Map(_) => {
                        self.sizes.insert(e.id, range_count);
                        if let Some(entry) = self.entry_size(&c.loop_step) {
                            self.entry_sizes.insert(e.id, entry);
                        }
                    }
                    _ => {}
                }
                sum
            }
            Expr::Struct(_) | Expr::Unspecified => {
                return Err("struct literals are not supported".into());
            }
        })
    }

    fn call(&mut self, e: &IdedExpr) -> Result<Cost, String> {
        let Expr::Call(call) = &e.expr else {
            unreachable!()
        };
        if call.func_name == "dyn" && call.target.is_none() {
            // dyn() only disables type checking: 1 plus its argument.
            let cost = self.cost(&call.args[0])?;
            if let Some(size) = self.compute_size(&call.args[0]) {
                self.sizes.insert(e.id, size);
            }
            if let Some(entry) = self.entry_size(&call.args[0]) {
                self.entry_sizes.insert(e.id, entry);
            }
            return Ok(Cost::fixed(1).add(cost));
        }
        let mut args = Vec::new();
        let mut arg_costs = Vec::new();
        for arg in &call.args {
            arg_costs.push(self.cost(arg)?);
            args.push(self.node(arg));
        }
        let overloads = self
            .checked
            .overloads
            .get(&e.id)
            .cloned()
            .unwrap_or_default();
        if overloads.is_empty() {
            return Ok(Cost::fixed(0));
        }
        let mut sum = Cost::fixed(0);
        let mut target = None;
        if let Some(t) = &call.target {
            sum = sum.add(self.cost(t)?);
            target = Some(self.node(t));
        }
        let mut fn_cost = Cost {
            min: u64::MAX,
            max: 0,
        };
        let mut result_size: Option<Size> = None;
        for overload in &overloads {
            let (cost, size) = self.function_cost(
                e,
                &call.func_name,
                overload,
                target.as_ref(),
                &args,
                &arg_costs,
            )?;
            fn_cost = fn_cost.union(cost);
            if let Some(size) = size {
                result_size = Some(match result_size {
                    Some(r) => r.union(size),
                    None => size,
                });
            }
            if overload == "index_list" || overload == "index_map" {
                result_size = self.entry_size(&call.args[0]).map(|s| s.val);
                let mut path = self.path(&call.args[0]);
                path.push(
                    if overload == "index_list" {
                        "@items"
                    } else {
                        "@values"
                    }
                    .into(),
                );
                self.paths.insert(e.id, path);
            }
            if result_size.is_none() {
                result_size = self.compute_size(e);
            }
        }
        if let Some(size) = result_size {
            self.sizes.insert(e.id, size);
        }
        Ok(sum.add(fn_cost))
    }

    /// `functionCost`: the Kubernetes estimator first, then cel-go's own.
    fn function_cost(
        &mut self,
        e: &IdedExpr,
        function: &str,
        overload: &str,
        target: Option<&Node>,
        args: &[Node],
        arg_costs: &[Cost],
    ) -> Result<(Cost, Option<Size>), String> {
        let arg_sum = arg_costs.iter().fold(Cost::fixed(0), |a, &c| a.add(c));
        if let Some((cost, size)) = self.kubernetes_call_cost(function, target, args) {
            return Ok((cost.add(arg_sum), size));
        }
        let size_of = |n: &Node| n.computed.unwrap_or(Size::UNKNOWN);
        let traversal = |n: &Node| size_of(n).factor(STRING_TRAVERSAL);
        Ok(match overload {
            "string_to_bytes" => {
                let sz = size_of(&args[0]);
                (
                    sz.factor(STRING_TRAVERSAL).add(arg_sum),
                    Some(Size {
                        min: sz.min,
                        max: sz.max.saturating_mul(4),
                    }),
                )
            }
            "bytes_to_string" => {
                let sz = size_of(&args[0]);
                (
                    sz.factor(STRING_TRAVERSAL).add(arg_sum),
                    Some(Size {
                        min: sz.min / 4,
                        max: sz.max,
                    }),
                )
            }
            "starts_with_string" | "ends_with_string" => (traversal(&args[0]).add(arg_sum), None),
            "in_list" => (size_of(&args[1]).factor(1.0).add(arg_sum), None),
            "matches_string" => {
                let target = target.expect("a member call");
                let string = size_of(target).add(Size::fixed(1)).factor(STRING_TRAVERSAL);
                let regex = size_of(&args[0]).factor(REGEX_LENGTH);
                (string.mul(regex).add(arg_sum), None)
            }
            "contains_string" => {
                let target = target.expect("a member call");
                (
                    traversal(target).mul(traversal(&args[0])).add(arg_sum),
                    None,
                )
            }
            "logical_and" | "logical_or" => {
                // Short-circuits: at least the left side, at most both.
                let (lhs, rhs) = (arg_costs[0], arg_costs[1]);
                (
                    Cost {
                        min: lhs.min,
                        max: lhs.add(rhs).max,
                    },
                    None,
                )
            }
            "conditional" => {
                let size = size_of(&args[1]).union(size_of(&args[2]));
                let entry =
                    EntrySize::union(self.entry_size(args[1].expr), self.entry_size(args[2].expr));
                if let Some(entry) = entry {
                    self.entry_sizes.insert(e.id, entry);
                }
                (
                    arg_costs[0].add(arg_costs[1].union(arg_costs[2])),
                    Some(size),
                )
            }
            "add_string" | "add_bytes" | "add_list" => {
                let size = size_of(&args[0]).add(size_of(&args[1]));
                let entry =
                    EntrySize::union(self.entry_size(args[0].expr), self.entry_size(args[1].expr));
                if let Some(entry) = entry {
                    self.entry_sizes.insert(e.id, entry);
                }
                if overload == "add_list" {
                    (Cost::fixed(1).add(arg_sum), Some(size))
                } else {
                    (size.factor(STRING_TRAVERSAL).add(arg_sum), Some(size))
                }
            }
            "equals"
            | "not_equals"
            | "less_string"
            | "greater_string"
            | "less_equals_string"
            | "greater_equals_string"
            | "less_bytes"
            | "greater_bytes"
            | "less_equals_bytes"
            | "greater_equals_bytes" => {
                let smallest_max = size_of(&args[0]).max.min(size_of(&args[1]).max);
                let min = u64::from(smallest_max > 0);
                (
                    Cost {
                        min,
                        max: smallest_max,
                    }
                    .factor(STRING_TRAVERSAL)
                    .add(arg_sum),
                    None,
                )
            }
            // Everything else is O(1).
            _ => (Cost::fixed(1).add(arg_sum), None),
        })
    }

    /// `library.CostEstimator.EstimateCallCost`, by function name; `None`
    /// leaves the call to cel-go's defaults.
    fn kubernetes_call_cost(
        &self,
        function: &str,
        target: Option<&Node>,
        args: &[Node],
    ) -> Option<(Cost, Option<Size>)> {
        let size = |n: &Node| self.k8s_size(n);
        let traversal = |n: &Node| size(n).factor(STRING_TRAVERSAL);
        match function {
            "isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf" => {
                let target = target?;
                if let Ty::List(elem) = &target.ty {
                    let mut per_element = Cost::fixed(1);
                    if matches!(**elem, Ty::String | Ty::Bytes) {
                        let mut path = target.path.clone();
                        let element = if path.is_empty() {
                            Size::UNKNOWN
                        } else {
                            path.push("@items".into());
                            self.estimate_size(&path).unwrap_or(Size::UNKNOWN)
                        };
                        per_element = per_element.add(element.factor(STRING_TRAVERSAL));
                    }
                    Some((size(target).mul(per_element), None))
                } else {
                    Some((traversal(target), None))
                }
            }
            "url" if args.len() == 1 => Some((traversal(&args[0]), None)),
            "lowerAscii" | "upperAscii" | "substring" | "trim" => {
                let sz = size(target?);
                Some((sz.factor(STRING_TRAVERSAL), Some(sz)))
            }
            "replace" if args.len() >= 2 => {
                let sz = size(target?);
                let (from, to) = (size(&args[0]), size(&args[1]));
                let (mut count, mut retained) = (Size::fixed(0), Size::fixed(0));
                if from.min == 0 {
                    count.max = sz.max.saturating_add(u64::from(sz.max < u64::MAX));
                    retained.max = sz.max;
                } else if to.max <= from.min {
                    retained.max = sz.max;
                } else {
                    count.max = (sz.max as f64 / from.min as f64).ceil() as u64;
                }
                if from.max == 0 {
                    count.min = sz.min.saturating_add(u64::from(sz.min < u64::MAX));
                    retained.min = sz.min;
                } else if from.max <= to.min {
                    retained.min = sz.min;
                } else {
                    count.min = (sz.min as f64 / from.max as f64).ceil() as u64;
                }
                let result = count.mul(to).add(retained);
                Some((sz.factor(2.0 * STRING_TRAVERSAL), Some(result)))
            }
            "split" => {
                let sz = size(target?);
                let mut max = sz.max;
                if let Some(limit) = args.get(1)
                    && let Expr::Literal(LiteralValue::Int(n)) = &limit.expr.expr
                {
                    max = **n as u64;
                }
                Some((
                    sz.factor(2.0 * STRING_TRAVERSAL),
                    Some(Size { min: 0, max }),
                ))
            }
            "join" => {
                let target = target?;
                let list = size(target);
                let mut sz = Size::fixed(0);
                if let Ty::List(_) = target.ty {
                    let element = if target.path.is_empty() {
                        Size::UNKNOWN
                    } else {
                        let mut path = target.path.clone();
                        path.push("@items".into());
                        self.estimate_size(&path).unwrap_or(Size::UNKNOWN)
                    };
                    sz = list.mul(element);
                }
                if let Some(sep) = args.first() {
                    let separators = Size {
                        min: list.min.saturating_sub(1),
                        max: list.max.saturating_sub(1),
                    };
                    sz = sz.add(size(sep).mul(separators));
                }
                Some((sz.factor(STRING_TRAVERSAL), Some(sz)))
            }
            "find" | "findAll" if !args.is_empty() => {
                let sz = size(target?);
                let string = sz.add(Size::fixed(1)).factor(STRING_TRAVERSAL);
                let regex = size(&args[0]).factor(REGEX_LENGTH);
                Some((
                    string.mul(regex),
                    Some(Size {
                        min: 0,
                        max: sz.max,
                    }),
                ))
            }
            "quantity" | "isQuantity" => {
                target?;
                Some((traversal(&args[0]), None))
            }
            "sign" | "asInteger" | "isInteger" | "asApproximateFloat" | "isGreaterThan"
            | "isLessThan" | "compareTo" | "add" | "sub" => Some((Cost::fixed(1), None)),
            _ => None,
        }
    }

    /// `CostEstimator.sizeEstimate`: the computed size, else the schema's.
    fn k8s_size(&self, n: &Node) -> Size {
        n.computed
            .or_else(|| self.estimate_size(&n.path))
            .unwrap_or(Size::UNKNOWN)
    }

    /// The apiextensions `sizeEstimator.EstimateSize`: `MaxElements` of the
    /// declaration at `path`, whose first element is the variable.
    fn estimate_size(&self, path: &[String]) -> Option<Size> {
        let (_, rest) = path.split_first()?;
        let decl = self.root.at(rest)?;
        Some(Size {
            min: 0,
            max: decl.max_elements,
        })
    }

    fn node<'e>(&mut self, e: &'e IdedExpr) -> Node<'e> {
        let mut path = self.path(e);
        if path
            .first()
            .is_some_and(|v| v == "@result" || v == "__result__")
        {
            // Only paths to root variables are handed to the estimators.
            path.clear();
        }
        Node {
            path,
            ty: self.checked.ty(e).clone(),
            expr: e,
            computed: self.compute_size(e),
        }
    }

    fn compute_size(&mut self, e: &IdedExpr) -> Option<Size> {
        if let Some(size) = self.sizes.get(&e.id) {
            return Some(*size);
        }
        let literal = match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Some(s.inner().chars().count() as u64),
            Expr::Literal(LiteralValue::Bytes(b)) => Some(b.inner().len() as u64),
            Expr::Literal(_) => Some(1),
            Expr::List(list) => Some(list.elements.len() as u64),
            Expr::Map(map) => Some(map.entries.len() as u64),
            _ => None,
        };
        if let Some(n) = literal {
            return Some(Size::fixed(n));
        }
        if let Some(size) = self.estimate_size(&self.path(e)) {
            self.sizes.insert(e.id, size);
            return Some(size);
        }
        if self.checked.ty(e).is_scalar() {
            return Some(Size::fixed(1));
        }
        if let Expr::Ident(name) = &e.expr {
            return self.local(name).and_then(|l| l.size);
        }
        None
    }

    fn size_or_unknown(&mut self, e: &IdedExpr) -> Size {
        self.compute_size(e).unwrap_or(Size::UNKNOWN)
    }

    fn entry_size(&self, e: &IdedExpr) -> Option<EntrySize> {
        if let Some(entry) = self.entry_sizes.get(&e.id) {
            return Some(*entry);
        }
        match &e.expr {
            Expr::Ident(name) => self.local(name).and_then(|l| l.entry),
            _ => None,
        }
    }

    fn path(&self, e: &IdedExpr) -> Vec<String> {
        if let Expr::Ident(name) = &e.expr
            && let Some(local) = self.local(name)
        {
            return local.path.clone();
        }
        self.paths.get(&e.id).cloned().unwrap_or_default()
    }

    fn local(&self, name: &str) -> Option<&Local> {
        self.locals.get(name).and_then(|stack| stack.last())
    }

    fn push(&mut self, name: &str, local: Local) {
        self.locals.entry(name.to_string()).or_default().push(local);
    }

    fn pop(&mut self, name: &str) {
        self.locals.get_mut(name).and_then(Vec::pop);
    }
}
