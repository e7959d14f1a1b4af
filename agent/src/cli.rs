//! The `wardnet-agent` command line.

// A CLI prints its results.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wardnet_common::wire::EnrollRequest;
use wardnet_common::{Endpoint, PrivateKey};

use crate::client::ControllerClient;
use crate::config::Config;
use crate::state::{Enrolment, StateDir};
use crate::status::AgentStatus;

const DEFAULT_CONFIG: &str = "/etc/wardnet/agent.toml";

#[derive(Debug, Parser)]
#[command(
    name = "wardnet-agent",
    version,
    about = "wardnet site agent: brings this gateway's WireGuard tunnels up and keeps them in step with the controller",
    long_about = "The wardnet agent runs on a site's Linux gateway. `enroll` (once) generates the site's WireGuard key \
here and registers it with a one-time token from the NOC; `run` (the systemd service) brings the tunnels up \
from the controller's config, routes the site's traffic through them and keeps them up, also when the controller \
is unreachable; `status` shows the peers and the sync state. `wg show <interface>` works too."
)]
pub struct Cli {
    /// Config file (TOML). Keys can be overridden by WARDNET_* variables.
    #[arg(long, short, env = "WARDNET_AGENT_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate this site's key and enrol with a one-time token.
    Enroll {
        /// Controller URL, e.g. https://controller.example:8443
        #[arg(long)]
        controller: String,
        /// The one-time enrolment token from `wardnet-controller sites add` (or set WARDNET_ENROL_TOKEN).
        #[arg(long, env = "WARDNET_ENROL_TOKEN", hide_env_values = true)]
        token: String,
        /// CA certificate (PEM) that signed the controller's certificate.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// This gateway's reachable underlay endpoint IP:PORT (hubs need one).
        #[arg(long)]
        endpoint: Option<Endpoint>,
        /// Replace an existing enrolment (new key, new identity).
        #[arg(long)]
        force: bool,
        /// Accept a plain http:// controller URL (local tests only).
        #[arg(long)]
        allow_plain_http: bool,
    },
    /// Run the agent (what the systemd unit starts). SIGTERM stops it and
    /// removes the interface; SIGHUP re-reads the config file without
    /// touching the tunnels (`systemctl reload wardnet-agent`).
    Run,
    /// Show the peers, their health and the sync state of the running agent.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write shell completions (bash, zsh, fish) and the man page into DIR
    /// (used when building packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

pub use wardnet_service::docs::generate_docs;

pub async fn run(cli: Cli) -> Result<()> {
    crate::init_crypto();
    if let Command::GenerateDocs { dir } = &cli.command {
        use clap::CommandFactory;
        return generate_docs(Cli::command(), dir);
    }
    let explicit = cli.config.as_os_str() != DEFAULT_CONFIG;
    let config = Config::load(&cli.config, explicit, |k| std::env::var(k).ok())?;
    match cli.command {
        Command::Run => crate::logging::init(config.log_format),
        _ => crate::logging::init_cli(),
    }
    match cli.command {
        Command::Enroll {
            controller,
            token,
            ca_cert,
            endpoint,
            force,
            allow_plain_http,
        } => {
            enroll(
                &config,
                &controller,
                &token,
                ca_cert,
                endpoint,
                force,
                allow_plain_http,
            )
            .await
        }
        Command::Run => {
            let path = cli.config.clone();
            let reload = move || {
                Config::load(&path, explicit, |k| std::env::var(k).ok())
                    .map_err(anyhow::Error::from)
            };
            // Before anything is up: a stop right after READY=1 must be
            // a clean shutdown.
            let stop = wardnet_service::shutdown::on_signal()
                .context("failed to install the SIGTERM handler")?;
            let shutdown = async move {
                stop.await;
                tracing::info!("signal received; stopping");
            };
            crate::daemon::run(config, reload, shutdown).await
        }
        Command::Status { json } => status(&config, json).await,
        Command::GenerateDocs { .. } => Ok(()),
    }
}

async fn enroll(
    config: &Config,
    url: &str,
    token: &str,
    ca_cert: Option<PathBuf>,
    endpoint: Option<Endpoint>,
    force: bool,
    allow_plain_http: bool,
) -> Result<()> {
    let state = StateDir::new(&config.state_dir);
    state.check_fresh(force)?;
    let allow_plain_http = allow_plain_http || config.allow_plain_http;
    let ca_cert = ca_cert.or_else(|| config.ca_cert.clone());
    let client = ControllerClient::new(url, ca_cert.as_deref(), allow_plain_http)?;
    let key = PrivateKey::generate();
    let resp = client
        .enroll(&EnrollRequest {
            token: token.trim().to_owned(),
            public_key: key.public_key(),
            endpoint,
        })
        .await
        .context("enrolment failed")?;
    state.create()?;
    state.save_key(&key)?;
    state.clear_config()?;
    state.save_enrolment(&Enrolment {
        site: resp.site.clone(),
        region: resp.region.clone(),
        role: resp.role,
        addresses: resp.addresses.clone(),
        controller_url: url.trim_end_matches('/').to_owned(),
        credential: resp.credential,
        ca_cert: ca_cert.map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
        allow_plain_http,
    })?;
    let addrs: Vec<String> = resp.addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "enrolled as site {} ({}, region {})",
        resp.site, resp.role, resp.region
    );
    println!("overlay addresses: {}", addrs.join(", "));
    println!("public key: {}", key.public_key());
    println!("state written to {}", state.path().display());
    println!(
        "next: start the agent (`systemctl enable --now wardnet-agent`, or `wardnet-agent run`)"
    );
    Ok(())
}

async fn status(config: &Config, json: bool) -> Result<()> {
    let url = format!("http://{}/v1/status", config.metrics_listen);
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("the agent does not answer at {url}; is it running (`systemctl status wardnet-agent`)?"))?;
    if !resp.status().is_success() {
        anyhow::bail!("the agent answered {} at {url}", resp.status());
    }
    let st: AgentStatus = resp
        .json()
        .await
        .context("unexpected status answer from the agent")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", crate::status::render(&st));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn generates_completions_and_man_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_docs(Cli::command(), dir.path()).expect("generate");
        for f in [
            "wardnet-agent.bash",
            "_wardnet-agent",
            "wardnet-agent.fish",
            "wardnet-agent.1",
            "wardnet-agent-enroll.1",
        ] {
            let p = dir.path().join(f);
            let text = std::fs::read_to_string(&p).expect(f);
            assert!(text.contains("wardnet-agent"), "{f}");
        }
        assert!(!dir.path().join("wardnet-agent-generate-docs.1").exists());
    }
}
