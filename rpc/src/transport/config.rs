//! The transport's settings: limits, timeouts, packet sizes and the wire version offered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::certs::{WIRE_VERSION, WIRE_VERSION_OLDEST};
use crate::RpcError;

/// Transport limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TransportConfig {
    /// A request (connect, send, wait for the answer) fails after this long.
    pub request_timeout_ms: u64,
    /// Establishing a connection (QUIC + TLS handshake) fails after this long.
    pub connect_timeout_ms: u64,
    /// A connection with no traffic at all for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval, so a dead peer is noticed within the idle timeout.
    pub keep_alive_ms: u64,
    /// Most concurrent request streams one connection may have open (the in-flight bound).
    pub streams_per_connection_max: u32,
    /// A waiting request pings its peer once nothing was heard from it this long (0: never).
    pub probe_after_ms: u64,
    /// A ping unanswered this long declares the peer unresponsive.
    pub probe_timeout_ms: u64,
    /// An address that failed stays suspect this long (callers try others first).
    pub suspect_ms: u64,
    /// Largest UDP payload MTU discovery tries; it settles at what the path carries.
    /// QUIC's usual 1,452 fits plain Ethernet; raise it (to about 9,000) on links with
    /// jumbo frames, where fewer, larger packets cost less CPU per byte.
    pub mtu_bytes_max: u16,
    /// Kernel receive and send buffer asked for the endpoint's UDP socket (the kernel
    /// caps it at `net.core.rmem_max` / `wmem_max`). Datagrams that arrive while the
    /// receive buffer is full are dropped, and QUIC then resends and slows down.
    pub udp_buffer_bytes: usize,
    /// The newest wire version this node offers (default: this build's own). A
    /// connection speaks the newest version both sides offer, down to the oldest this
    /// build speaks. Set it to the previous version while a cluster moves to this build
    /// one node at a time, so that any node can still go back to the previous build;
    /// remove it once every node runs this one.
    pub wire_version: u8,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            request_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 1_000,
            streams_per_connection_max: 1_024,
            probe_after_ms: 250,
            probe_timeout_ms: 400,
            suspect_ms: 3_000,
            mtu_bytes_max: 1_452,
            udp_buffer_bytes: 4 << 20,
            wire_version: WIRE_VERSION,
        }
    }
}

impl TransportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("transport timeouts must be positive".into());
        }
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            return Err("keep-alive-ms must be positive and below idle-timeout-ms".into());
        }
        if self.probe_after_ms > 0 && self.probe_timeout_ms == 0 {
            return Err("probe-timeout-ms must be positive when probing".into());
        }
        if self.mtu_bytes_max < 1_200 {
            return Err("mtu-bytes-max must be at least 1200 (QUIC's minimum)".into());
        }
        if self.streams_per_connection_max == 0 {
            return Err("streams-per-connection-max must be positive".into());
        }
        if !(WIRE_VERSION_OLDEST..=WIRE_VERSION).contains(&self.wire_version) {
            return Err(format!(
                "wire-version {} is not one this build speaks ({WIRE_VERSION_OLDEST} to \
                 {WIRE_VERSION})",
                self.wire_version
            ));
        }
        Ok(())
    }

    /// The bound MTU discovery searches to on the connections of an endpoint bound to
    /// `local`: the configured one, or loopback's for a loopback endpoint (whose peers
    /// are all on loopback).
    pub(super) fn mtu_bound(&self, local: SocketAddr) -> u16 {
        if local.ip().is_loopback() {
            self.mtu_bytes_max.max(LOOPBACK_MTU_BYTES)
        } else {
            self.mtu_bytes_max
        }
    }

    pub(super) fn quinn_transport(
        &self,
        mtu_bound: u16,
    ) -> Result<Arc<quinn::TransportConfig>, RpcError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|e| RpcError::Tls(format!("idle timeout: {e}")))?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)));
        t.max_concurrent_bidi_streams(self.streams_per_connection_max.into());
        t.max_concurrent_uni_streams(64u32.into());
        // Room for a full frame in flight on a stream, and several on a connection.
        t.stream_receive_window((64u32 << 20).into());
        t.receive_window((256u32 << 20).into());
        t.send_window(256 << 20);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(mtu_bound);
        t.mtu_discovery_config(Some(mtu));
        Ok(Arc::new(t))
    }
}

/// Largest UDP payload MTU discovery looks for on a loopback endpoint: the loopback
/// interface carries 64 KiB datagrams (less the IP and UDP headers), and fewer, larger
/// packets cost much less CPU per byte in a local cluster (`shale dev`, tests).
const LOOPBACK_MTU_BYTES: u16 = 65_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_search_past_the_configured_mtu_bound() {
        let config = TransportConfig::default();
        let lan: SocketAddr = "10.0.0.7:7000".parse().unwrap();
        assert_eq!(config.mtu_bound(lan), 1_452);
        assert_eq!(config.mtu_bound("0.0.0.0:0".parse().unwrap()), 1_452);
        assert_eq!(config.mtu_bound("127.0.0.3:7000".parse().unwrap()), 65_000);
        assert_eq!(config.mtu_bound("[::1]:7000".parse().unwrap()), 65_000);
        let jumbo = TransportConfig {
            mtu_bytes_max: 9_000,
            ..config
        };
        assert_eq!(jumbo.mtu_bound(lan), 9_000);
    }
}
