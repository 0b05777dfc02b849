//! What one scrape of the agent's `/metrics` costs (BENCHMARKS.md), text
//! (classic histograms) against protobuf (native histograms), on the same
//! snapshots in the same run.
//!
//! `--probes P --series S --samples N --reps R`: P probes of S latency
//! series each, every series holding N latencies spread log-uniformly over
//! 1 µs .. 100 ms (most of the 544 kernel buckets in that range populated:
//! a busy series), encoded R times per format.

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
    time::Instant,
};

use ringwarden_core::histogram::Histogram;
use ringwarden_e2e::arg;
use ringwarden_node_agent::{
    metrics::{ProbeLabels, registry},
    probes::{Snapshot, ThresholdCount},
};

fn main() {
    let probes = arg("--probes", 8);
    let series = arg("--series", 64);
    let samples = arg("--samples", 10_000);
    let reps = arg("--reps", 200);
    // A fixed xorshift sequence: the same histograms on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut snapshots = Vec::new();
    for p in 0..probes {
        let mut snap = Snapshot::default();
        for s in 0..series {
            let mut h = Histogram::new();
            for _ in 0..samples {
                let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                // 10^3 .. 10^8 ns.
                h.record(10f64.powf(3.0 + 5.0 * u) as u64);
            }
            snap.series.insert(format!("series{s}"), h);
        }
        snap.thresholds.push(ThresholdCount {
            slo: format!("default/slo{p}"),
            good: samples,
            total: samples,
        });
        let labels = ProbeLabels {
            namespace: "default".into(),
            probeset: "bench".into(),
            probe: format!("probe{p}"),
            node: "node".into(),
        };
        snapshots.push((labels, snap));
    }
    let exposition = registry(Arc::new(Mutex::new(snapshots)));
    let populated: usize = {
        let text = exposition.text();
        text.lines()
            .filter(|l| l.starts_with("ringwarden_latency_seconds_bucket"))
            .count()
    };
    let time = |f: &dyn Fn() -> usize| {
        let bytes = f();
        let t0 = Instant::now();
        for _ in 0..reps {
            black_box(f());
        }
        (t0.elapsed().as_secs_f64() / reps as f64, bytes)
    };
    // Alternate the formats so that neither gets a quieter machine.
    let mut text = Vec::new();
    let mut proto = Vec::new();
    for _ in 0..5 {
        text.push(time(&|| exposition.text().len()));
        proto.push(time(&|| exposition.protobuf().len()));
    }
    let median = |v: &mut Vec<(f64, usize)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let (t, tb) = median(&mut text);
    let (p, pb) = median(&mut proto);
    println!(
        "{probes} probes x {series} series = {} latency series, {samples} latencies each ({populated} classic bucket lines)",
        probes * series
    );
    println!("text:     {:8.3} ms per scrape, {:9} bytes", t * 1e3, tb);
    println!(
        "protobuf: {:8.3} ms per scrape, {:9} bytes ({:.2}x the time, {:.2}x the bytes)",
        p * 1e3,
        pb,
        p / t,
        pb as f64 / tb as f64
    );
}
