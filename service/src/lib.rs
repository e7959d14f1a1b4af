//! Running a wardnet daemon as a service: systemd notification
//! (`notify`), the log formats for a terminal, the journal and JSON
//! (`logging`), config overrides (`config`), the stop signals
//! (`shutdown`), the generated man pages and completions (`docs`) and
//! TLS failures explained (`tls`). Shared by `wardnet-agent` and
//! `wardnet-controller`.

pub mod config;
pub mod docs;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod shutdown;
pub mod tls;
