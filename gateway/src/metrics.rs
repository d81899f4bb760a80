//! Gateway metrics (Prometheus).

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct GatewayMetrics {
    pub objects_written: Counter,
    pub bytes_written: Counter,
    pub bytes_read: Counter,
    pub chunks_written: Counter,
    pub chunks_staged: Counter,
    pub uploads_collected: Counter,
    pub orphan_chunks_collected: Counter,
    pub corrupt_chunks: Counter,
    pub objects_expired: Counter,
}

pub static METRICS: LazyLock<GatewayMetrics> = LazyLock::new(GatewayMetrics::default);

/// Adds the gateway metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "shale_gateway_objects_written",
        "Objects stored (PUT, copy, completed uploads)",
        m.objects_written.clone(),
    );
    registry.register(
        "shale_gateway_bytes_written",
        "Body bytes received and stored",
        m.bytes_written.clone(),
    );
    registry.register(
        "shale_gateway_corrupt_chunks",
        "Chunk reads whose leader copy failed its checksum (served from another replica)",
        m.corrupt_chunks.clone(),
    );
    registry.register(
        "shale_gateway_bytes_read",
        "Body bytes sent to clients",
        m.bytes_read.clone(),
    );
    registry.register(
        "shale_gateway_chunks_written",
        "Body chunks written to the cluster",
        m.chunks_written.clone(),
    );
    registry.register(
        "shale_gateway_chunks_staged",
        "Body chunks written by staging them on every replica and ingesting them (the rest went through the Raft log)",
        m.chunks_staged.clone(),
    );
    registry.register(
        "shale_gateway_objects_expired",
        "Objects deleted by their bucket's lifecycle rules",
        m.objects_expired.clone(),
    );
    registry.register(
        "shale_gateway_uploads_collected",
        "Abandoned multipart uploads aborted",
        m.uploads_collected.clone(),
    );
    registry.register(
        "shale_gateway_orphan_chunks_collected",
        "Chunks no object or part pointed at, deleted by the chunk sweep",
        m.orphan_chunks_collected.clone(),
    );
}
