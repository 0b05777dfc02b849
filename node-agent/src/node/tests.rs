//! Node mode without a kernel: which configuration is in force, node
//! selectors, the report cadence, retries, where uprobe binaries resolve,
//! what the node budget lets load.

use super::*;

fn config(yaml: &str) -> AgentConfig {
    serde_yaml_ng::from_str(yaml).unwrap()
}

const CONFIG: &str = "
probes:
  - {namespace: a, probeset: p, spec: {name: all, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 10s}
  - {namespace: a, probeset: p, spec: {name: gpu, kind: runqueue}, nodeSelector: {gpu: 'true'}, ringBytes: 4096, sampleEvery: 1, reportInterval: 10s}
";

fn pushed(version: &str, yaml: &str) -> v1::Config {
    v1::Config {
        version: version.into(),
        agent_config_json: serde_json::to_string(&config(yaml)).unwrap(),
        thresholds: vec![],
    }
}

#[test]
fn a_pushed_configuration_is_in_force_until_the_file_changes() {
    let path = std::env::temp_dir().join(format!("rw-node-{}.yaml", std::process::id()));
    std::fs::write(&path, CONFIG).unwrap();
    let mut state = State::default();
    state.read_file(&path);
    assert_eq!(state.version(), "");
    assert_eq!(state.source.as_ref().unwrap().config.probes.len(), 2);

    let only_all = "probes: [{namespace: a, probeset: p, spec: {name: all, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}]";
    assert!(state.take_pushed(pushed("v1", only_all)));
    assert!(state.source.as_ref().unwrap().pushed);
    // The same version again changes nothing; nor does a file that
    // did not change since it was read.
    assert!(!state.take_pushed(pushed("v1", only_all)));
    state.read_file(&path);
    assert_eq!(state.version(), "v1");
    // A configuration that does not parse keeps the one in force.
    assert!(!state.take_pushed(v1::Config {
        version: "v2".into(),
        agent_config_json: "{not json".into(),
        thresholds: vec![],
    }));
    assert_eq!(state.version(), "v1");
    // Nor does one that parses but breaks the ProbeSet rules: a uprobe
    // on a kernel interface, a ring that is not a power of two.
    for bad in [
        only_all.replace(
            "{name: all, kind: syscalls}",
            "{name: all, kind: uprobe, uprobe: {binary: /dev/mem, symbol: x}}",
        ),
        only_all.replace("ringBytes: 4096", "ringBytes: 5000"),
    ] {
        let json = serde_json::to_string(&config(&bad)).unwrap();
        assert!(!state.take_pushed(v1::Config {
            version: "v3".into(),
            agent_config_json: json,
            thresholds: vec![],
        }));
        assert_eq!(state.version(), "v1", "{bad}");
    }
    // The file changing makes it the configuration again.
    std::fs::write(&path, format!("{CONFIG}\n# edited\n")).unwrap();
    state.read_file(&path);
    assert_eq!(state.version(), "");
    assert!(!state.source.as_ref().unwrap().pushed);
    // An invalid file keeps what is in force.
    std::fs::write(&path, "probes: [{").unwrap();
    state.read_file(&path);
    assert_eq!(state.source.as_ref().unwrap().config.probes.len(), 2);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_agent_reports_at_the_shortest_report_interval_of_its_probes() {
    let mut state = State::default();
    assert_eq!(
        state.report_interval(Duration::from_secs(10)),
        Duration::from_secs(10)
    );
    state.desired = config(CONFIG).probes;
    state.desired[1].report_interval = Duration::from_secs(2);
    assert_eq!(
        state.report_interval(Duration::from_secs(10)),
        Duration::from_secs(2)
    );
}

#[test]
fn node_selectors_pick_the_probes_of_this_node() {
    let c = config(CONFIG);
    let none = BTreeMap::new();
    let gpu = BTreeMap::from([("gpu".to_string(), "true".to_string())]);
    let ids = |v: Vec<&AgentProbe>| v.iter().map(|p| p.id()).collect::<Vec<_>>();
    assert_eq!(ids(probes_for_node(&c, &none)), ["a/p/all"]);
    assert_eq!(ids(probes_for_node(&c, &gpu)), ["a/p/all", "a/p/gpu"]);
}

#[test]
fn failed_probes_are_retried_with_exponential_backoff_up_to_a_cap() {
    let delays: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
}

#[test]
fn only_a_probesets_uprobes_resolve_in_its_pods_containers() {
    let probe = |ns: &str, scope: &str| -> AgentProbe {
        serde_yaml_ng::from_str(&format!(
            "{{namespace: '{ns}', probeset: p, spec: {{name: up, kind: uprobe, uprobe: \
             {{binary: /usr/bin/app, symbol: f}}}}, {scope}ringBytes: 4096, sampleEvery: 1, \
             reportInterval: 1s}}"
        ))
        .unwrap()
    };
    assert!(resolves_in_containers(&probe(
        "shop",
        "namespaces: [shop], "
    )));
    // A ClusterProbeSet's, with or without a namespaceSelector: the host.
    assert!(!resolves_in_containers(&probe("", "namespaces: [shop], ")));
    assert!(!resolves_in_containers(&probe("", "")));
    // Rendered before namespaces were enforced: the host, as then.
    assert!(!resolves_in_containers(&probe("shop", "")));
}

#[test]
fn the_node_budget_decides_what_loads_before_any_map_is_made() {
    let c = config(
        "probes:\n\
         - {namespace: a, probeset: p, spec: {name: sys, kind: syscalls, priority: 1}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n\
         - {namespace: b, probeset: q, spec: {name: sys, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n",
    );
    // No node budget (a configuration from before it): everything loads
    // as its ProbeSet planned it.
    let all = share_node_budget(c.probes.clone(), &c.namespace_limits, 0);
    assert_eq!(all.load, c.probes);
    assert!(all.refused.is_empty());
    assert!(all.planned_bytes > 2 * 4096, "maps and rings");
    // One byte: nothing fits, and each says why.
    let none = share_node_budget(c.probes.clone(), &c.namespace_limits, 1);
    assert!(none.load.is_empty());
    assert_eq!(none.planned_bytes, 0);
    assert_eq!(none.refused.len(), 2);
    let refused = none.refused;
    assert!(
        refused
            .iter()
            .all(|(_, why)| why.starts_with("not loaded: ")),
        "{refused:?}"
    );
}

#[test]
fn the_agent_enforces_the_namespace_limits_its_configuration_carries() {
    // Namespace a may not use uprobes and may run one probe; b has the
    // defaults. The agent applies them whatever the probes ask.
    let c = config(
        "namespaceLimits: {a: {maxProbes: 1, uprobes: false}}\n\
         probes:\n\
         - {namespace: a, probeset: p, spec: {name: sys, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n\
         - {namespace: a, probeset: p, spec: {name: rq, kind: runqueue}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n\
         - {namespace: a, probeset: u, spec: {name: fn, kind: uprobe, uprobe: {binary: /usr/bin/app, symbol: main}}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n\
         - {namespace: b, probeset: q, spec: {name: sys, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n",
    );
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let shared = share_node_budget(c.probes.clone(), &c.namespace_limits, 0);
    let loaded: Vec<(&str, &str)> = shared
        .load
        .iter()
        .map(|p| (p.namespace.as_str(), p.spec.name.as_str()))
        .collect();
    assert_eq!(loaded, [("a", "rq"), ("b", "sys")]);
    let refused: Vec<(&str, &str)> = shared
        .refused
        .iter()
        .map(|(p, why)| (p.spec.name.as_str(), why.as_str()))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|(n, why)| *n == "fn" && why.contains("does not allow uprobes"))
    );
    assert!(
        refused
            .iter()
            .any(|(n, why)| *n == "sys" && why.contains("may run 1 probes"))
    );
}
