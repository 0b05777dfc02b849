//! What an agent (or anyone holding a token) can send on the stream:
//! arbitrary protobuf bytes, decoded into messages and then into the
//! operator's domain types. Never a panic; what is accepted stays within
//! the decoder's bounds.
//!
//! The decoder (`operator/src/ingest/decode.rs`) is pure and depends only
//! on core, ebpf-common and proto, so the very same file is compiled here:
//! the fuzz build stays free of the Kubernetes client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ringwarden_proto::v1;

#[allow(dead_code)]
#[path = "../../operator/src/ingest/decode.rs"]
mod decode;

fuzz_target!(|bytes: &[u8]| {
    // As the agent port reads them: the pre-scan first, prost only after.
    let scanned = decode::prescan(bytes);
    let Ok(message) = v1::AgentMessage::decode(bytes) else {
        return;
    };
    if scanned.is_err() {
        return;
    }
    if let Some(v1::agent_message::Message::Report(r)) = &message.message {
        // What passed the pre-scan decoded within its bounds.
        let series: usize = r.probes.iter().map(|p| p.histograms.len()).sum();
        assert!(r.probes.len() <= 2_048);
        assert!(series <= decode::MAX_MESSAGE_SERIES);
    }
    match message.message {
        Some(v1::agent_message::Message::Report(report)) => {
            if let Ok(sample) = decode::Sample::try_from(report) {
                for probe in &sample.probes {
                    for (_, h) in &probe.series {
                        // Arithmetic on what was accepted stays sound.
                        let mut merged = h.clone();
                        merged.merge(h);
                        assert_eq!(merged.count(), h.count().saturating_mul(2));
                        assert_eq!(merged.delta_since(h).count(), h.count());
                    }
                }
            }
        }
        Some(v1::agent_message::Message::Hello(hello)) => {
            let _ = decode::AgentInfo::try_from(hello);
        }
        _ => {}
    }
});
