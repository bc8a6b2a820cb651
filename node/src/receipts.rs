//! `capmesh receipts list|show|verify|export`: the receipt ledger (DESIGN §5 step 5), through
//! the running node's API or, when no node runs, read from the replica offline (as
//! `registry query` does). Entries are printed in the API's one JSON shape,
//! [`LedgerEntryJson`], whichever way they were read, and `verify FILE` checks an export
//! anywhere, without a node.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use capmesh::{DataDir, registry, remote};
use capmesh_api::{
    Client, ClientError, ErrorCode, LEDGER_PAGE_MAX, LedgerEntryJson, LedgerPage, LedgerRequest,
    ReceiptEntries,
};
use capmesh_store::{LedgerEntry, LedgerKind, Store, verify_ledger};
use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{
    Countersignature, Receipt, Record, Signed, VerifyError,
    cbor::Limits,
    repr::{Bytes, FixedBytes},
};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum ReceiptsCommand {
    /// List ledger entries, one per line.
    ///
    /// `<seq>  <kind>  <record id>`, then for a receipt `<capability>  <provider>-><caller>
    /// <status>  <amount> <unit>  <ended>`, for a countersignature `of <receipt id>  by <caller>
    /// <signed>` (peer ids shortened to their last 8 characters, times in UTC).
    List {
        /// First sequence number.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from: u64,
        /// Most entries printed (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print one JSON entry per line (as `export` writes them).
        #[arg(long)]
        json: bool,
        /// Only the entries of calls with this trace id (32 hex digits: the trace id of the
        /// agent's `traceparent`, or the `trace` a call's result names), searched through the
        /// whole ledger from --from on.
        #[arg(long, value_name = "TRACE_ID")]
        trace: Option<capmesh_api::TraceId>,
    },
    /// Show a receipt and its countersignature, and whether each verifies.
    ///
    /// Prints each record's JSON projection (`{"payload": …, "sig": …}`) after a line saying
    /// whether its signature holds (and the countersignature's signer is the receipt's caller);
    /// exits 1 when one does not.
    Show {
        /// Receipt id (the record id `receipts list` prints).
        id: Cid,
    },
    /// Check a ledger: sequence numbers, BLAKE3 chain and every signature.
    ///
    /// Without FILE, the node's own ledger; with FILE (or - for stdin), an export, checked
    /// offline (only `seq`, `hash`, `kind` and `signed` of each line are read). Prints
    /// `ok: N entries (R receipts, C countersignatures), chain head <hash>`, or names the first
    /// bad entry (`ledger entry SEQ is bad: REASON`) on stderr and exits 1.
    Verify {
        /// An export (`receipts export`), or - for stdin.
        file: Option<PathBuf>,
    },
    /// Write the whole ledger as NDJSON, one entry per line (the API's shape).
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs a `receipts` command; `data_dir` is asked for only by commands that read the node's
/// ledger.
pub(crate) fn run(
    command: ReceiptsCommand,
    data_dir: impl Fn() -> anyhow::Result<DataDir>,
) -> anyhow::Result<ExitCode> {
    match command {
        ReceiptsCommand::List { from, limit, json, trace: Some(trace) } => {
            let ledger = Ledger::open(&data_dir()?)?;
            let mut out = std::io::stdout().lock();
            let mut printed = 0u32;
            let mut closed = None;
            ledger.for_each_from(from, |e| {
                let matches = e.note.as_ref().and_then(|n| n.trace) == Some(trace);
                if !matches || printed >= limit || closed.is_some() {
                    return Ok(());
                }
                if printed == 0 && !json {
                    crate::remote::header(LEDGER_COLUMNS);
                }
                printed += 1;
                let line = if json { serde_json::to_string(e)? } else { entry_line(e) };
                if let Err(e) = writeln!(out, "{line}") {
                    closed = Some(e);
                }
                Ok(())
            })?;
            if let Some(e) = closed {
                return quiet_if_closed(e.into());
            }
            if printed == 0 {
                eprintln!("no entries with trace {trace} from {from} on");
            }
        }
        ReceiptsCommand::List { from, limit, json, trace: None } => {
            let page = Ledger::open(&data_dir()?)?.page(from, limit)?;
            let mut out = std::io::stdout().lock();
            if !json && !page.entries.is_empty() {
                crate::remote::header(LEDGER_COLUMNS);
            }
            for e in &page.entries {
                let line = if json { serde_json::to_string(e)? } else { entry_line(e) };
                if let Err(e) = writeln!(out, "{line}") {
                    return quiet_if_closed(e.into());
                }
            }
            match page.next {
                Some(next) => eprintln!("more: --from {next}"),
                None if page.len == 0 => eprintln!("the ledger is empty"),
                None if page.entries.is_empty() => {
                    eprintln!("no entries from {from}: the ledger has {}", page.len)
                }
                None => {}
            }
        }
        ReceiptsCommand::Show { id } => {
            let Some(found) = Ledger::open(&data_dir()?)?.find(id)? else {
                anyhow::bail!(
                    "no receipt {id} in the ledger; `capmesh receipts list` shows what it holds"
                );
            };
            return show(&found);
        }
        ReceiptsCommand::Verify { file: Some(file) } => {
            let entries = if file == Path::new("-") {
                read_export(std::io::stdin().lock(), "stdin")?
            } else {
                let f =
                    File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
                read_export(BufReader::new(f), &file.display().to_string())?
            };
            return Ok(report(&entries)?);
        }
        ReceiptsCommand::Verify { file: None } => {
            let entries = Ledger::open(&data_dir()?)?.entries()?;
            return Ok(report(&entries)?);
        }
        ReceiptsCommand::Export { out } => {
            let ledger = Ledger::open(&data_dir()?)?;
            let n = match &out {
                Some(path) => {
                    let file = File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = BufWriter::new(file);
                    let n = export(&ledger, &mut w, &path.display().to_string())?;
                    w.into_inner()
                        .map_err(|e| e.into_error())
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    n
                }
                None => {
                    let mut w = BufWriter::new(std::io::stdout().lock());
                    match export(&ledger, &mut w, "stdout")
                        .and_then(|n| Ok(w.flush().map(|()| n)?))
                    {
                        Ok(n) => n,
                        Err(e) => return quiet_if_closed(e),
                    }
                }
            };
            let to = out.map(|p| format!(" to {}", p.display())).unwrap_or_default();
            eprintln!("exported {n} ledger entries{to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the ledger is read: the running node's API, or the replica itself when no node runs
/// (sled lets one process at a time open it).
enum Ledger {
    Node { client: Client, rt: tokio::runtime::Runtime },
    Offline(Store),
}

impl Ledger {
    /// The node's API if a node answers for `dir`, else the replica, opened offline; a replica
    /// held by a node that does not answer is reported as in use, not waited for.
    fn open(dir: &DataDir) -> anyhow::Result<Self> {
        match Client::from_data_dir(dir.root()) {
            Ok(client) => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let probe = LedgerRequest { from: Some(0), limit: Some(1) };
                match rt.block_on(client.receipts(&probe)) {
                    Ok(_) => return Ok(Ledger::Node { client, rt }),
                    Err(e) if remote::is_not_running(&e) => {
                        tracing::debug!(error = %e, "no node answers; reading the replica");
                    }
                    Err(e) => return Err(remote::explain(e)),
                }
            }
            Err(e) if remote::is_not_running(&e) => {}
            Err(e) => return Err(remote::explain(e)),
        }
        Ok(Ledger::Offline(registry::open(dir, &dir.config()?)?))
    }

    /// At most `limit` (≤ [`LEDGER_PAGE_MAX`]) entries from `from` on.
    fn page(&self, from: u64, limit: u32) -> anyhow::Result<LedgerPage> {
        match self {
            Ledger::Node { client, rt } => {
                let req = LedgerRequest { from: Some(from), limit: Some(limit) };
                rt.block_on(client.receipts(&req)).map_err(remote::explain)
            }
            Ledger::Offline(store) => {
                let len = store.ledger_len()?;
                let end = len.min(from.saturating_add(u64::from(limit)));
                let entries = store.ledger_range(from, end.saturating_sub(from) as usize)?;
                let next = from.saturating_add(entries.len() as u64);
                Ok(LedgerPage {
                    entries: entries
                        .iter()
                        .map(|e| capmesh::registry::ledger_entry_json(store, e))
                        .collect(),
                    next: (next < len && !entries.is_empty()).then_some(next),
                    len,
                })
            }
        }
    }

    /// Receipt `id` and its countersignature; `None` if the ledger has no such receipt.
    fn find(&self, id: Cid) -> anyhow::Result<Option<ReceiptEntries>> {
        match self {
            Ledger::Node { client, rt } => match rt.block_on(client.receipt(id)) {
                Ok(found) => Ok(Some(found)),
                Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
                Err(e) => Err(remote::explain(e)),
            },
            Ledger::Offline(store) => {
                let (receipt, countersignature) = store.ledger_find(&id)?;
                Ok(receipt.map(|receipt| ReceiptEntries {
                    receipt: capmesh::registry::ledger_entry_json(store, &receipt),
                    countersignature: countersignature
                        .as_ref()
                        .map(|c| capmesh::registry::ledger_entry_json(store, c)),
                }))
            }
        }
    }

    /// Calls `each` with every entry in order, a page at a time; returns how many there were.
    fn for_each(
        &self,
        each: impl FnMut(&LedgerEntryJson) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        self.for_each_from(0, each)
    }

    /// [`Ledger::for_each`] from sequence `from` on.
    fn for_each_from(
        &self,
        from: u64,
        mut each: impl FnMut(&LedgerEntryJson) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let (mut from, mut n) = (from, 0);
        loop {
            let page = self.page(from, LEDGER_PAGE_MAX)?;
            for e in &page.entries {
                each(e)?;
            }
            n += page.entries.len() as u64;
            match page.next {
                Some(next) if next > from => from = next,
                Some(next) => anyhow::bail!("the node's ledger pages went back to {next}"),
                None => return Ok(n),
            }
        }
    }

    /// The whole ledger, as verification reads it.
    fn entries(&self) -> anyhow::Result<Vec<LedgerEntry>> {
        match self {
            Ledger::Node { .. } => {
                let mut all = Vec::new();
                self.for_each(|e| {
                    all.push(store_entry(e));
                    Ok(())
                })?;
                Ok(all)
            }
            Ledger::Offline(store) => Ok(store.ledger()?),
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Ledger::Offline(store) = self {
            store.close();
        }
    }
}

/// What verification reads of an entry (`id` and `record` are derived, never trusted).
fn store_entry(e: &LedgerEntryJson) -> LedgerEntry {
    LedgerEntry { seq: e.seq, hash: e.hash, kind: store_kind(e.kind), signed: e.signed.0.clone() }
}

fn store_kind(kind: capmesh_api::LedgerKind) -> LedgerKind {
    match kind {
        capmesh_api::LedgerKind::Receipt => LedgerKind::Receipt,
        capmesh_api::LedgerKind::Countersignature => LedgerKind::Countersignature,
    }
}

/// Writes every entry as one JSON line to `w` (named `to` in errors); returns how many.
fn export(ledger: &Ledger, w: &mut impl Write, to: &str) -> anyhow::Result<u64> {
    ledger.for_each(|e| {
        let mut line = serde_json::to_vec(e)?;
        line.push(b'\n');
        w.write_all(&line).with_context(|| format!("cannot write {to}"))
    })
}

/// Output cut short by a closed stdout (`… | head`) ends the command quietly; other errors
/// stand. (anyhow's downcast sees through `.context(..)`.)
fn quiet_if_closed(e: anyhow::Error) -> anyhow::Result<ExitCode> {
    match e.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        _ => Err(e),
    }
}

/// One line of an export, as verification reads it: unknown members (`id`, `record`) are
/// ignored.
#[derive(serde::Deserialize)]
struct ExportLine {
    seq: u64,
    hash: FixedBytes<32>,
    kind: capmesh_api::LedgerKind,
    signed: Bytes,
}

/// Reads an export (one JSON entry per line; blank lines are skipped). A line that is not an
/// entry is an error naming its line number.
fn read_export(reader: impl BufRead, name: &str) -> anyhow::Result<Vec<LedgerEntry>> {
    let mut entries = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let at = || format!("{name} line {}", i + 1);
        let line = line.with_context(|| format!("{}: cannot read", at()))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: ExportLine =
            serde_json::from_str(&line).with_context(|| format!("{}: not a ledger entry", at()))?;
        entries.push(LedgerEntry {
            seq: e.seq,
            hash: Digest::from_bytes(e.hash.0),
            kind: store_kind(e.kind),
            signed: e.signed.0,
        });
    }
    Ok(entries)
}

/// Verifies `entries` and says so: `ok: …` on stdout, or the first bad entry on stderr.
fn report(entries: &[LedgerEntry]) -> std::io::Result<ExitCode> {
    match verify_ledger(entries) {
        Ok(()) => {
            outln!("{}", summary(entries))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ok: N entries (R receipts, C countersignatures), chain head <hash>`; the head of an empty
/// ledger is the 32 zero bytes its first entry will chain from.
fn summary(entries: &[LedgerEntry]) -> String {
    let receipts = entries.iter().filter(|e| e.kind == LedgerKind::Receipt).count();
    let head = entries.last().map_or(Digest::from_bytes([0; 32]), |e| e.hash);
    format!(
        "ok: {} entries ({receipts} receipts, {} countersignatures), chain head {}",
        entries.len(),
        entries.len() - receipts,
        b64(head.as_bytes())
    )
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// Prints a receipt and its countersignature, each with its verdict; fails if one does not
/// verify.
fn show(found: &ReceiptEntries) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    let receipt = check::<Receipt>(&found.receipt);
    let verdict = match &receipt {
        Ok(r) => format!("verified, signed by provider {}", r.provider),
        Err(e) => {
            ok = false;
            format!("DOES NOT VERIFY: {e}")
        }
    };
    outln!("receipt {} (ledger entry {}): {verdict}", id_text(&found.receipt), found.receipt.seq)?;
    outln!("{}", serde_json::to_string_pretty(&found.receipt.record)?)?;
    match &found.countersignature {
        None => outln!("no countersignature in the ledger")?,
        Some(entry) => {
            let verdict = match check::<Countersignature>(entry) {
                Ok(c) => match &receipt {
                    Ok(r) if c.caller != r.caller => {
                        ok = false;
                        format!(
                            "DOES NOT VERIFY: signed by {}, not the caller {}",
                            c.caller, r.caller
                        )
                    }
                    _ => format!("verified, signed by caller {}", c.caller),
                },
                Err(e) => {
                    ok = false;
                    format!("DOES NOT VERIFY: {e}")
                }
            };
            outln!("countersignature {} (ledger entry {}): {verdict}", id_text(entry), entry.seq)?;
            outln!("{}", serde_json::to_string_pretty(&entry.record)?)?;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The record of an entry, if its bytes decode and its signer's signature holds (time windows
/// are not judged: a receipt stays evidence after the fact).
fn check<T: Record>(entry: &LedgerEntryJson) -> Result<T, VerifyError> {
    let signed = Signed::<T>::from_bytes(&entry.signed.0, Limits::default())?;
    let record = signed.decode(Limits::default())?;
    signed.check_signature(&record)?;
    Ok(record)
}

/// The record id of an entry, or `-` when its bytes are not a signed object.
fn id_text(e: &LedgerEntryJson) -> String {
    e.id.map_or_else(|| "-".to_owned(), |id| id.to_string())
}

/// Columns of [`entry_line`]: a receipt's details are `CAPABILITY  PROVIDER->CALLER  STATUS
/// PRICE  ENDED`, a countersignature's `of RECEIPT  by CALLER  SIGNED`; then the local note.
const LEDGER_COLUMNS: &[&str] = &["SEQ", "KIND", "ID", "DETAILS"];

/// One line of `receipts list`, fields separated by two spaces.
fn entry_line(e: &LedgerEntryJson) -> String {
    let head = format!("{}  {:?}  {}", e.seq, e.kind, id_text(e));
    let limits = Limits::default();
    let tail = match e.kind {
        capmesh_api::LedgerKind::Receipt => Signed::<Receipt>::from_bytes(&e.signed.0, limits)
            .and_then(|s| s.decode(limits))
            .map(|r| {
                format!(
                    "{}  {}->{}  {:?}  {} {}  {}",
                    r.capability,
                    short(&r.provider),
                    short(&r.caller),
                    r.status,
                    r.price.amount,
                    r.price.unit,
                    utc(r.ended)
                )
            }),
        capmesh_api::LedgerKind::Countersignature => {
            Signed::<Countersignature>::from_bytes(&e.signed.0, limits)
                .and_then(|s| s.decode(limits))
                .map(|c| format!("of {}  by {}  {}", c.receipt, short(&c.caller), utc(c.signed)))
        }
    };
    let note = match &e.note {
        Some(n) => {
            let mut text = String::new();
            if let Some(t) = &n.trace {
                text.push_str(&format!("  trace {t}"));
            }
            if let (Some(name), Some(id)) = (&n.session_name, &n.session_id) {
                text.push_str(&format!("  session {name:?} {id}"));
            }
            text
        }
        None => String::new(),
    };
    match tail {
        Ok(tail) => format!("{head}  {tail}{note}"),
        Err(err) => format!("{head}  (does not decode: {}){note}", err.code()),
    }
}

/// A peer id shortened for a table: `…` and its last 8 characters.
fn short(peer: &PeerId) -> String {
    let text = peer.to_string();
    let tail = text.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
    format!("…{}", &text[tail..])
}

/// Unix ms as UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn utc(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, for days ≥ 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use capmesh_types::{Codec, NodeKey};
    use capmesh_wire::{CallStatus, Price, Validation};

    use super::*;

    #[test]
    fn utc_formats_unix_ms() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_760_000_000_123), "2025-10-09T08:53:20.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    fn receipt() -> Signed<Receipt> {
        let r = Receipt {
            call: FixedBytes([1; 16]),
            capability: Cid::of(Codec::Raw, b"cap"),
            caller: NodeKey::from_seed([2; 32]).peer_id(),
            provider: NodeKey::from_seed([1; 32]).peer_id(),
            offer: Cid::of(Codec::DagCbor, b"offer"),
            input: Digest::of(b"in"),
            output: None,
            price: Price { amount: 7, unit: "credit".into() },
            started: 1_760_000_000_000,
            ended: 1_760_000_000_123,
            status: CallStatus::TimedOut,
            validation: Validation::Skipped,
        };
        Signed::sign(&NodeKey::from_seed([1; 32]), &r).unwrap()
    }

    #[test]
    fn list_lines_name_the_call() {
        let r = receipt();
        let e = LedgerEntryJson::new(
            4,
            Digest::of(b"h"),
            capmesh_api::LedgerKind::Receipt,
            r.to_bytes(),
        );
        let record = r.decode(Limits::default()).unwrap();
        let line = entry_line(&e);
        let fields: Vec<&str> = line.split("  ").collect();
        assert_eq!(fields[..3], ["4", "Receipt", &r.id().to_string()]);
        assert_eq!(fields[3], Cid::of(Codec::Raw, b"cap").to_string());
        assert_eq!(fields[4], format!("{}->{}", short(&record.provider), short(&record.caller)));
        assert_eq!(fields[5..], ["TimedOut", "7 credit", "2025-10-09T08:53:20.123Z"]);
        assert_eq!(short(&record.provider).chars().count(), 9);
        assert!(record.provider.to_string().ends_with(&short(&record.provider)[3..]));

        let bad = LedgerEntryJson::new(5, Digest::of(b"h"), e.kind, vec![0xa0]);
        assert!(entry_line(&bad).starts_with("5  Receipt  -  (does not decode: "), "{bad:?}");
    }

    #[test]
    fn exports_read_back_and_malformed_lines_are_named() {
        let r = receipt();
        let e = LedgerEntryJson::new(
            0,
            capmesh_store::ledger_chain(
                &Digest::from_bytes([0; 32]),
                LedgerKind::Receipt,
                &r.to_bytes(),
            ),
            capmesh_api::LedgerKind::Receipt,
            r.to_bytes(),
        );
        let line = serde_json::to_string(&e).unwrap();
        let entries = read_export(format!("{line}\n\n").as_bytes(), "x").unwrap();
        assert_eq!(entries, [store_entry(&e)]);
        assert!(verify_ledger(&entries).is_ok());
        assert_eq!(
            summary(&entries),
            format!(
                "ok: 1 entries (1 receipts, 0 countersignatures), chain head {}",
                b64(e.hash.as_bytes())
            )
        );
        assert!(summary(&[]).ends_with(&format!("chain head {}", b64(&[0; 32]))));

        // `id` and `record` are not read: lies there change nothing.
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["id"] = "not an id".into();
        v["record"] = serde_json::json!({"payload": {"provider": "someone else"}});
        assert_eq!(read_export(v.to_string().as_bytes(), "x").unwrap(), entries);

        let text = format!("{line}\n{{\"seq\": 1}}\n");
        let err = read_export(text.as_bytes(), "export.ndjson").unwrap_err();
        assert!(format!("{err:#}").starts_with("export.ndjson line 2: not a ledger entry: "));
    }
}
