//! Types shared by the wardnet controller and agent: keys, names, network
//! newtypes and the `/v1` wire protocol. No I/O and no async runtime here, so
//! everything in this crate is testable as plain functions.

pub mod delta;
pub mod filter;
pub mod keys;
pub mod name;
pub mod net;
pub mod policy;
pub mod time;
pub mod token;
pub mod wire;

pub use keys::{PrivateKey, PublicKey};
pub use name::Name;
pub use net::Endpoint;
pub use wire::{PeerConfig, Role, SiteConfig};
