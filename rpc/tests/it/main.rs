//! Integration tests of the QUIC transport: real endpoints on loopback.

mod transport;
