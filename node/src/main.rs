//! `capmesh`: the node's command line. Parses arguments, sets up logging, calls the library.

/// `println!` that returns the write's error instead of panicking: output closed early
/// (`capmesh status | head`) ends the command quietly (see [`closed_early`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod call;
mod plan;
mod receipts;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use capmesh::{
    DataDir,
    cap::{self, Verdict},
    inspect, registry, remote,
    telemetry::{LogFormat, Verbosity},
};
use capmesh_contract::Which;
use capmesh_store::{Order, Query};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Filter, Price};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "capmesh",
    version,
    about = "A peer-to-peer node for a mesh of AI agents and tool providers"
)]
struct Cli {
    /// Data directory (key, configuration, replica).
    #[arg(long, global = true, env = "CAPMESH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How log lines on stderr are written. Levels come from RUST_LOG (e.g.
    /// RUST_LOG=capmesh_net=debug,info); a node logs at info by default, other commands warn.
    #[arg(long, global = true, env = "CAPMESH_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the node key and a commented default config.toml (never overwrites).
    Init,
    /// Print this node's PeerId.
    Id,
    /// Print the CID of a JSON value's canonical CBOR form (FILE, or - for stdin).
    Cid { file: PathBuf },
    /// Envelopes and signed records.
    Envelope {
        #[command(subcommand)]
        command: EnvelopeCommand,
    },
    /// Capability contracts: write one, compute its id, try arguments against it (offline).
    Cap {
        #[command(subcommand)]
        command: CapCommand,
    },
    /// The local registry replica (<data dir>/replica); through the node's API while one runs.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Run the node (initializes the data directory on first run). Stops on ctrl-c / SIGTERM.
    Run(RunArgs),
    /// Show the running node's state.
    Status {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the running node's peers.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// List the running node's agent sessions (they end when the node stops):
    /// `<id>  <name>  <expires in>  <runtime>  <capabilities served>  <calls made>/<served>`.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// Block peers on the running node (connections closed and refused both ways, until
    /// `unblock` or a restart); with no peer, list the blocked ones.
    Block { peers: Vec<capmesh_types::PeerId> },
    /// Lift blocks (peers a block disconnected are dialed again); prints the peers still blocked.
    Unblock {
        #[arg(required = true)]
        peers: Vec<capmesh_types::PeerId>,
    },
    /// Find providers: by capability id (replica and Kademlia), or search the replica by tag/text.
    Find(FindArgs),
    /// Call a capability through the running node: it checks the arguments, picks a provider by
    /// its offer, runs the call, verifies and keeps the receipt.
    Call(call::CallArgs),
    /// Sign an attestation about a peer or a CID through the running node, which stores and
    /// gossips it; prints its id.
    Attest(call::AttestArgs),
    /// Attestations the running node holds.
    Attestations {
        #[command(subcommand)]
        command: call::AttestationsCommand,
    },
    /// The receipt ledger: list, show, verify, export; through the node's API while one runs.
    Receipts {
        #[command(subcommand)]
        command: receipts::ReceiptsCommand,
    },
    /// Plans: goal-directed workflows of mesh calls (specs/plans.md).
    Plan {
        #[command(subcommand)]
        command: plan::PlanCommand,
    },
    /// Serve the running node's capabilities to MCP clients as tools (plus capmesh_find): over
    /// stdio, or over streamable HTTP on loopback with --http. Chosen by [mcp] in config.toml,
    /// or by the flags.
    Mcp(McpArgs),
}

#[derive(Debug, Args)]
struct McpArgs {
    /// Serve over streamable HTTP instead of stdio, at ADDR (loopback; default mcp.http_listen).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "")]
    http: Option<String>,
    /// List this capability (repeat; replaces mcp.pinned).
    #[arg(long = "pin", value_name = "ID")]
    pinned: Vec<Cid>,
    /// List the capabilities carrying every one of these tags (repeat; replaces mcp.tags).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// List the capabilities matching these words (replaces mcp.search).
    #[arg(long, value_name = "WORDS")]
    search: Option<String>,
    /// Most capability tools listed.
    #[arg(long, value_name = "N")]
    max_tools: Option<usize>,
    /// Deadline of each call, in ms.
    #[arg(long, value_name = "MS")]
    deadline_ms: Option<u64>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Listen multiaddr (repeat; replaces network.listen).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Peer to dial at start, ending in /p2p/<id> (repeat; added to network.bootstrap).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Announce the listen addresses as reachable (loopback testnets).
    #[arg(long)]
    announce_listen_addrs: bool,
    /// Do not take part in registry gossip.
    #[arg(long)]
    no_gossip: bool,
    /// Serve as a relay for others.
    #[arg(long)]
    relay_server: bool,
    /// Address of the local API (loopback).
    #[arg(long, value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    /// Contract file to publish at start (repeat; added to publish.contracts).
    #[arg(long = "publish", value_name = "FILE")]
    publish: Vec<PathBuf>,
    /// Export the spans of calls over OTLP/HTTP to this collector (e.g.
    /// http://127.0.0.1:4318; /v1/traces is appended). Off when absent.
    #[arg(long, value_name = "URL", env = "CAPMESH_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Args)]
struct FindArgs {
    /// Capability id (or search with --tag / --text instead).
    #[arg(conflicts_with_all = ["tags", "text"])]
    id: Option<Cid>,
    /// Search the replica by tag (repeat: every tag must be there).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Search the replica by words in names, descriptions and tags.
    #[arg(long, value_name = "WORDS")]
    text: Option<String>,
    /// Most results.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Give up after this many milliseconds (find by id).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print JSON (find by id: one event per line, as the API streams them).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum CapCommand {
    /// Print a well-formed starting contract named NAME (JSON) to fill in.
    New { name: String },
    /// Check a contract (JSON; FILE or -) and print its capability id.
    Id { file: PathBuf },
    /// Validate arguments (JSON; FILE or -) against a contract's input schema: prints `valid`,
    /// or every violation as `<json pointer>: <reason>` on stderr and exits non-zero.
    Validate {
        /// The contract (JSON file, or -).
        contract: PathBuf,
        /// The arguments (JSON file, or -).
        args: PathBuf,
        /// Validate against the output schema instead.
        #[arg(long)]
        output: bool,
    },
    /// Publish a contract (JSON; FILE or -) through the running node. The node must serve it
    /// (a [[serve]] table, or an agent's runtime) unless --announce-only says otherwise.
    Publish {
        file: PathBuf,
        /// Price per call, e.g. 100:usd-micro (default free).
        #[arg(long, value_name = "AMOUNT:UNIT", value_parser = registry::parse_price)]
        price: Option<Price>,
        /// Advert lifetime in seconds (default the node's registry.advert_ttl_secs).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Advertise it although nothing on this node serves it (calls to it fail with
        /// NotFound here): for contracts served elsewhere, or to test discovery.
        #[arg(long)]
        announce_only: bool,
    },
    /// Retire a capability this node publishes.
    Retire { id: Cid },
    /// Print a capability's contract (JSON): from the running node (its replica, else asked of
    /// a provider found through Kademlia), or from the replica on disk when no node runs.
    Show { id: Cid },
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Query the registry replica: through the running node's API, or the replica on disk
    /// when no node runs. One line per advert under a header:
    /// `ADVERT  CAPABILITY  NAME  PRICE  PROVIDER`.
    Query(QueryArgs),
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Only contracts with this tag (repeat: every tag must be there).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Words searched in names, descriptions and tags (every word must be there).
    #[arg(long, value_name = "WORDS")]
    text: Option<String>,
    /// Only adverts of this provider.
    #[arg(long, value_name = "PEER_ID")]
    provider: Option<PeerId>,
    /// Only capabilities whose name starts with PREFIX.
    #[arg(long = "name", value_name = "PREFIX")]
    name_prefix: Option<String>,
    /// Only adverts for this capability id.
    #[arg(long, value_name = "CID")]
    capability: Option<Cid>,
    /// Only adverts priced in UNIT at AMOUNT or less, e.g. 100:usd-micro.
    #[arg(long, value_name = "AMOUNT:UNIT", value_parser = registry::parse_price)]
    max_price: Option<Price>,
    /// Most adverts printed (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Newest adverts first (default: oldest first).
    #[arg(long)]
    newest: bool,
    /// Continue after a previous page (the hex it printed as next).
    #[arg(long, value_name = "HEX")]
    cursor: Option<String>,
    /// Print `{"hits": [...], "next": <cursor hex or null>}`.
    #[arg(long)]
    json: bool,
    /// Judge expiry at this unix time in ms instead of now.
    #[arg(long, value_name = "UNIX_MS")]
    at: Option<u64>,
}

impl QueryArgs {
    /// The same query for the running node's API.
    fn api_query(&self) -> anyhow::Result<capmesh_api::QueryRequest> {
        anyhow::ensure!(
            self.at.is_none(),
            "--at applies to the offline replica only; stop the node first"
        );
        let q = self.query()?;
        Ok(capmesh_api::QueryRequest {
            capability: q.capability,
            filter: q.filter,
            newest: self.newest,
            limit: Some(u32::from(self.limit)),
            cursor: self.cursor.clone(),
        })
    }

    fn query(&self) -> anyhow::Result<Query> {
        let cursor = match &self.cursor {
            Some(hex) => Some(registry::parse_cursor(hex).map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(Query {
            capability: self.capability,
            filter: Filter {
                tags: self.tags.clone(),
                name_prefix: self.name_prefix.clone(),
                text: self.text.clone(),
                provider: self.provider,
                max_price: self.max_price.clone(),
                ..Filter::default()
            },
            order: if self.newest { Order::Newest } else { Order::Oldest },
            limit: usize::from(self.limit),
            cursor,
        })
    }
}

#[derive(Debug, Subcommand)]
enum EnvelopeCommand {
    /// Verify an envelope or signed record (binary CBOR or hex; FILE or -) and print its JSON.
    Inspect {
        file: PathBuf,
        /// Judge expiry at this unix time in ms instead of now.
        #[arg(long, value_name = "UNIX_MS")]
        at: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Run(args) => args.otlp_endpoint.clone(),
        _ => None,
    };
    // Held until the end of main: dropping it flushes the span exporter.
    let verbosity = match &cli.command {
        Command::Run(_) | Command::Mcp(_) => Verbosity::Node,
        _ => Verbosity::Command,
    };
    let _telemetry = match capmesh::telemetry::init(cli.log_format, verbosity, otlp.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if closed_early(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = || -> anyhow::Result<DataDir> {
        Ok(DataDir::new(match &cli.data_dir {
            Some(dir) => dir.clone(),
            None => DataDir::platform_default()?,
        }))
    };
    match cli.command {
        Command::Init => {
            let created = data_dir()?.init()?;
            eprintln!(
                "created {} and {}",
                created.key_file.display(),
                created.config_file.display()
            );
            outln!("{}", created.peer_id)?;
        }
        Command::Id => outln!("{}", data_dir()?.load_key()?.peer_id())?,
        Command::Cid { file } => {
            let text = read(&file)?;
            // Duplicate member names would make the id ambiguous: refused.
            let json = capmesh_wire::json::from_slice_strict(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            outln!("{}", capmesh_wire::schema::json_cid(&json)?)?;
        }
        Command::Envelope { command: EnvelopeCommand::Inspect { file, at } } => {
            // Rules come from the config when a data directory is set up; defaults otherwise.
            let config = match data_dir() {
                Ok(dir) => dir.config()?,
                Err(_) => capmesh::Config::default(),
            };
            let bytes = inspect::read_input(&read(&file)?);
            let report = inspect::inspect(
                &bytes,
                at.unwrap_or_else(capmesh::now_ms),
                &config.envelope.rules(),
            )?;
            outln!("{}", serde_json::to_string_pretty(&report.to_json())?)?;
        }
        Command::Cap { command } => return cap_command(command, data_dir),
        Command::Run(args) => return run_node(data_dir()?, args),
        Command::Status { json } => {
            let status = block_on(async {
                remote::client(&data_dir()?)?.status().await.map_err(remote::explain)
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                outln!("peer id     {}", status.peer_id)?;
                outln!("version     {}", status.version)?;
                outln!("listening   {}", status.listen_addrs.join(" "))?;
                outln!("external    {}", status.external_addrs.join(" "))?;
                outln!("reachable   {}", status.reachability)?;
                outln!("relays      {} reservations", status.relay_reservations.len())?;
                for circuit in &status.relay_reservations {
                    outln!("            {circuit}")?;
                }
                outln!(
                    "peers       {} connected, {} in routing table (kademlia {})",
                    status.connected_peers,
                    status.routing_table_peers,
                    status.kad_mode
                )?;
                outln!(
                    "replica     {} records ({} refused, {} dropped)",
                    status.replica.records,
                    status.replica.refused,
                    status.replica.dropped
                )?;
                outln!(
                    "gossip      {} accepted, {} ignored, {} rejected, {} rate-limited",
                    status.gossip.accepted,
                    status.gossip.ignored,
                    status.gossip.rejected,
                    status.gossip.rate_limited
                )?;
                outln!("published   {}", status.published.len())?;
                for cap in &status.published {
                    outln!("            {cap}")?;
                }
            }
        }
        Command::Sessions { json } => {
            let list = block_on(async {
                remote::client(&data_dir()?)?.sessions().await.map_err(remote::explain)
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                let now = capmesh::now_ms();
                if !list.sessions.is_empty() {
                    remote::header(&[
                        "SESSION",
                        "NAME",
                        "EXPIRES IN",
                        "RUNTIME",
                        "CAPABILITIES",
                        "CALLS MADE/SERVED",
                    ]);
                }
                for s in &list.sessions {
                    let left = s.expires_ms.saturating_sub(now) / 1000;
                    let runtime = if s.runtime_attached { "attached" } else { "detached" };
                    outln!(
                        "{}  {}  {left}s  {runtime}  {}  {}/{}",
                        s.id,
                        s.name,
                        s.capabilities.len(),
                        s.calls_made,
                        s.calls_served
                    )?;
                }
                if list.sessions.is_empty() {
                    eprintln!("no sessions");
                }
            }
        }
        Command::Peers { json } => {
            let peers = block_on(async {
                remote::client(&data_dir()?)?.peers().await.map_err(remote::explain)
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&peers)?)?;
            } else {
                if !peers.is_empty() {
                    remote::header(&["PEER", "STATE", "ADDRESSES"]);
                }
                for p in &peers {
                    let state = if p.connected {
                        format!("connected ({})", p.connection)
                    } else {
                        "known".to_string()
                    };
                    outln!("{}  {state}  {}", p.peer_id, p.addrs.join(" "))?;
                }
                if peers.is_empty() {
                    eprintln!("no peers");
                }
            }
        }
        Command::Block { peers } => {
            block(&data_dir()?, capmesh_api::BlockRequest { block: peers, unblock: vec![] })?
        }
        Command::Unblock { peers } => {
            block(&data_dir()?, capmesh_api::BlockRequest { block: vec![], unblock: peers })?
        }
        Command::Find(args) => return find(data_dir()?, args),
        Command::Call(args) => return call::call(&data_dir()?, args),
        Command::Attest(args) => return call::attest(&data_dir()?, args),
        Command::Attestations { command } => return call::attestations(&data_dir()?, command),
        Command::Receipts { command } => return receipts::run(command, data_dir),
        Command::Plan { command } => return plan::run(command, data_dir),
        Command::Mcp(args) => {
            let dir = data_dir()?;
            let config = dir.config()?;
            let flags = capmesh::mcp::SelectionFlags {
                pinned: args.pinned,
                tags: args.tags,
                search: args.search,
                max_tools: args.max_tools,
                deadline_ms: args.deadline_ms,
            };
            let selection = capmesh::mcp::selection(&config.mcp, flags)?;
            let http = match args.http.as_deref() {
                None => None,
                Some("") => Some(config.mcp.http_listen.parse()?),
                Some(addr) => Some(
                    addr.parse()
                        .with_context(|| format!("--http {addr:?} is not an address:port"))?,
                ),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(capmesh::mcp::serve(&dir, selection, http))?;
        }
        Command::Registry { command: RegistryCommand::Query(args) } => {
            let dir = data_dir()?;
            // A running node holds the replica: ask it.
            match capmesh_api::Client::from_data_dir(dir.root()) {
                Ok(client) => {
                    let req = args.api_query()?;
                    match block_on(client.query(&req)) {
                        Ok(page) => {
                            print_api_page(&page, args.json)?;
                            return Ok(ExitCode::SUCCESS);
                        }
                        Err(e) if remote::is_not_running(&e) => {
                            tracing::debug!(error = %e, "no node answers; reading the replica");
                        }
                        Err(e) => return Err(remote::explain(e)),
                    }
                }
                Err(e) if remote::is_not_running(&e) => {}
                Err(e) => return Err(remote::explain(e)),
            }
            let page = registry::query(
                &dir,
                &dir.config()?,
                &args.query()?,
                args.at.unwrap_or_else(capmesh::now_ms),
            )?;
            print_api_page(&registry::query_page(&page), args.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the command failed only because its reader closed stdout (`| head`): what it
/// printed was read, and nothing is left to say.
fn closed_early(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs a future on a fresh runtime (the CLI is synchronous elsewhere).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(f)
}

fn run_node(dir: DataDir, args: RunArgs) -> anyhow::Result<ExitCode> {
    // The data directory may not exist yet: its config is read after launch initializes it.
    if let Some(created) = dir.ensure_init()? {
        tracing::info!(peer_id = %created.peer_id, dir = %dir.root().display(), "initialized data directory");
    }
    let mut config = dir.config()?;
    let n = &mut config.network;
    if !args.listen.is_empty() {
        n.listen = args.listen;
    }
    n.bootstrap.extend(args.bootstrap);
    n.announce_listen_addrs |= args.announce_listen_addrs;
    n.gossip &= !args.no_gossip;
    n.relay_server |= args.relay_server;
    if let Some(api) = args.api_listen {
        config.api.listen = api;
    }
    let cwd = std::env::current_dir()?;
    config.publish.contracts.extend(args.publish.into_iter().map(|p| cwd.join(p)));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let node = capmesh::Node::launch(dir, config, Default::default()).await?;
        wait_for_signal(node.market.policy().clone()).await?;
        tracing::info!("shutting down");
        node.shutdown().await
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Waits for ctrl-c or SIGTERM.
/// Waits for ctrl-c or SIGTERM; SIGHUP meanwhile reloads the call policy (a broken file keeps
/// the policy in force, and says why in the log).
async fn wait_for_signal(policy: capmesh_policy::PolicyHandle) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return Ok(r?),
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => match policy.reload() {
                    Ok(()) => tracing::info!(generation = policy.generation(), "call policy reloaded"),
                    Err(e) => tracing::warn!(error = %e, "call policy not reloaded; the previous one stays"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = policy;
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}

/// Changes the running node's block list (an empty request only reads it) and prints it.
fn block(dir: &DataDir, req: capmesh_api::BlockRequest) -> anyhow::Result<()> {
    let blocked = block_on(async {
        let client = remote::client(dir)?;
        let blocked = if req == capmesh_api::BlockRequest::default() {
            client.blocked().await
        } else {
            client.block(&req).await
        };
        blocked.map_err(remote::explain)
    })?;
    for peer in &blocked.peers {
        outln!("{peer}")?;
    }
    if blocked.peers.is_empty() {
        eprintln!("no peer blocked");
    }
    Ok(())
}

fn find(dir: DataDir, args: FindArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.id.is_some() || !args.tags.is_empty() || args.text.is_some(),
        "find what? give a capability id (`capmesh find ID`), or search the replica with \
         --tag TAG (repeat for all of several) or --text WORDS"
    );
    let client = remote::client(&dir)?;
    if let Some(id) = args.id {
        let req = capmesh_api::FindRequest {
            capability: id,
            limit: Some(args.limit),
            timeout_ms: args.timeout_ms,
        };
        let json = args.json;
        let mut rows = 0;
        let hits = block_on(remote::find(&client, &req, |event| {
            if json {
                outln!("{}", serde_json::to_string(event).unwrap_or_default())?;
            } else if let Some(line) = remote::find_line(event) {
                if rows == 0 {
                    remote::header(remote::FIND_COLUMNS);
                }
                rows += 1;
                outln!("{line}")?;
            } else if let capmesh_api::FindEvent::Done(d) = event {
                eprintln!(
                    "{} found in {} ms ({} kademlia requests){}",
                    d.hits,
                    d.elapsed_ms,
                    d.kad_requests,
                    d.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
                );
            }
            Ok(())
        }))?;
        return Ok(if hits > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let req = capmesh_api::QueryRequest {
        filter: Filter { tags: args.tags, text: args.text, ..Filter::default() },
        limit: Some(args.limit.clamp(1, 1000)),
        ..Default::default()
    };
    let page = block_on(client.query(&req)).map_err(remote::explain)?;
    print_api_page(&page, args.json)?;
    Ok(if page.hits.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_api_page(page: &capmesh_api::QueryPage, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(page)?)?;
    } else {
        if !page.hits.is_empty() {
            remote::header(remote::QUERY_COLUMNS);
        }
        for hit in &page.hits {
            outln!("{}", remote::query_hit_line(hit))?;
        }
        match &page.next {
            Some(next) => eprintln!("more: --cursor {next}"),
            None if page.hits.is_empty() => eprintln!("no adverts match"),
            None => {}
        }
    }
    Ok(())
}

fn cap_command(
    command: CapCommand,
    data_dir: impl Fn() -> anyhow::Result<DataDir>,
) -> anyhow::Result<ExitCode> {
    let contract = |file: &Path| -> anyhow::Result<capmesh_contract::Contract> {
        cap::parse_contract(&read(file)?).with_context(|| shown(file))
    };
    match command {
        CapCommand::New { name } => outln!("{}", cap::scaffold_json(&name)?)?,
        CapCommand::Id { file } => {
            let id = cap::capability_id(&contract(&file)?).with_context(|| shown(&file))?;
            outln!("{id}")?;
        }
        CapCommand::Validate { contract: file, args, output } => {
            anyhow::ensure!(
                file != Path::new("-") || args != Path::new("-"),
                "the contract and the value cannot both come from stdin"
            );
            let c = contract(&file)?;
            let value = cap::parse_json(&read(&args)?).with_context(|| shown(&args))?;
            let which = if output { Which::Output } else { Which::Input };
            match cap::validate(&c, which, &value).with_context(|| shown(&file))? {
                Verdict::Valid => outln!("valid")?,
                Verdict::Invalid(violations) => {
                    for violation in &violations {
                        eprintln!("{}", cap::violation_line(violation));
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        CapCommand::Publish { file, price, ttl, announce_only } => {
            let contract = remote::contract_json(&file, &read(&file)?)?;
            let client = remote::client(&data_dir()?)?;
            let req = capmesh_api::PublishRequest {
                contract,
                price,
                limits: None,
                ttl_ms: ttl.map(|s| s * 1000),
                announce_only,
            };
            let published = block_on(client.publish(&req)).map_err(remote::explain)?;
            eprintln!(
                "published, advert {} (seq {}, expires {})",
                published.advert_id, published.seq, published.expires
            );
            outln!("{}", published.capability)?;
        }
        CapCommand::Show { id } => {
            let dir = data_dir()?;
            let asked = capmesh_api::Client::from_data_dir(dir.root())
                .and_then(|client| block_on(client.contract(id)));
            let (contract, from) = match asked {
                Ok(info) => (
                    info.contract,
                    match info.source {
                        capmesh_api::Source::Replica => "node's replica",
                        capmesh_api::Source::Kademlia => "provider found through Kademlia",
                    },
                ),
                // No node runs: the replica on disk.
                Err(e) if remote::is_not_running(&e) => {
                    (registry::replica_contract(&dir, &dir.config()?, id)?, "replica on disk")
                }
                Err(e) => return Err(remote::explain(e)),
            };
            eprintln!("capability {id}, contract from the {from}:");
            outln!("{}", serde_json::to_string_pretty(&contract)?)?;
        }
        CapCommand::Retire { id } => {
            let client = remote::client(&data_dir()?)?;
            let retired = block_on(client.retire(id)).map_err(remote::explain)?;
            eprintln!(
                "retired capability {} (seq {}); the retirement record's id:",
                retired.capability, retired.seq
            );
            outln!("{}", retired.retirement_id)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How FILE is named in messages.
fn shown(file: &Path) -> String {
    if file == Path::new("-") { "stdin".into() } else { file.display().to_string() }
}

/// Reads FILE, or stdin for `-`.
fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("cannot read stdin")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
    }
}
