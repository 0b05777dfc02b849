//! The delimited protobuf exposition (`io.prometheus.client.MetricFamily`,
//! each message preceded by its length), the one format in which Prometheus
//! scrapes native histograms, and the negotiation that picks it. No IO.

use std::collections::HashMap;

use prometheus::proto::{self as model, MetricType};
use ringwarden_core::{
    histogram::Histogram,
    native::{self, NativeHistogram},
};
use ringwarden_proto::prometheus as pb;

use prost::Message;

use super::{ProbeLabels, label_values_with_series};
use crate::probes::Snapshot;

/// Content type of the protobuf exposition.
pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// An exposition format the agent can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text format 0.0.4: classic histograms.
    Text,
    /// Delimited protobuf: native histograms.
    Protobuf,
}

/// The format an `Accept` header prefers among those the agent writes: the
/// acceptable media range with the highest `q`, protobuf on a tie (it is the
/// more specific). Text when there is no header or nothing matches, as
/// scrapers that send nothing expect.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut protobuf, mut text) = (0.0f64, 0.0f64);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut q, mut proto, mut encoding) = (1.0, None, None);
        for param in parts {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.parse().unwrap_or(0.0),
                "proto" => proto = Some(v.to_owned()),
                "encoding" => encoding = Some(v.to_owned()),
                _ => {}
            }
        }
        match media.as_str() {
            "application/vnd.google.protobuf"
                if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                    && encoding.as_deref() == Some("delimited") =>
            {
                protobuf = protobuf.max(q);
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if protobuf > 0.0 && protobuf >= text {
        Format::Protobuf
    } else {
        Format::Text
    }
}

/// Encodes `families` (the registry's, in its order), with the family
/// named `latency` rebuilt from `snapshots` as native histograms.
pub fn encode(
    families: &[model::MetricFamily],
    latency: &str,
    snapshots: &[(ProbeLabels, Snapshot)],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 * 1024);
    for family in families {
        let message = if family.name() == latency {
            native_family(family, snapshots)
        } else {
            convert(family)
        };
        // Encoding into a Vec only fails when it cannot grow.
        message
            .encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
    }
    buf
}

fn labels(pairs: &[model::LabelPair]) -> Vec<pb::LabelPair> {
    pairs
        .iter()
        .map(|p| pb::LabelPair {
            name: Some(p.name().to_owned()),
            value: Some(p.value().to_owned()),
        })
        .collect()
}

fn kind(t: MetricType) -> pb::MetricType {
    match t {
        MetricType::COUNTER => pb::MetricType::Counter,
        MetricType::GAUGE => pb::MetricType::Gauge,
        MetricType::SUMMARY => pb::MetricType::Summary,
        MetricType::UNTYPED => pb::MetricType::Untyped,
        MetricType::HISTOGRAM => pb::MetricType::Histogram,
    }
}

fn classic_buckets(h: &model::Histogram) -> Vec<pb::Bucket> {
    h.get_bucket()
        .iter()
        .map(|b| pb::Bucket {
            cumulative_count: Some(b.cumulative_count()),
            upper_bound: Some(b.upper_bound()),
            ..Default::default()
        })
        .collect()
}

/// The same family in Prometheus' own model.
fn convert(family: &model::MetricFamily) -> pb::MetricFamily {
    let t = family.get_field_type();
    let metric = family
        .get_metric()
        .iter()
        .map(|m| {
            let mut out = pb::Metric {
                label: labels(m.get_label()),
                timestamp_ms: (m.timestamp_ms() != 0).then(|| m.timestamp_ms()),
                ..Default::default()
            };
            match t {
                MetricType::COUNTER => {
                    out.counter = Some(pb::Counter {
                        value: Some(m.get_counter().get_value()),
                        ..Default::default()
                    })
                }
                MetricType::GAUGE => {
                    out.gauge = Some(pb::Gauge {
                        value: Some(m.get_gauge().get_value()),
                    })
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    out.summary = Some(pb::Summary {
                        sample_count: Some(s.sample_count()),
                        sample_sum: Some(s.sample_sum()),
                        quantile: s
                            .get_quantile()
                            .iter()
                            .map(|q| pb::Quantile {
                                quantile: Some(q.quantile()),
                                value: Some(q.value()),
                            })
                            .collect(),
                        ..Default::default()
                    })
                }
                MetricType::UNTYPED => {
                    #[allow(deprecated)] // the plain model keeps it for protobuf
                    let value = m.get_untyped().get_value();
                    out.untyped = Some(pb::Untyped { value: Some(value) })
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    out.histogram = Some(pb::Histogram {
                        sample_count: Some(h.get_sample_count()),
                        sample_sum: Some(h.get_sample_sum()),
                        bucket: classic_buckets(h),
                        ..Default::default()
                    })
                }
            }
            out
        })
        .collect();
    pb::MetricFamily {
        name: Some(family.name().to_owned()),
        help: Some(family.help().to_owned()),
        r#type: Some(kind(t) as i32),
        metric,
        unit: None,
    }
}

/// The latency family with a native histogram per series, at
/// [`native::SCHEMA`] on every node so that sums across nodes and clusters
/// stay exact. The gathered classic buckets ride along for scrapers that
/// keep both.
fn native_family(
    family: &model::MetricFamily,
    snapshots: &[(ProbeLabels, Snapshot)],
) -> pb::MetricFamily {
    let histograms: HashMap<Vec<&str>, &Histogram> = snapshots
        .iter()
        .flat_map(|(l, s)| {
            s.series.iter().map(move |(series, h)| {
                let key = label_values_with_series(l, series)
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
                (key, h)
            })
        })
        .collect();
    let metric = family
        .get_metric()
        .iter()
        .filter_map(|m| {
            let key: Vec<&str> = m.get_label().iter().map(|p| p.value()).collect();
            // Published after this family was gathered: left for the next
            // scrape rather than shown without its classic buckets.
            let h = histograms.get(&key)?;
            let n = NativeHistogram::from(*h);
            Some(pb::Metric {
                label: labels(m.get_label()),
                histogram: Some(pb::Histogram {
                    sample_count: Some(n.count),
                    sample_sum: Some(n.sum_seconds),
                    bucket: classic_buckets(m.get_histogram()),
                    schema: Some(native::SCHEMA),
                    zero_threshold: Some(native::ZERO_THRESHOLD),
                    zero_count: Some(n.zero_count),
                    positive_span: n
                        .spans
                        .iter()
                        .map(|s| pb::BucketSpan {
                            offset: Some(s.offset),
                            length: Some(s.length),
                        })
                        .collect(),
                    positive_delta: n.deltas,
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    pb::MetricFamily {
        name: Some(family.name().to_owned()),
        help: Some(family.help().to_owned()),
        r#type: Some(pb::MetricType::Histogram as i32),
        metric,
        unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_2_42: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

    #[test]
    fn a_scraper_that_prefers_protobuf_gets_protobuf() {
        assert_eq!(negotiate(Some(PROMETHEUS_2_42)), Format::Protobuf);
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited"
            )),
            Format::Protobuf
        );
    }

    #[test]
    fn text_is_served_without_a_header_for_text_or_anything_and_for_other_protobuf_forms() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
            )),
            Format::Text
        );
        // The text protobuf form and OpenMetrics are not written.
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"
            )),
            Format::Text
        );
    }
}
