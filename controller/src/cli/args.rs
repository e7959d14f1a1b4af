//! The command line as clap parses it: every command and its flags.

use super::*;

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
        /// A rule's number, or a service's name: NAME, or ORG/NAME where
        /// several organisations the token sees have one of that name.
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
        /// Where to: org:NAME, site:NAME, or service:NAME (service:ORG/NAME
        /// where organisations' services share a name); `all` (the NOC).
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
        /// The service's name: NAME, or ORG/NAME (a network-wide token,
        /// where several organisations have a service of that name).
        name: ServiceRef,
    },
}

pub(super) fn proto_parser() -> impl clap::builder::TypedValueParser<Value = Proto> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["any", "tcp", "udp", "icmp"])
        .try_map(|s| s.parse::<Proto>())
}

pub(super) fn check_proto_parser() -> impl clap::builder::TypedValueParser<Value = Proto> {
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
        /// Address space to delegate (repeatable): an overlay block inside a
        /// region's block, where its sites get their addresses, or LAN space
        /// its own admins may give its sites.
        #[arg(long = "delegate", value_name = "PREFIX")]
        delegate: Vec<ipnet::IpNet>,
    },
    /// Delegate address space to an organisation (a network-wide token
    /// only): an overlay block inside a region's block, where its new sites
    /// in that region get their addresses, or LAN space its own admins may
    /// give its sites.
    Delegate {
        /// Organisation name.
        name: Name,
        /// Prefixes to add to what it was delegated.
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<ipnet::IpNet>,
    },
    /// Take delegated address space back (its sites keep the addresses and
    /// prefixes they have).
    Undelegate {
        /// Organisation name.
        name: Name,
        /// Prefixes to take back, as they were delegated.
        #[arg(required = true, value_name = "PREFIX")]
        prefixes: Vec<ipnet::IpNet>,
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
    /// Move a site into its organisation's overlay block: it gets addresses
    /// there and keeps its old ones beside them; with --finish, the old ones
    /// go (once its agent and every agent carrying it have the new ones).
    Renumber {
        /// Site name.
        name: Name,
        /// Drop the old addresses (refused, naming who, until every agent
        /// that carries the site has applied the new ones).
        #[arg(long)]
        finish: bool,
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

pub(super) fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["hub", "spoke"]).try_map(|s| s.parse::<Role>())
}

pub(super) fn state_parser() -> impl clap::builder::TypedValueParser<Value = SiteState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["pending", "active", "revoked"])
        .try_map(|s| s.parse::<SiteState>())
}

pub(super) fn parse_prefix(s: &str) -> Result<IpNet, String> {
    wardnet_common::net::parse_prefix(s)
}
