//! The S3 gateway: speaks S3 over HTTP (s3s) and keeps objects in the range cluster.
//! It holds no durable state of its own.

pub mod access;
pub mod checksum;
mod chunks;
pub mod conditions;
pub mod error;
pub mod gc;
pub mod keys;
pub mod layout;
pub mod lifecycle;
pub mod metrics;
pub mod objects;
pub mod s3;
pub mod server;
pub mod tls;

pub use chunks::write_chunk;
pub use server::{Gateway, GatewayConfig};
