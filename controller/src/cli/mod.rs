//! The `wardnet-controller` command line: `serve`, the local bootstrap of
//! the first admin token, and the admin commands that call the REST API.

// A CLI prints its results.
#![allow(clippy::print_stdout)]

mod client;
mod table;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use wardnet_common::policy::{
    CheckAnswer, CreateRule, PolicyView, PortRange, Proto, RuleView, Service, ServiceView,
    SharedWith, Source, Target,
};
use wardnet_common::wire::{
    AuditEntry, CreateOrg, CreateRegion, CreateSite, FileSdGroup, FleetHealth, OrgView, RegionView,
    SiteCreated, SiteState, SiteView, StatusSummary, UpdateSite,
};
use wardnet_common::{Endpoint, Name, PublicKey, Role};

pub use client::{ApiClient, ClientError};
use table::Table;

#[derive(Debug, Parser)]
#[command(
    name = "wardnet-controller",
    version,
    about = "wardnet controller: regions, sites, overlay addresses and WireGuard configs for a network of sites",
    long_about = "The wardnet controller allocates overlay addresses to sites and hands each site's agent the \
WireGuard peers it should run (hub-and-spoke by region). `serve` runs the controller; the other commands \
administer a running controller through its REST API (set WARDNET_URL and WARDNET_TOKEN)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (REST API, long-poll config distribution, metrics).
    Serve {
        /// Config file (TOML); keys can be overridden by WARDNET_* variables.
        #[arg(
            long,
            short,
            env = "WARDNET_CONFIG",
            default_value = "/etc/wardnet/controller.toml"
        )]
        config: PathBuf,
    },
    /// A private CA for a pilot without a PKI (run on the controller host).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print a shell completion script, e.g.
    /// `wardnet-controller completion bash > /etc/bash_completion.d/wardnet-controller`
    /// (the packages install them already).
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: wardnet_service::docs::Shell,
    },
    /// Write shell completions (bash, zsh, fish) and man pages into DIR
    /// (used when building packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Create an admin API token directly in the store (bootstrap; run on the controller host).
    #[command(name = "admin-token")]
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Manage organisations (trusts, practices, services): every site
    /// belongs to one, and an admin token may be scoped to one.
    Orgs {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// The policy between organisations: rules, services, and who may
    /// reach whom (`policy check`).
    Policy {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage regions (groups of sites around their hubs).
    Regions {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: RegionsCommand,
    },
    /// Manage sites (gateways): add, enrolment tokens, revoke, export.
    Sites {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: SitesCommand,
    },
    /// Show the audit log of admin changes, newest first.
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Prometheus integration.
    Prometheus {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: PrometheusCommand,
    },
    /// Fleet summary: sites by state and role, agents online, pending configs.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a private CA (ca.crt, ca.key) and a server certificate signed
    /// by it (controller.crt with the chain, controller.key) in DIR. Keys are
    /// written 0600. Give agents ca.crt (`wardnet-agent enroll --ca-cert`);
    /// keep ca.key offline or at least root-only.
    Init {
        /// Directory for the four files (created if missing).
        #[arg(long, default_value = "/etc/wardnet/tls")]
        dir: PathBuf,
        /// DNS name or IP address agents use in the controller URL
        /// (repeat for several; the certificate is valid for each).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Validity of the server certificate in days (the CA: twice that).
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace existing files (a new CA: every agent needs the new ca.crt).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: OutputArg,
    },
}

pub use wardnet_service::docs::generate_docs;

#[derive(Debug, Subcommand)]
pub enum PrometheusCommand {
    /// List every agent's metrics endpoint (its overlay address unless the
    /// agent advertises another), labelled site, site_region and site_role.
    /// `-o json` prints a Prometheus file_sd target list; `--out FILE`
    /// writes one for a `file_sd_configs` entry (run it from cron), or point
    /// `http_sd_configs` at `GET /v1/prometheus/targets` instead.
    Targets {
        /// Write the file_sd JSON to this file (atomically: a temporary
        /// file, then rename) instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create a token and print it once.
    Create {
        /// The controller's config file (the token goes into its store).
        #[arg(
            long,
            short,
            env = "WARDNET_CONFIG",
            default_value = "/etc/wardnet/controller.toml"
        )]
        config: PathBuf,
        /// Who or what the token is for (shown in the audit log by its id).
        #[arg(long, default_value = "bootstrap")]
        description: String,
        /// Scope the token to this organisation: it sees and changes only
        /// that organisation's sites (others answer 404). Without it the
        /// token is network-wide.
        #[arg(long)]
        org: Option<Name>,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List the rules and services (a scoped token: its own, and the
    /// services shared with it).
    List,
    /// Show one rule (by number) or service (by name).
    Show {
        /// A rule's number or a service's name.
        what: String,
    },
    /// Would traffic from site FROM to site TO be allowed, and what decides?
    Check {
        /// The site the traffic comes from.
        from: Name,
        /// The site it goes to.
        to: Name,
        /// The protocol.
        #[arg(long, value_parser = check_proto_parser())]
        proto: Proto,
        /// The destination port (tcp and udp).
        #[arg(long)]
        port: Option<u16>,
        /// The address at TO (one of its own or LAN addresses), where a
        /// service listens on part of the site.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
    },
    /// Add a rule admitting traffic into an organisation, a site or a
    /// service (a scoped token: into its own).
    AddRule {
        /// Where from: all, org:NAME, region:NAME or site:NAME.
        #[arg(long)]
        from: Source,
        /// Where to: org:NAME, site:NAME or service:NAME.
        #[arg(long)]
        to: Target,
        /// The protocol.
        #[arg(long, default_value = "any", value_parser = proto_parser())]
        proto: Proto,
        /// A port or range (tcp and udp; repeatable; none: every port).
        #[arg(long = "port")]
        ports: Vec<PortRange>,
        /// Why the rule exists, for people.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a rule by its number.
    DeleteRule {
        /// The rule's number (`policy list`).
        id: u64,
    },
    /// Publish a service: a site, or prefixes and ports behind it, shared
    /// with all organisations or with listed ones.
    AddService {
        /// Service name: lower-case letters, digits and dashes.
        name: Name,
        /// The site it is behind (one of the token's).
        #[arg(long)]
        site: Name,
        /// Where it listens, within the site's addresses or LAN prefixes
        /// (repeatable; none: the whole site).
        #[arg(long = "prefix", value_parser = parse_prefix)]
        prefixes: Vec<IpNet>,
        /// The protocol.
        #[arg(long, default_value = "any", value_parser = proto_parser())]
        proto: Proto,
        /// A port or range (tcp and udp; repeatable; none: every port).
        #[arg(long = "port")]
        ports: Vec<PortRange>,
        /// Who may reach it: `all`, or an organisation (repeatable).
        #[arg(long = "shared-with", required = true)]
        shared_with: Vec<String>,
        /// What it is, for people.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Withdraw a service.
    DeleteService {
        /// The service's name.
        name: Name,
    },
}

fn proto_parser() -> impl clap::builder::TypedValueParser<Value = Proto> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["any", "tcp", "udp", "icmp"])
        .try_map(|s| s.parse::<Proto>())
}

fn check_proto_parser() -> impl clap::builder::TypedValueParser<Value = Proto> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["tcp", "udp", "icmp"]).try_map(|s| s.parse::<Proto>())
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organisation (a network-wide token only).
    Add {
        /// Organisation name: lower-case letters, digits and dashes (e.g. leeds-teaching-hospitals).
        name: Name,
        /// Who it is, for people.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the organisations (a scoped token: its own).
    List,
    /// Show one organisation.
    Show {
        /// Organisation name.
        name: Name,
    },
    /// Delete an organisation without sites or admin tokens.
    Delete {
        /// Organisation name.
        name: Name,
    },
}

/// `-o table|json`, the same on every command that prints a result.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArg {
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Controller URL, e.g. https://controller.example:8443
    #[arg(
        long,
        env = "WARDNET_URL",
        global = true,
        default_value = "https://127.0.0.1:8443"
    )]
    pub url: String,
    /// Admin API token (prefer the WARDNET_TOKEN variable: command lines are visible to other users).
    #[arg(long, env = "WARDNET_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify the controller with, instead of the system roots.
    #[arg(long, env = "WARDNET_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Output format: a table for people, JSON for scripts.
    #[arg(long, short, value_enum, global = true, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// Pretty-printed JSON for scripts (the API's own objects).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// Create a region; its overlay block is allocated automatically.
    Add {
        /// Region name: lower-case letters, digits and dashes (e.g. north).
        name: Name,
        /// Spokes of this region also peer directly with each other
        /// (their own tunnels, not through the hub).
        #[arg(long)]
        mesh: bool,
    },
    /// List every region with its overlay blocks and number of sites.
    List,
    /// Show one region.
    Show {
        /// Region name.
        name: Name,
    },
    /// Delete an empty region (delete its sites first).
    Delete {
        /// Region name.
        name: Name,
    },
}

#[derive(Debug, Subcommand)]
pub enum SitesCommand {
    /// Add a site. Prints a one-time enrolment token for its agent, or, with
    /// --public-key, creates an agentless appliance site (see `sites export`).
    Add {
        /// Site name: lower-case letters, digits and dashes (e.g. gp-leeds-17).
        name: Name,
        /// The region the site belongs to (`regions list`).
        #[arg(long)]
        region: Name,
        /// `hub`: the region's aggregation point, reachable at --endpoint;
        /// `spoke`: a site behind it.
        #[arg(long, value_parser = role_parser())]
        role: Role,
        /// A LAN prefix behind the gateway (repeatable); it must lie
        /// inside the controller's network.routed_prefixes.
        #[arg(long = "lan", value_parser = parse_prefix)]
        lan: Vec<IpNet>,
        /// Reachable underlay endpoint IP:PORT (required for hubs).
        #[arg(long)]
        endpoint: Option<Endpoint>,
        /// For an agentless appliance: its WireGuard public key.
        #[arg(long)]
        public_key: Option<PublicKey>,
        /// The organisation the site belongs to (`orgs list`); by default
        /// the token's own, or `default` with a network-wide token.
        #[arg(long)]
        org: Option<Name>,
    },
    /// List sites with their addresses, state and link health.
    List {
        /// Only the sites of this region.
        #[arg(long)]
        region: Option<Name>,
        /// Only sites in this state (pending: not enrolled yet).
        #[arg(long, value_parser = state_parser())]
        state: Option<SiteState>,
    },
    /// Show one site: addresses, keys, revisions and link health.
    Show {
        /// Site name.
        name: Name,
    },
    /// Change a site's LAN prefixes or endpoint.
    Update {
        /// Site name.
        name: Name,
        /// Replace the LAN prefixes (repeatable; --lan none clears them).
        #[arg(long = "lan")]
        lan: Vec<String>,
        /// New reachable underlay endpoint IP:PORT.
        #[arg(long, conflicts_with = "clear_endpoint")]
        endpoint: Option<Endpoint>,
        /// Remove the endpoint (spokes only: a hub needs one).
        #[arg(long)]
        clear_endpoint: bool,
    },
    /// Revoke a site: its credential stops working and every peer drops it.
    Revoke {
        /// Site name.
        name: Name,
    },
    /// Delete a site and free its addresses.
    Delete {
        /// Site name.
        name: Name,
    },
    /// Issue a new one-time enrolment token (replaced gateway, key rotation).
    Token {
        /// Site name.
        name: Name,
    },
    /// Print a wg-quick config for an agentless site (with -o json: the
    /// site name and the config text).
    Export {
        /// Site name (an agentless site, added with --public-key).
        name: Name,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["hub", "spoke"]).try_map(|s| s.parse::<Role>())
}

fn state_parser() -> impl clap::builder::TypedValueParser<Value = SiteState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["pending", "active", "revoked"])
        .try_map(|s| s.parse::<SiteState>())
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    wardnet_common::net::parse_prefix(s)
}

/// Run an admin command against the API.
pub async fn run_client(command: Command) -> Result<()> {
    match command {
        Command::Orgs { api, command } => orgs(&api, command).await,
        Command::Policy { api, command } => policy(&api, command).await,
        Command::Regions { api, command } => regions(&api, command).await,
        Command::Sites { api, command } => sites(&api, command).await,
        Command::Prometheus { api, command } => prometheus(&api, command).await,
        Command::Audit { api, limit } => {
            let c = ApiClient::new(&api)?;
            let entries: Vec<AuditEntry> = c.get(&format!("/v1/audit?limit={limit}")).await?;
            print_out(api.output, &entries, || {
                let mut t = Table::new(&["ID", "TIME", "ACTOR", "ACTION", "OBJECT", "DETAIL"]);
                for e in &entries {
                    t.row(vec![
                        e.id.to_string(),
                        table::time(Some(e.at)),
                        e.actor.clone(),
                        e.action.clone(),
                        e.object.clone(),
                        e.detail.clone().unwrap_or_default(),
                    ]);
                }
                t
            })
        }
        Command::Status { api } => {
            let c = ApiClient::new(&api)?;
            let s: StatusSummary = c.get("/v1/status").await?;
            print_out(api.output, &s, || {
                let mut t = Table::new(&["WHAT", "COUNT"]);
                for (k, v) in [
                    ("regions", s.regions),
                    ("sites pending", s.sites_pending),
                    ("sites active", s.sites_active),
                    ("sites revoked", s.sites_revoked),
                    ("hubs", s.hubs),
                    ("spokes", s.spokes),
                    ("agents online", s.agents_online),
                    ("configs pending delivery", s.configs_pending_delivery),
                    ("long-poll waiters", s.long_poll_waiters),
                ] {
                    t.row(vec![k.to_owned(), v.to_string()]);
                }
                t
            })
        }
        Command::Serve { .. }
        | Command::AdminToken { .. }
        | Command::Ca { .. }
        | Command::Completion { .. }
        | Command::GenerateDocs { .. } => unreachable!("handled by main"),
    }
}

async fn policy(api: &ApiArgs, command: PolicyCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        PolicyCommand::List => {
            let p: PolicyView = c.get("/v1/policy").await?;
            print_out(api.output, &p, || table::policy(&p.rules, &p.services))
        }
        PolicyCommand::Show { what } => {
            if let Ok(id) = what.parse::<u64>() {
                let r: RuleView = c.get(&format!("/v1/policy/rules/{id}")).await?;
                print_out(api.output, &r, || {
                    table::policy(std::slice::from_ref(&r), &[])
                })
            } else {
                let name: Name = what.parse().map_err(|_| {
                    anyhow::anyhow!("{what:?} is neither a rule's number nor a service's name")
                })?;
                let s: ServiceView = c.get(&format!("/v1/policy/services/{name}")).await?;
                print_out(api.output, &s, || {
                    table::policy(&[], std::slice::from_ref(&s))
                })
            }
        }
        PolicyCommand::Check {
            from,
            to,
            proto,
            port,
            address,
        } => {
            let mut q = format!("/v1/policy/check?from={from}&to={to}&proto={proto}");
            if let Some(p) = port {
                q.push_str(&format!("&port={p}"));
            }
            if let Some(a) = address {
                q.push_str(&format!("&address={a}"));
            }
            let a: CheckAnswer = c.get(&q).await?;
            print_out(api.output, &a, || {
                let mut t =
                    Table::new(&["FROM", "TO", "TRAFFIC", "ANSWER", "DECIDED BY", "ENFORCED"]);
                let traffic = match port {
                    Some(p) => format!("{proto}/{p}"),
                    None => proto.to_string(),
                };
                t.row(vec![
                    from.to_string(),
                    to.to_string(),
                    traffic,
                    if a.allow { "allow" } else { "deny" }.into(),
                    a.because.clone(),
                    if a.enforced {
                        "yes"
                    } else {
                        "no (not filtered there)"
                    }
                    .into(),
                ]);
                t
            })
        }
        PolicyCommand::AddRule {
            from,
            to,
            proto,
            ports,
            description,
        } => {
            let req = CreateRule {
                from,
                to,
                proto,
                ports,
                description,
            };
            let r: RuleView = c.post("/v1/policy/rules", &req).await?;
            print_out(api.output, &r, || {
                table::policy(std::slice::from_ref(&r), &[])
            })
        }
        PolicyCommand::DeleteRule { id } => {
            c.delete(&format!("/v1/policy/rules/{id}")).await?;
            let done = serde_json::json!({"kind": "rule", "id": id});
            print_out(api.output, &done, || {
                let mut t = Table::new(&["DELETED"]);
                t.row(vec![format!("rule {id}")]);
                t
            })
        }
        PolicyCommand::AddService {
            name,
            site,
            prefixes,
            proto,
            ports,
            shared_with,
            description,
        } => {
            let shared_with = if shared_with.iter().any(|s| s == "all") {
                SharedWith::All
            } else {
                SharedWith::Orgs(
                    shared_with
                        .iter()
                        .map(|s| {
                            s.parse::<Name>()
                                .map_err(|e| anyhow::anyhow!("--shared-with {s:?}: {}", e.0))
                        })
                        .collect::<Result<_>>()?,
                )
            };
            let req = Service {
                name,
                site,
                prefixes: prefixes.into_iter().collect(),
                proto,
                ports,
                shared_with,
                description,
            };
            let s: ServiceView = c.post("/v1/policy/services", &req).await?;
            print_out(api.output, &s, || {
                table::policy(&[], std::slice::from_ref(&s))
            })
        }
        PolicyCommand::DeleteService { name } => {
            c.delete(&format!("/v1/policy/services/{name}")).await?;
            let done = Deleted {
                kind: "service",
                name,
            };
            print_out(api.output, &done, || done.table())
        }
    }
}

async fn orgs(api: &ApiArgs, command: OrgsCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        OrgsCommand::Add { name, description } => {
            let o: OrgView = c.post("/v1/orgs", &CreateOrg { name, description }).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::List => {
            let os: Vec<OrgView> = c.get("/v1/orgs").await?;
            print_orgs(api.output, &os, true)
        }
        OrgsCommand::Show { name } => {
            let o: OrgView = c.get(&format!("/v1/orgs/{name}")).await?;
            print_orgs(api.output, &[o], false)
        }
        OrgsCommand::Delete { name } => {
            c.delete(&format!("/v1/orgs/{name}")).await?;
            let done = Deleted {
                kind: "organisation",
                name,
            };
            print_out(api.output, &done, || done.table())
        }
    }
}

fn print_orgs(output: Output, os: &[OrgView], list: bool) -> Result<()> {
    let json: &dyn erased::Json = if list { &os } else { &os[0] };
    print_out(output, json, || {
        let mut t = Table::new(&["ORGANISATION", "SITES", "CREATED", "DESCRIPTION"]);
        for o in os {
            t.row(vec![
                o.name.to_string(),
                o.sites.to_string(),
                table::time(Some(o.created_at)),
                o.description.clone(),
            ]);
        }
        t
    })
}

async fn regions(api: &ApiArgs, command: RegionsCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        RegionsCommand::Add { name, mesh } => {
            let r: RegionView = c.post("/v1/regions", &CreateRegion { name, mesh }).await?;
            print_regions(api.output, &[r], false)
        }
        RegionsCommand::List => {
            let rs: Vec<RegionView> = c.get("/v1/regions").await?;
            print_regions(api.output, &rs, true)
        }
        RegionsCommand::Show { name } => {
            let r: RegionView = c.get(&format!("/v1/regions/{name}")).await?;
            print_regions(api.output, &[r], false)
        }
        RegionsCommand::Delete { name } => {
            c.delete(&format!("/v1/regions/{name}")).await?;
            let done = Deleted {
                kind: "region",
                name,
            };
            print_out(api.output, &done, || done.table())
        }
    }
}

fn print_regions(output: Output, rs: &[RegionView], list: bool) -> Result<()> {
    let json: &dyn erased::Json = if list { &rs } else { &rs[0] };
    print_out(output, json, || {
        let mut t = Table::new(&[
            "REGION",
            "MESH",
            "IPV4 BLOCK",
            "IPV6 BLOCK",
            "SITES",
            "HUBS",
        ]);
        for r in rs {
            let online = r.hubs.iter().filter(|h| h.online).count();
            t.row(vec![
                r.name.to_string(),
                if r.mesh { "yes" } else { "no" }.into(),
                r.ipv4_block.to_string(),
                r.ipv6_block
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.sites.to_string(),
                format!("{online}/{} online", r.hubs.len()),
            ]);
        }
        if !list {
            // One region: each hub, its health and its spokes.
            for h in rs.iter().flat_map(|r| &r.hubs) {
                let peers = match (h.peers_up, h.peers_total) {
                    (Some(u), Some(n)) => format!("{u}/{n} peers up"),
                    _ => "no report".into(),
                };
                t.row(vec![
                    format!("  hub {}", h.name),
                    if h.online { "online" } else { "OFFLINE" }.into(),
                    peers,
                    format!("carries {} spokes", h.spokes_carried),
                    format!("assigned {}", h.spokes_assigned),
                    String::new(),
                ]);
            }
        }
        t
    })
}

async fn sites(api: &ApiArgs, command: SitesCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        SitesCommand::Add {
            name,
            region,
            role,
            lan,
            endpoint,
            public_key,
            org,
        } => {
            let req = CreateSite {
                name,
                region,
                org,
                role,
                lan_prefixes: lan.into_iter().collect(),
                endpoint,
                public_key,
            };
            let created: SiteCreated = c.post("/v1/sites", &req).await?;
            print_created(api.output, &created)
        }
        SitesCommand::List { region, state } => {
            let mut q = Vec::new();
            if let Some(r) = region {
                q.push(format!("region={r}"));
            }
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            let path = if q.is_empty() {
                "/v1/sites".to_owned()
            } else {
                format!("/v1/sites?{}", q.join("&"))
            };
            let sites: Vec<SiteView> = c.get(&path).await?;
            let fleet: FleetHealth = c.get("/v1/health").await?;
            print_out(api.output, &sites, || table::sites(&sites, &fleet))
        }
        SitesCommand::Show { name } => {
            let s: SiteView = c.get(&format!("/v1/sites/{name}")).await?;
            let fleet: FleetHealth = c.get("/v1/health").await?;
            print_out(api.output, &s, || {
                let mut t = table::site_detail(&s);
                table::site_health_rows(&mut t, &s, &fleet);
                t
            })
        }
        SitesCommand::Update {
            name,
            lan,
            endpoint,
            clear_endpoint,
        } => {
            let lan_prefixes = if lan.is_empty() {
                None
            } else if lan == ["none"] {
                Some(BTreeSet::new())
            } else {
                Some(
                    lan.iter()
                        .map(|s| parse_prefix(s).map_err(anyhow::Error::msg))
                        .collect::<Result<BTreeSet<_>>>()?,
                )
            };
            let endpoint = if clear_endpoint {
                Some(None)
            } else {
                endpoint.map(Some)
            };
            let s: SiteView = c
                .patch(
                    &format!("/v1/sites/{name}"),
                    &UpdateSite {
                        lan_prefixes,
                        endpoint,
                    },
                )
                .await?;
            print_out(api.output, &s, || table::site_detail(&s))
        }
        SitesCommand::Revoke { name } => {
            let s: SiteView = c
                .post(&format!("/v1/sites/{name}/revoke"), &serde_json::json!({}))
                .await?;
            print_out(api.output, &s, || table::site_detail(&s))
        }
        SitesCommand::Delete { name } => {
            c.delete(&format!("/v1/sites/{name}")).await?;
            let done = Deleted { kind: "site", name };
            print_out(api.output, &done, || done.table())
        }
        SitesCommand::Token { name } => {
            let created: SiteCreated = c
                .post(&format!("/v1/sites/{name}/token"), &serde_json::json!({}))
                .await?;
            print_created(api.output, &created)
        }
        SitesCommand::Export { name, out } => {
            let text = c.get_text(&format!("/v1/sites/{name}/wg-quick")).await?;
            if let Some(path) = &out {
                write_private(path, &text)
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            match (api.output, &out) {
                (Output::Json, _) => {
                    let v = Exported {
                        site: name,
                        format: "wg-quick",
                        written_to: out.clone(),
                        config: out.is_none().then_some(text),
                    };
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                (Output::Table, Some(path)) => println!("wrote {}", path.display()),
                (Output::Table, None) => print!("{text}"),
            }
            Ok(())
        }
    }
}

/// What `regions delete` and `sites delete` print with `-o json`.
#[derive(serde::Serialize)]
struct Deleted {
    kind: &'static str,
    name: Name,
}

impl Deleted {
    fn table(&self) -> Table {
        let mut t = Table::new(&["DELETED", "NAME"]);
        t.row(vec![self.kind.to_owned(), self.name.to_string()]);
        t
    }
}

/// What `sites export -o json` prints: the config text unless it went to a file.
#[derive(serde::Serialize)]
struct Exported {
    site: Name,
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    written_to: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
}

fn print_created(output: Output, created: &SiteCreated) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(created)?);
        return Ok(());
    }
    print!("{}", table::site_detail(&created.site));
    if let Some(token) = &created.token {
        println!();
        println!(
            "Enrolment token (shown once, valid until {}):",
            table::time(created.token_expires_at)
        );
        println!("  {token}");
        println!("On the site's gateway run this, then paste the token and press Enter:");
        println!(
            "  wardnet-agent enroll --controller <URL> --ca-cert /etc/wardnet/ca.crt --token-file -{}",
            if created.site.role == Role::Hub {
                " --endpoint <PUBLIC-IP:PORT>"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

mod erased {
    /// Object-safe "can be printed as JSON".
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string_pretty(self)
        }
    }
}

async fn prometheus(api: &ApiArgs, command: PrometheusCommand) -> Result<()> {
    let c = ApiClient::new(api)?;
    match command {
        PrometheusCommand::Targets { out } => {
            let groups: Vec<FileSdGroup> = c.get("/v1/prometheus/targets").await?;
            let mut json = serde_json::to_string_pretty(&groups)?;
            json.push('\n');
            match out {
                None => print_out(api.output, &groups, || table::targets(&groups))?,
                Some(path) => {
                    // Prometheus re-reads file_sd files on change: never let
                    // it see half a file.
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, &json)
                        .with_context(|| format!("failed to write {}", tmp.display()))?;
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("failed to replace {}", path.display()))?;
                }
            }
            Ok(())
        }
    }
}

fn print_out(
    output: Output,
    value: &dyn erased::Json,
    table: impl FnOnce() -> Table,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", value.to_json()?),
        Output::Table => print!("{}", table()),
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
            "wardnet-controller.bash",
            "_wardnet-controller",
            "wardnet-controller.fish",
            "wardnet-controller.1",
            "wardnet-controller-ca.1",
            "wardnet-controller-sites.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(f)).expect(f);
            assert!(text.contains("wardnet-controller"), "{f}");
        }
        assert!(!dir
            .path()
            .join("wardnet-controller-generate-docs.1")
            .exists());
    }

    #[test]
    fn sites_add_parses_repeated_lans_and_rejects_bad_prefixes() {
        let cli = Cli::try_parse_from([
            "wardnet-controller",
            "sites",
            "add",
            "gp-1",
            "--region",
            "north",
            "--role",
            "spoke",
            "--lan",
            "10.1.0.0/24",
            "--lan",
            "10.1.1.0/24",
        ])
        .expect("valid");
        let Command::Sites {
            command: SitesCommand::Add { lan, .. },
            ..
        } = cli.command
        else {
            panic!("parsed as sites add");
        };
        assert_eq!(lan.len(), 2);
        let e = Cli::try_parse_from([
            "wardnet-controller",
            "sites",
            "add",
            "gp-1",
            "--region",
            "north",
            "--role",
            "spoke",
            "--lan",
            "10.1.0.1/24",
        ])
        .expect_err("host bits");
        assert!(e.to_string().contains("did you mean 10.1.0.0/24"), "{e}");
    }
}
