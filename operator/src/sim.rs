//! A simulated agent: it keeps cumulative counters, histograms and exact
//! threshold counts as a real agent's kernel programs would, and speaks
//! the agent protocol over a real gRPC stream. Used by the multi-agent
//! tests and `bench-ingest`; also a compact reference of what an agent
//! sends. No kernel; talks to the operator when connected.

use std::collections::{BTreeMap, HashMap};

use ringwarden_core::accounting::Counters;
use ringwarden_ebpf_common::bucket_index;
use ringwarden_proto::v1::{
    self, AgentMessage, OperatorMessage, agent_message::Message as FromAgent,
    agent_service_client::AgentServiceClient, operator_message::Message as ToAgent,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming, metadata::MetadataValue, transport::Channel};

use crate::ingest::reports::ProbeRef;

/// One simulated probe.
#[derive(Clone, Debug)]
pub struct SimProbe {
    pub id: ProbeRef,
    pub counters: Counters,
    /// Per series, bucket index → count (cumulative).
    pub series: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Per series: sum, max and errors.
    pub totals: BTreeMap<String, (u64, u64, u64)>,
    /// Per SLO: (threshold id, latency bound in ns, good, total).
    pub exact: BTreeMap<String, (u64, u64, u64, u64)>,
    pub ring_bytes: u64,
    pub high_water: u64,
    pub load_error: Option<(v1::load_error::Kind, String)>,
}

impl SimProbe {
    pub fn new(id: ProbeRef) -> Self {
        Self {
            id,
            counters: Counters::default(),
            series: BTreeMap::new(),
            totals: BTreeMap::new(),
            exact: BTreeMap::new(),
            ring_bytes: 64 << 10,
            high_water: 0,
            load_error: None,
        }
    }

    /// Counts events of `series` with these latencies, as the kernel would:
    /// every event is observed and aggregated, every threshold counts it.
    pub fn observe(&mut self, series: &str, latencies_ns: &[u64]) {
        let n = latencies_ns.len() as u64;
        self.counters.observed += n;
        self.counters.aggregated += n;
        let buckets = self.series.entry(series.to_owned()).or_default();
        let totals = self.totals.entry(series.to_owned()).or_default();
        for &ns in latencies_ns {
            let i = u16::try_from(bucket_index(ns)).unwrap_or(u16::MAX);
            *buckets.entry(i).or_default() += 1;
            totals.0 = totals.0.saturating_add(ns);
            totals.1 = totals.1.max(ns);
            for (_, bound, good, total) in self.exact.values_mut() {
                *total += 1;
                if ns <= *bound {
                    *good += 1;
                }
            }
        }
    }

    /// Installs the thresholds of a pushed configuration: counts start at
    /// zero for a threshold that is new or changed, as in the kernel.
    fn install(&mut self, thresholds: &[(String, u64, u64)]) {
        let before = std::mem::take(&mut self.exact);
        for (slo, id, bound) in thresholds {
            let kept = before
                .get(slo)
                .filter(|(old, ..)| old == id)
                .copied()
                .unwrap_or((*id, *bound, 0, 0));
            self.exact.insert(slo.clone(), kept);
        }
    }

    fn report(&self) -> v1::ProbeReport {
        let c = &self.counters;
        v1::ProbeReport {
            id: Some(v1::ProbeId {
                namespace: self.id.namespace.clone(),
                probeset: self.id.probeset.clone(),
                probe: self.id.probe.clone(),
            }),
            counters: self.load_error.is_none().then_some(v1::Counters {
                observed: c.observed,
                aggregated: c.aggregated,
                sampled_out: c.sampled_out,
                pairing_dropped: c.pairing_dropped,
                exported: c.exported,
                delivered: c.delivered,
                ringbuf_dropped: c.ringbuf_dropped,
                start_map_full: c.start_map_full,
                series_folded: c.series_folded,
            }),
            ring_bytes: self.ring_bytes,
            ring_high_water_bytes: self.high_water,
            histograms: self
                .series
                .iter()
                .map(|(s, buckets)| {
                    let (sum_ns, max_ns, errors) = self.totals.get(s).copied().unwrap_or_default();
                    v1::SeriesHistogram {
                        series: s.clone(),
                        histogram: Some(v1::Histogram {
                            bucket_index: buckets.keys().map(|&i| u32::from(i)).collect(),
                            bucket_count: buckets.values().copied().collect(),
                            sum_ns,
                            max_ns,
                            errors,
                        }),
                    }
                })
                .collect(),
            thresholds: self
                .exact
                .iter()
                .map(|(slo, (id, _, good, total))| v1::ThresholdCount {
                    slo: slo.clone(),
                    threshold_id: *id,
                    good: *good,
                    total: *total,
                })
                .collect(),
            load_errors: self
                .load_error
                .iter()
                .map(|(kind, message)| v1::LoadError {
                    kind: (*kind).into(),
                    message: message.clone(),
                    verifier_log: String::new(),
                })
                .collect(),
            sample_every: 1,
            ..Default::default()
        }
    }
}

/// One simulated agent.
#[derive(Clone, Debug)]
pub struct SimAgent {
    pub node: String,
    pub boot_id: String,
    /// Number of the last report made.
    pub seq: u64,
    pub probes: Vec<SimProbe>,
    pub config_version: String,
}

impl SimAgent {
    pub fn new(node: &str, boot_id: &str, probes: Vec<ProbeRef>) -> Self {
        Self {
            node: node.into(),
            boot_id: boot_id.into(),
            seq: 0,
            probes: probes.into_iter().map(SimProbe::new).collect(),
            config_version: String::new(),
        }
    }

    /// The same node after an agent restart: new boot id, every counter
    /// from zero, numbering from 1.
    pub fn restarted(&self, boot_id: &str) -> Self {
        Self::new(
            &self.node,
            boot_id,
            self.probes.iter().map(|p| p.id.clone()).collect(),
        )
    }

    pub fn hello(&self) -> AgentMessage {
        AgentMessage {
            message: Some(FromAgent::Hello(v1::Hello {
                node_name: self.node.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                boot_id: self.boot_id.clone(),
                kernel_version: "6.18.0".into(),
                btf: true,
                ringbuf: true,
                page_size: 4096,
                possible_cpus: 2,
                config_version: self.config_version.clone(),
            })),
        }
    }

    /// The next report, numbered one higher, at `unix_millis`.
    pub fn report(&mut self, unix_millis: u64) -> v1::Report {
        self.seq += 1;
        v1::Report {
            boot_id: self.boot_id.clone(),
            seq: self.seq,
            unix_millis,
            config_version: self.config_version.clone(),
            probes: self.probes.iter().map(SimProbe::report).collect(),
        }
    }

    /// Applies a pushed configuration: its version, and its thresholds'
    /// ids and latency bounds.
    pub fn apply(&mut self, config: &v1::Config) {
        self.config_version.clone_from(&config.version);
        let ids: HashMap<&str, u64> = config
            .thresholds
            .iter()
            .map(|t| (t.slo.as_str(), t.threshold_id))
            .collect();
        let parsed: ringwarden_crds::AgentConfig =
            serde_json::from_str(&config.agent_config_json).unwrap_or_default();
        for probe in &mut self.probes {
            let thresholds: Vec<(String, u64, u64)> = parsed
                .probes
                .iter()
                .filter(|p| {
                    p.namespace == probe.id.namespace
                        && p.probeset == probe.id.probeset
                        && p.spec.name == probe.id.probe
                })
                .flat_map(|p| &p.thresholds)
                .map(|t| {
                    (
                        t.slo.clone(),
                        ids.get(t.slo.as_str()).copied().unwrap_or_default(),
                        t.latency_ns.unwrap_or(u64::MAX),
                    )
                })
                .collect();
            probe.install(&thresholds);
        }
    }
}

/// An open agent stream.
pub struct Connection {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<OperatorMessage>,
}

/// Opens a stream on `channel` with `token` (none: no authorization) and
/// says `hello`. Fails as the operator refuses.
pub async fn connect(
    channel: Channel,
    token: Option<&str>,
    hello: AgentMessage,
) -> Result<Connection, Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello)
        .await
        .map_err(|_| Status::internal("the request stream closed"))?;
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("the token is not valid metadata"))?;
        request
            .metadata_mut()
            .insert(ringwarden_proto::AUTHORIZATION, value);
    }
    let rx = AgentServiceClient::new(channel)
        .connect(request)
        .await?
        .into_inner();
    Ok(Connection { tx, rx })
}

impl Connection {
    /// Sends a message without waiting for an answer.
    pub async fn send(&self, message: AgentMessage) -> Result<(), Status> {
        self.tx
            .send(message)
            .await
            .map_err(|_| Status::unavailable("the stream closed"))
    }

    /// The next message from the operator; `None` when it ended the stream
    /// cleanly.
    pub async fn next(&mut self) -> Result<Option<OperatorMessage>, Status> {
        self.rx.message().await
    }

    /// Sends `report` and waits for its acknowledgement, applying any
    /// configuration pushed meanwhile to `agent`.
    pub async fn report(&mut self, agent: &mut SimAgent, report: v1::Report) -> Result<(), Status> {
        let seq = report.seq;
        self.send(AgentMessage {
            message: Some(FromAgent::Report(report)),
        })
        .await?;
        self.until_ack(agent, seq).await
    }

    /// Waits for the acknowledgement of `seq`, applying configurations.
    pub async fn until_ack(&mut self, agent: &mut SimAgent, seq: u64) -> Result<(), Status> {
        loop {
            match self.next().await? {
                Some(OperatorMessage {
                    message: Some(ToAgent::Ack(a)),
                }) if a.seq == seq => return Ok(()),
                Some(OperatorMessage {
                    message: Some(ToAgent::Config(c)),
                }) => agent.apply(&c),
                Some(_) => {}
                None => return Err(Status::unavailable("the operator ended the stream")),
            }
        }
    }

    /// Waits for a configuration and applies it.
    pub async fn until_config(&mut self, agent: &mut SimAgent) -> Result<(), Status> {
        loop {
            match self.next().await? {
                Some(OperatorMessage {
                    message: Some(ToAgent::Config(c)),
                }) => {
                    agent.apply(&c);
                    return Ok(());
                }
                Some(_) => {}
                None => return Err(Status::unavailable("the operator ended the stream")),
            }
        }
    }

    /// Closes the request side, as an agent going away does.
    pub fn close(self) {}
}
