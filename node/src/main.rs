//! `capmesh`: the node's command line. Parses arguments, sets up logging, calls the library.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use capmesh::{DataDir, inspect};
use clap::{Parser, Subcommand};

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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<()> {
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
    }
    Ok(())
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
