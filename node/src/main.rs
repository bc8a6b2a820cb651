//! `capmesh`: the node's command line. Parses arguments, sets up logging, calls the library.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use capmesh::{
    DataDir,
    cap::{self, Verdict},
    inspect, registry,
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
    /// The local registry replica (<data dir>/replica).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
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
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Query the local replica (not while a node holds it). One line per advert:
    /// `<advert id>  <capability>  <name>  <amount> <unit>  <provider>`.
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
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
            println!("{}", created.peer_id);
        }
        Command::Id => println!("{}", data_dir()?.load_key()?.peer_id()),
        Command::Cid { file } => {
            let text = read(&file)?;
            // Duplicate member names would make the id ambiguous: refused.
            let json = capmesh_wire::json::from_slice_strict(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            println!("{}", capmesh_wire::schema::json_cid(&json)?);
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
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        }
        Command::Cap { command } => return cap_command(command),
        Command::Registry { command: RegistryCommand::Query(args) } => {
            let dir = data_dir()?;
            let page = registry::query(
                &dir,
                &dir.config()?,
                &args.query()?,
                args.at.unwrap_or_else(capmesh::now_ms),
            )?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&registry::page_json(&page))?);
            } else {
                for hit in &page.hits {
                    println!("{}", registry::hit_line(hit));
                }
                match &page.next {
                    Some(next) => eprintln!("more: --cursor {}", registry::cursor_hex(next)),
                    None if page.hits.is_empty() => eprintln!("no adverts match"),
                    None => {}
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn cap_command(command: CapCommand) -> anyhow::Result<ExitCode> {
    let contract = |file: &Path| -> anyhow::Result<capmesh_contract::Contract> {
        cap::parse_contract(&read(file)?).with_context(|| shown(file))
    };
    match command {
        CapCommand::New { name } => println!("{}", cap::scaffold_json(&name)?),
        CapCommand::Id { file } => {
            let id = cap::capability_id(&contract(&file)?).with_context(|| shown(&file))?;
            println!("{id}");
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
                Verdict::Valid => println!("valid"),
                Verdict::Invalid(violations) => {
                    for violation in &violations {
                        eprintln!("{}", cap::violation_line(violation));
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
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
