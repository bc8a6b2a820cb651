//! CLI commands that talk to a running node through its local API, and their output formats.

use std::path::Path;

use anyhow::Context;
use capmesh_api::{Client, ClientError, FindEvent, FindRequest, QueryHit};
use futures::StreamExt;

use crate::DataDir;

/// The API client of the node running on `dir`, with a clear message when none is.
pub fn client(dir: &DataDir) -> anyhow::Result<Client> {
    Client::from_data_dir(dir.root()).map_err(explain)
}

/// Turns client errors into what the user should do.
pub fn explain(e: ClientError) -> anyhow::Error {
    match e {
        e @ (ClientError::NotRunning { .. } | ClientError::Unreachable { .. }) => {
            anyhow::anyhow!("{e}")
        }
        e => anyhow::Error::new(e),
    }
}

/// Whether `e` means "no node answers" (the CLI may then use the replica offline).
pub fn is_not_running(e: &ClientError) -> bool {
    matches!(e, ClientError::NotRunning { .. } | ClientError::Unreachable { .. })
}

/// Column names of a table, printed on stderr before its first row: a terminal shows them,
/// and a pipe (`| cut -d' ' -f1`) gets the rows alone, as `--json` gets JSON alone.
pub fn header(columns: &[&str]) {
    eprintln!("{}", columns.join("  "));
}

/// Columns of [`query_hit_line`].
pub const QUERY_COLUMNS: &[&str] = &["ADVERT", "CAPABILITY", "NAME", "PRICE", "PROVIDER"];
/// Columns of [`find_line`].
pub const FIND_COLUMNS: &[&str] = &["SOURCE", "PROVIDER", "NAME@VERSION", "PRICE", "ADVERT"];

/// One line per query hit: `<advert id>  <capability>  <name>  <amount> <unit>  <provider>`
/// (as `capmesh registry query` prints offline).
pub fn query_hit_line(h: &QueryHit) -> String {
    format!(
        "{}  {}  {}  {} {}  {}",
        h.id, h.capability, h.name, h.price.amount, h.price.unit, h.provider
    )
}

/// Runs a find and calls `each` with every event as it arrives. Returns the number of hits.
pub async fn find(
    client: &Client,
    req: &FindRequest,
    mut each: impl FnMut(&FindEvent) -> std::io::Result<()>,
) -> anyhow::Result<u32> {
    let mut stream = client.find(req).await.map_err(explain)?;
    let mut hits = 0;
    while let Some(event) = stream.next().await {
        let event = event.map_err(explain)?;
        if let FindEvent::Hit(_) = &event {
            hits += 1;
        }
        each(&event)?;
        if let FindEvent::Done(_) = &event {
            break;
        }
    }
    Ok(hits)
}

/// One line per find hit: `<source>  <provider>  <name>@<version>  <amount> <unit>  <advert id>`.
pub fn find_line(event: &FindEvent) -> Option<String> {
    match event {
        FindEvent::Hit(h) => Some(format!(
            "{:<8}  {}  {}@{}  {} {}  {}",
            match h.source {
                capmesh_api::Source::Replica => "replica",
                capmesh_api::Source::Kademlia => "kademlia",
            },
            h.provider,
            h.name,
            h.version,
            h.price.amount,
            h.price.unit,
            h.advert_id
        )),
        FindEvent::Done(_) => None,
    }
}

/// Reads a contract file for `cap publish`.
pub fn contract_json(file: &Path, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    crate::cap::parse_json(bytes).with_context(|| file.display().to_string())
}
