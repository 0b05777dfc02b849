//! Compiles ringwarden.proto, and Prometheus' exposition model from
//! vendor/, with protox, a protobuf parser in Rust, so no system `protoc` is
//! needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(
        [
            "ringwarden.proto",
            "vendor/io/prometheus/client/metrics.proto",
        ],
        ["."],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The rpc `Connect` would clash with the generated
        // `AgentServiceClient::connect(endpoint)`; clients build a
        // `tonic::transport::Channel` and call `new(channel)` instead.
        .build_transport(false)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=ringwarden.proto");
    println!("cargo:rerun-if-changed=vendor");
    Ok(())
}
