//! The worked example of `docs/quota.md` is what the quota planner computes:
//! its ProbeSet is planned here, and the tables and the `status.plan` the
//! document shows must be the planner's output.

use ringwarden_crds::{
    PlanStatus, ProbeSet,
    manifest::{Manifest, parse_str},
    plan::plan_probeset,
};

/// Page size the operator plans for.
const PAGE: u64 = 4096;

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quota.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fenced code blocks of `text` with the given info string.
fn blocks<'a>(text: &'a str, info: &str) -> Vec<&'a str> {
    let fence = format!("```{info}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("\n```").expect("an unterminated code block");
        out.push(&body[..end + 1]);
        rest = &body[end + 4..];
    }
    out
}

/// The ProbeSet of the worked example.
fn example() -> ProbeSet {
    let doc = doc();
    let yaml = blocks(&doc, "yaml")
        .into_iter()
        .find(|b| b.contains("kind: ProbeSet"))
        .expect("docs/quota.md shows a ProbeSet");
    match parse_str("docs/quota.md", yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
    {
        Manifest::ProbeSet(ps) => *ps,
        Manifest::Slo(_) => panic!("the example is not a ProbeSet"),
    }
}

fn plan(ps: &ProbeSet) -> PlanStatus {
    plan_probeset(ps, &[], PAGE)
        .unwrap_or_else(|e| panic!("the example does not plan: {e}"))
        .1
}

/// The table the document shows for a plan.
fn table(plan: &PlanStatus) -> String {
    let mut out = String::from("| probe | ring | keeps | predicted drop |\n|---|---|---|---|\n");
    for p in &plan.probes {
        let ring = if p.ring_bytes == 0 {
            "none (the agent maps one page)".to_owned()
        } else {
            ringwarden_core::quantity::format_bytes(p.ring_bytes)
        };
        let keeps = match p.sample_every {
            1 => "every event".to_owned(),
            n => format!("1 in {n}"),
        };
        let drop = format!("{:.1}", p.predicted_drop * 100.0);
        let drop = drop.trim_end_matches(".0");
        out.push_str(&format!("| `{}` | {ring} | {keeps} | {drop}% |\n", p.name));
    }
    out
}

#[test]
fn the_example_is_a_valid_probeset_with_a_short_budget() {
    let ps = example();
    assert_eq!(ps.spec.validate(), vec![]);
    assert_eq!(ps.spec.ring_buffer.node_budget, "512Ki");
}

#[test]
fn the_plan_with_a_short_budget_is_the_one_shown() {
    let doc = doc();
    let plan = plan(&example());
    let table = table(&plan);
    assert!(
        doc.contains(&table),
        "docs/quota.md does not show the planner's table for nodeBudget 512Ki:\n{table}"
    );
    let yaml = serde_yaml_ng::to_string(&plan).unwrap();
    assert!(
        blocks(&doc, "yaml").contains(&yaml.as_str()),
        "docs/quota.md does not show the planner's status.plan:\n{yaml}"
    );
    assert!(
        doc.contains(&format!(
            "`status.ringBuffer` shows `{}`",
            ringwarden_core::quantity::format_bytes(plan.used_bytes)
        )),
        "status.ringBuffer"
    );
}

#[test]
fn the_plan_with_enough_budget_is_the_one_shown() {
    let doc = doc();
    let mut ps = example();
    ps.spec.ring_buffer.node_budget = "1Mi".into();
    let plan = plan(&ps);
    let table = table(&plan);
    assert!(
        doc.contains(&table),
        "docs/quota.md does not show the planner's table for nodeBudget 1Mi:\n{table}"
    );
    // "Together the rings need 592 KiB": what an unconstrained plan uses.
    assert!(
        doc.contains(&format!(
            "Together the rings need {} KiB",
            plan.used_bytes / 1024
        )),
        "the total the rings need"
    );
    // Every ring was rounded up from the need, never halved.
    for p in &plan.probes {
        assert!(
            p.reasons.iter().all(|r| !r.contains("halved")),
            "{}: {:?}",
            p.name,
            p.reasons
        );
    }
}

#[test]
fn the_record_size_is_the_one_the_document_uses() {
    use ringwarden_core::planner::{EVENT_BYTES, RINGBUF_HEADER_BYTES};
    assert_eq!(EVENT_BYTES, 88, "docs/quota.md: 88-byte records");
    assert_eq!(
        u64::from(EVENT_BYTES).next_multiple_of(8) + RINGBUF_HEADER_BYTES,
        96,
        "docs/quota.md: s = 96"
    );
}
