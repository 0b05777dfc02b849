//! ringwarden's gRPC APIs, generated from `proto/ringwarden.proto`:
//! [`v1::agent_service_server`] / [`v1::agent_service_client`] for the
//! agent stream, [`v1::query_service_server`] / [`v1::query_service_client`]
//! for users. docs/protocol.md gives the rules; this crate adds the few
//! constants and functions both ends must agree on. [`prometheus`] is
//! Prometheus' own exposition model (`io.prometheus.client`), which the
//! agent's `/metrics` writes for native histograms. No IO.
#![forbid(unsafe_code)]

/// Package `ringwarden.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ringwarden.v1");
}

/// Package `io.prometheus.client`, from vendor/io/prometheus/client/metrics.proto:
/// `MetricFamily` and its parts, native-histogram fields included.
pub mod prometheus {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("io.prometheus.client");
}

/// Default port of the operator's agent service.
pub const AGENT_PORT: u16 = 9440;
/// Default port of the operator's query service (bound to loopback).
pub const QUERY_PORT: u16 = 9441;
/// Audience agents request for their projected service-account token, and
/// the operator requires in its TokenReview. A token for this audience is
/// refused by the API server itself, so a leaked one opens nothing else.
pub const TOKEN_AUDIENCE: &str = "ringwarden";
/// Metadata key carrying `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// Threshold id meaning "no threshold installed".
pub const NO_THRESHOLD: u64 = 0;

/// The id of an SLO threshold (`crds::Threshold`'s fields): a hash of
/// everything that changes what the kernel counts, so a changed threshold
/// gets a new id and its counts start anew. Never [`NO_THRESHOLD`].
///
/// Both ends compute it: the operator sends it in `Config.thresholds`, and
/// an agent running from the ConfigMap alone computes the same. FNV-1a:
/// stable across versions and platforms, and no collision resistance is
/// needed (ids are only compared for one SLO).
pub fn threshold_id(slo: &str, latency_ns: Option<u64>, errors: bool, series: &[String]) -> u64 {
    let mut h = Fnv::new();
    h.field(slo.as_bytes());
    match latency_ns {
        Some(ns) => h.field(&ns.to_le_bytes()),
        None => h.field(b"-"),
    }
    h.field(&[u8::from(errors)]);
    for s in series {
        h.field(s.as_bytes());
    }
    match h.0 {
        NO_THRESHOLD => 1,
        id => id,
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Hashes `bytes` with its length first, so field boundaries count.
    fn field(&mut self, bytes: &[u8]) {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn threshold_ids_change_with_anything_the_kernel_compares() {
        let series = vec!["read".to_string()];
        let base = threshold_id("shop/fast", Some(5_000_000), false, &series);
        assert_eq!(
            base,
            threshold_id("shop/fast", Some(5_000_000), false, &series)
        );
        for other in [
            threshold_id("shop/slow", Some(5_000_000), false, &series),
            threshold_id("shop/fast", Some(5_000_001), false, &series),
            threshold_id("shop/fast", None, true, &series),
            threshold_id("shop/fast", Some(5_000_000), false, &[]),
            threshold_id(
                "shop/fast",
                Some(5_000_000),
                false,
                &["rea".into(), "d".into()],
            ),
        ] {
            assert_ne!(other, base);
            assert_ne!(other, NO_THRESHOLD);
        }
    }

    #[test]
    fn threshold_ids_are_stable_across_versions() {
        // Agents and operators of different versions must agree; the value
        // was computed independently from the FNV-1a definition.
        assert_eq!(
            threshold_id("shop/fast", Some(5_000_000), false, &["read".into()]),
            0x93cd_d7dc_f800_ac49
        );
    }

    #[test]
    fn a_report_round_trips_through_the_wire_format() {
        let report = v1::AgentMessage {
            message: Some(v1::agent_message::Message::Report(v1::Report {
                boot_id: "b1".into(),
                seq: 7,
                probes: vec![v1::ProbeReport {
                    id: Some(v1::ProbeId {
                        namespace: "shop".into(),
                        probeset: "web".into(),
                        probe: "sys".into(),
                    }),
                    histograms: vec![v1::SeriesHistogram {
                        series: "read".into(),
                        histogram: Some(v1::Histogram {
                            bucket_index: vec![3, 40],
                            bucket_count: vec![1, 2],
                            ..Default::default()
                        }),
                    }],
                    load_errors: vec![v1::LoadError {
                        kind: v1::load_error::Kind::Verifier.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let bytes = report.encode_to_vec();
        assert_eq!(v1::AgentMessage::decode(bytes.as_slice()).unwrap(), report);
    }
}
