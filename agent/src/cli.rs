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
use crate::state_dir::{Enrolment, StateDir};
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
    Enroll(EnrollArgs),
    /// Run the agent (what the systemd unit starts). SIGTERM stops it and
    /// removes the interface; SIGHUP re-reads the config file without
    /// touching the tunnels (`systemctl reload wardnet-agent`).
    Run,
    /// Show the peers, their health and the sync state of the running agent.
    Status {
        #[command(flatten)]
        output: OutputArg,
        /// The same as `-o json` (kept for scripts written against 0.1).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    /// `wardnet-agent completion bash > /etc/bash_completion.d/wardnet-agent`
    /// (the package installs them already).
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: wardnet_service::docs::Shell,
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

/// `wardnet-agent enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// Controller URL, e.g. https://controller.example:8443. Repeat it for
    /// replicas: the first that answers enrols the site. Default: the
    /// `[controller] urls` (or `url`) of the agent's config.
    #[arg(long)]
    controller: Vec<String>,
    /// The one-time enrolment token from `wardnet-controller sites add`.
    /// Prefer --token-file or the WARDNET_ENROL_TOKEN variable: a command
    /// line is visible to every local user (`ps`).
    #[arg(
        long,
        env = "WARDNET_ENROL_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from this file, or from standard input with `-`
    /// (paste it, then press Enter).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
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
    #[command(flatten)]
    output: OutputArg,
}

/// `-o table|json`, as on every wardnet command that prints a result.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OutputArg {
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// Pretty-printed JSON for scripts.
    Json,
}

/// The enrolment token from --token / WARDNET_ENROL_TOKEN, or from a file or
/// standard input (`--token-file -`).
fn read_token(token: Option<String>, file: Option<PathBuf>) -> Result<String> {
    let raw = match (token, file) {
        (Some(t), _) => t,
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("failed to read the token from standard input")?;
            line
        }
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read the token file {}", path.display()))?,
        (None, None) => anyhow::bail!(
            "no enrolment token: pass --token-file FILE (or - for standard input), or set WARDNET_ENROL_TOKEN"
        ),
    };
    let token = raw.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("the enrolment token is empty");
    }
    Ok(token)
}

pub async fn run(cli: Cli) -> Result<()> {
    crate::init_crypto();
    if let Command::GenerateDocs { dir } = &cli.command {
        use clap::CommandFactory;
        return generate_docs(Cli::command(), dir);
    }
    if let Command::Completion { shell } = &cli.command {
        use clap::CommandFactory;
        wardnet_service::docs::print_completion(Cli::command(), *shell);
        return Ok(());
    }
    let explicit = cli.config.as_os_str() != DEFAULT_CONFIG;
    let config = Config::load(&cli.config, explicit, |k| std::env::var(k).ok())?;
    match cli.command {
        Command::Run => crate::logging::init(config.log_format),
        _ => crate::logging::init_cli(),
    }
    match cli.command {
        Command::Enroll(args) => enroll(&config, &cli.config, args).await,
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
        Command::Status { output, json } => {
            let output = if json { Output::Json } else { output.output };
            status(&config, output).await
        }
        Command::GenerateDocs { .. } | Command::Completion { .. } => Ok(()),
    }
}

async fn enroll(config: &Config, config_path: &std::path::Path, args: EnrollArgs) -> Result<()> {
    let EnrollArgs {
        controller: url,
        token,
        token_file,
        ca_cert,
        endpoint,
        force,
        allow_plain_http,
        output,
    } = args;
    let token = read_token(token, token_file)?;
    let output = output.output;
    let urls = if url.is_empty() {
        config.controller_urls.clone()
    } else {
        url
    };
    if urls.is_empty() {
        anyhow::bail!(
            "no controller to enrol with: pass --controller URL (repeat it for replicas), \
             or set [controller] urls in {}",
            config_path.display()
        );
    }
    let state = StateDir::new(&config.state_dir);
    state.check_fresh(force)?;
    let allow_plain_http = allow_plain_http || config.allow_plain_http;
    let ca_cert = ca_cert.or_else(|| config.ca_cert.clone());
    let client = ControllerClient::with_urls(&urls, ca_cert.as_deref(), allow_plain_http)?;
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
        // The controller that answered (the agent's config may list more).
        controller_url: client.url().trim_end_matches('/').to_owned(),
        credential: resp.credential,
        ca_cert: ca_cert.map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
        allow_plain_http,
    })?;
    let addrs: Vec<String> = resp.addresses.iter().map(|a| a.to_string()).collect();
    if output == Output::Json {
        let v = serde_json::json!({
            "site": resp.site,
            "region": resp.region,
            "role": resp.role,
            "addresses": addrs,
            "public_key": key.public_key(),
            "state_dir": state.path(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
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

async fn status(config: &Config, output: Output) -> Result<()> {
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
    if output == Output::Json {
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
        let dangling =
            wardnet_service::docs::dangling_references(dir.path(), "wardnet-agent").expect("read");
        assert!(dangling.is_empty(), "{dangling:?}");
        let enroll =
            std::fs::read_to_string(dir.path().join("wardnet-agent-enroll.1")).expect("enroll");
        assert!(
            enroll.contains("token\\-file"),
            "enroll documents --token-file"
        );
    }

    #[test]
    fn status_and_enroll_take_output_json() {
        for args in [
            &["wardnet-agent", "status", "-o", "json"][..],
            &["wardnet-agent", "status", "--output", "table"],
            &[
                "wardnet-agent",
                "enroll",
                "--controller",
                "https://c",
                "--token-file",
                "-",
                "-o",
                "json",
            ],
            // Replicas: each URL once.
            &[
                "wardnet-agent",
                "enroll",
                "--controller",
                "https://a",
                "--controller",
                "https://b",
                "--token-file",
                "-",
            ],
            // None: the config's [controller] urls.
            &["wardnet-agent", "enroll", "--token-file", "-"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["wardnet-agent", "status", "-o", "yaml"]).is_err());
    }

    #[test]
    fn the_token_can_come_from_standard_input_or_a_file_but_is_required() {
        let e = Cli::try_parse_from(["wardnet-agent", "enroll", "--controller", "https://c"]);
        // Without WARDNET_ENROL_TOKEN in the environment the token is missing.
        if std::env::var_os("WARDNET_ENROL_TOKEN").is_none() {
            assert!(e.is_err());
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "wne_abc\n").expect("write");
        assert_eq!(read_token(None, Some(f)).expect("file"), "wne_abc");
        assert!(read_token(Some("  ".into()), None).is_err());
    }

    #[test]
    fn every_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(sub.get_about().is_some(), "{}", sub.get_name());
            for a in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                assert!(
                    a.get_help().is_some(),
                    "`{}` argument {} has no help",
                    sub.get_name(),
                    a.get_id()
                );
            }
        }
    }
}
