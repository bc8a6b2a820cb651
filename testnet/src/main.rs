//! `capmesh-testnet`: local testnets of `capmesh` node processes on 127.0.0.1 for researchers:
//! `up` starts N nodes, `status` shows them, `run SCENARIO.toml` drives a workload and writes a
//! JSON report, `down` stops them all.
//!
//! Nothing here reaches beyond the loopback: nodes listen on 127.0.0.1 and dial only each other.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use capmesh_testnet::{manifest::Manifest, procs, procs::Layout, run, scenario::Scenario};

#[derive(Debug, Parser)]
#[command(name = "capmesh-testnet", version, about = "Local capmesh testnets on 127.0.0.1")]
struct Cli {
    /// The testnet's directory (node directories, manifest, logs, reports).
    #[arg(long, global = true, default_value = "capmesh-testnet", value_name = "DIR")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start N `capmesh run` processes on 127.0.0.1 (seeded keys, bootstrap wiring, a share of
    /// them serving the builtins echo, blake3 and sleep) and write the manifest.
    Up {
        /// How many nodes.
        #[arg(short = 'n', long, default_value_t = 10)]
        nodes: usize,
        /// Seed of the node keys (the same seed gives the same peer ids).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of the nodes serving the builtins (at least two).
        #[arg(long, default_value_t = 0.2)]
        serve_share: f64,
        /// The capmesh binary (default: beside this one, else on PATH).
        #[arg(long, value_name = "PATH")]
        capmesh: Option<PathBuf>,
    },
    /// Show every node: running or not, peers, replica size, memory.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drive a scenario against the running testnet and write its report (JSON) and plots (PNG,
    /// beside the report).
    Run {
        scenario: PathBuf,
        /// Where the report goes (default: <dir>/reports/<name>-<unix ms>.json).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Seed of the scenario's random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Draw the plots of a report again (PNG, beside it).
    Plot { report: PathBuf },
    /// Stop every node (SIGTERM, then SIGKILL after 15 s) and check that none is left.
    Down,
    /// The NAT lab: hosts in Linux network namespaces behind nftables NATs (needs root).
    Lab {
        #[command(subcommand)]
        command: capmesh_testnet::lab::LabCommand,
    },
    /// In-process Kademlia simulator (no node processes): N swarms on libp2p's memory transport
    /// running the node's Kademlia; reports requests per provider lookup, peers on the path to
    /// the first provider, and latency beside a one-request baseline (JSON report, table).
    Sim {
        /// Network sizes, simulated in turn.
        #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
        nodes: Vec<usize>,
        /// Lookups per network.
        #[arg(long, default_value_t = 200)]
        lookups: usize,
        /// Nodes announcing each lookup's key.
        #[arg(long, default_value_t = 3)]
        providers: usize,
        /// Seed of the node keys and of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How routing tables are filled: `table` (converged tables, no traffic) or `bootstrap`
        /// (every node joins with a Kademlia bootstrap; slow past a few hundred nodes).
        #[arg(long, default_value = "table")]
        join: capmesh_testnet::sim::Join,
        /// Where the report goes (default: <dir>/reports/sim-<unix ms>.json).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = cli.dir.clone();
    // On ctrl-c the command's future is dropped, so a node it was starting is killed; the
    // nodes already in the manifest stay up for `down`.
    let interrupted = runtime.block_on(async {
        tokio::select! {
            r = run_command(cli) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(result) = interrupted else {
        eprintln!(
            "interrupted; the testnet's nodes still run: `capmesh-testnet --dir {} down` stops them",
            dir.display()
        );
        return ExitCode::from(130);
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { nodes, seed, serve_share, capmesh } => {
            let capmesh = procs::find_capmesh(capmesh)?;
            let layout = Layout { nodes, seed, serve_share };
            let manifest = procs::up(&cli.dir, &capmesh, &layout).await?;
            // Ready means every provider's adverts are in every replica.
            let adverts = (layout.providers() * procs::SERVED.len()) as u64;
            match procs::settle(&manifest, adverts, std::time::Duration::from_secs(120)).await {
                Some(took) => eprintln!(
                    "all {adverts} adverts visible on every node {:.1} s after the last node started",
                    took.as_secs_f64()
                ),
                None => eprintln!("warning: not every node sees all {adverts} adverts after 120 s"),
            }
            println!(
                "{} nodes up in {} ({} serving echo, blake3 and sleep); manifest {}",
                manifest.nodes.len(),
                manifest.dir.display(),
                layout.providers(),
                Manifest::path(&manifest.dir).display()
            );
        }
        Command::Status { json } => {
            let manifest = Manifest::load(&cli.dir)?;
            let mut rows = Vec::with_capacity(manifest.nodes.len());
            for n in &manifest.nodes {
                let running = procs::alive(n.pid, &n.data_dir);
                let status = if running {
                    match capmesh_api::Client::from_data_dir(&n.data_dir) {
                        Ok(c) => c.status().await.ok(),
                        Err(_) => None,
                    }
                } else {
                    None
                };
                let rss = procs::usage(n.pid).filter(|_| running).map(|u| u.rss_kib / 1024);
                rows.push(serde_json::json!({
                    "index": n.index,
                    "pid": n.pid,
                    "running": running,
                    "peer_id": n.peer_id,
                    "serves": n.serves,
                    "connected_peers": status.as_ref().map(|s| s.connected_peers),
                    "replica_records": status.as_ref().map(|s| s.replica.records),
                    "rss_mib": rss,
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let up = rows.iter().filter(|r| r["running"] == true).count();
                println!("{up}/{} nodes running in {}", rows.len(), manifest.dir.display());
                for r in &rows {
                    println!(
                        "node {:>3}  pid {:>7}  {:<7}  peers {:>3}  records {:>6}  rss {:>4} MiB  {}",
                        r["index"],
                        r["pid"],
                        if r["running"] == true { "running" } else { "down" },
                        r["connected_peers"],
                        r["replica_records"],
                        r["rss_mib"],
                        r["peer_id"].as_str().unwrap_or_default(),
                    );
                }
            }
        }
        Command::Run { scenario, out, seed } => {
            let scenario = Scenario::load(&scenario)?;
            let manifest = Manifest::load(&cli.dir)?;
            let dir = manifest.dir.clone();
            eprintln!(
                "running {:?} for {} s on {} nodes",
                scenario.name,
                scenario.duration_secs,
                manifest.nodes.len()
            );
            // Where the report goes is settled before the run: an hour's run must not end unwritable.
            let target = match &out {
                Some(p) => p.parent().filter(|d| !d.as_os_str().is_empty()).map(PathBuf::from),
                None => Some(dir.join("reports")),
            };
            if let Some(d) = &target {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
            }
            let (report, manifest) = run::run(manifest, &scenario, seed).await?;
            manifest.save()?;
            let path = match out {
                Some(p) => p,
                None => dir
                    .join("reports")
                    .join(format!("{}-{}.json", scenario.name, report.started_ms)),
            };
            std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let plots = capmesh_testnet::plots::draw(&report, &path)?;
            for (what, s) in [("finds", &report.finds), ("calls", &report.calls)] {
                if let Some(s) = s {
                    println!(
                        "{what}: asked {} issued {} ok {} failed {} (lost with their node {}) success {:.2} % p50 {:.1} ms p99 {:.1} ms",
                        s.asked,
                        s.issued,
                        s.succeeded,
                        s.failed,
                        s.lost_with_their_node,
                        s.success_rate * 100.0,
                        s.latency_ms.p50,
                        s.latency_ms.p99
                    );
                }
            }
            if let Some(p) = &report.publish {
                println!(
                    "publish: asked {} published {}; visible at {} of {} watchers (not within the timeout {}) p50 {:.1} ms p99 {:.1} ms; on all watchers p50 {:.1} ms",
                    p.asked,
                    p.published,
                    p.visible,
                    p.watched,
                    p.not_visible,
                    p.visible_ms.p50,
                    p.visible_ms.p99,
                    p.all_visible_ms.p50
                );
            }
            if let Some(p) = &report.partition {
                let all = p
                    .all_converged_ms
                    .map_or("never (see not_converged)".into(), |ms| format!("{:.0} ms", ms));
                println!(
                    "partition: groups {:?} split at {:.1} s, healed at {:.1} s; {} adverts on {} of {} nodes, p50 {:.0} ms after the heal, all {all}",
                    p.groups,
                    p.split_at,
                    p.healed_at,
                    p.expected_adverts,
                    p.converged,
                    p.converged + p.not_converged.len(),
                    p.convergence_ms.p50
                );
            }
            if let Some(b) = &report.baseline {
                let ratios: Vec<String> =
                    report.ratios.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
                println!(
                    "baseline: bare request-response p50 {:.3} ms p99 {:.3} ms; {}",
                    b.bare_rpc_ms.p50,
                    b.bare_rpc_ms.p99,
                    ratios.join(", ")
                );
            }
            println!("report {}", path.display());
            for plot in plots {
                println!("plot {}", plot.display());
            }
        }
        Command::Plot { report } => {
            let text = std::fs::read(&report)
                .with_context(|| format!("cannot read {}", report.display()))?;
            let parsed: run::Report = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a capmesh-testnet report", report.display()))?;
            for plot in capmesh_testnet::plots::draw(&parsed, &report)? {
                println!("plot {}", plot.display());
            }
        }
        Command::Sim { nodes, lookups, providers, seed, join, out } => {
            let path = out.unwrap_or_else(|| {
                cli.dir.join("reports").join(format!("sim-{}.json", procs::now_ms()))
            });
            capmesh_testnet::sim::prepare(&path)?;
            let options = capmesh_testnet::sim::Options { nodes, lookups, providers, seed, join };
            let report = capmesh_testnet::sim::run(&options).await?;
            capmesh_testnet::sim::save(&report, &path)?;
            print!("{}", report.table());
            println!("report {}", path.display());
        }
        Command::Lab { command } => {
            let code = capmesh_testnet::lab::command(&cli.dir, command).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Down => {
            let (stopped, killed) = procs::down(&cli.dir).await?;
            println!("{stopped} nodes stopped ({killed} needed SIGKILL); no process left");
        }
    }
    Ok(())
}
