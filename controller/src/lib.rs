//! wardnet controller: regions, sites, overlay addresses and the per-site
//! WireGuard configs agents long-poll for.

pub mod api;
pub mod ca;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod ipam;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod render;
pub mod reports;
pub mod site_configs;
pub mod store;
pub mod wgquick;

/// Unix time now, in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Select rustls' crypto provider (ring) for this process, once. Every TLS
/// client and server of the controller binary relies on it.
pub fn init_crypto() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use ops::{Actor, AgentIdentity};
pub use pipeline::{Clock, Controller, ServiceSettings, SystemClock};
pub use wardnet_service::{logging, notify};
