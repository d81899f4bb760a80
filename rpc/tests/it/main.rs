//! Integration tests of the QUIC transport: real endpoints on loopback.

mod tls_reload;
mod transport;
