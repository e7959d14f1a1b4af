//! wardnet controller: regions, sites, overlay addresses and the per-site
//! WireGuard configs agents long-poll for.

//!
//! Where to look (docs/design.md, "The controller"):
//! - [`pipeline`]: how a change becomes durable and visible (a job's `Tx`,
//!   `prepare`, the writer, following other replicas, waiting long-polls);
//! - [`ops`]: what admins and agents ask (sites, regions, organisations,
//!   tokens, policy, enrolment, long-polls);
//! - [`model`], [`ipam`], [`render`] and [`site_configs`]: the network in
//!   memory, address allocation, the full render (the specification) and
//!   the incremental per-site configs with their deltas;
//! - [`store`]: SQLite and PostgreSQL behind one trait, one row codec;
//! - [`api`] (HTTP), [`cli`], [`config`] (the TOML file), [`ca`].
//!
//! Modules other crates use (the binary, the tests, the benchmarks) are
//! `pub`; the rest are the crate's own.

pub mod api;
pub mod ca;
pub mod cli;
pub mod config;
pub(crate) mod error;
pub(crate) mod health;
pub mod ipam;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod ops;
pub(crate) mod pipeline;
pub mod render;
pub(crate) mod reports;
pub(crate) mod site_configs;
pub mod store;
pub(crate) mod wgquick;

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

pub use error::Error;
pub use ops::Actor;
pub use pipeline::{Clock, Controller, ServiceSettings, SystemClock};
pub use wardnet_service::{logging, notify};
