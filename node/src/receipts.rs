//! `capmesh receipts list|show|verify|export|head`: the receipt ledger (DESIGN §5 step 5),
//! through the running node's API or, when no node runs, read from the replica offline (as
//! `registry query` does). Entries are printed in the API's one JSON shape,
//! [`LedgerEntryJson`], whichever way they were read, and `verify FILE` checks an export
//! anywhere, without a node.
//!
//! An export ends with the node's signed [`LedgerHead`] (protocol.md §6.9, §6.10): the number
//! of entries and the last chain hash, signed with the node key of the data directory. The
//! chain alone cannot tell a truncated ledger from a whole one; the head can.

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use capmesh::{DataDir, registry, remote};
use capmesh_api::{
    Client, ClientError, ErrorCode, LEDGER_PAGE_MAX, LedgerEntryJson, LedgerHeadLine, LedgerPage,
    LedgerRequest, ReceiptEntries,
};
use capmesh_store::{LedgerEntry, LedgerKind, Store, ledger_chain, verify_head, verify_ledger};
use capmesh_types::{Cid, Digest, NodeKey, PeerId};
use capmesh_wire::{
    Countersignature, LedgerHead, Receipt, Record, Signed, VerifyError,
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
    /// offline: besides the chain and signatures, every line's `id` and `record` must be those
    /// of its `signed` bytes, and the last line must be the node's signed head, whose entry
    /// count and chain hash must be the file's (a truncated or emptied export is refused) and
    /// whose signer must be a party to every entry. Prints `ok: N entries (R receipts, C
    /// countersignatures), chain head <hash>` (and for a file, on a second line, who signed the
    /// head and when), or on stderr what is wrong (`ledger entry SEQ is bad: REASON`, `FILE line
    /// N: …`, `the head …`) and exits 1.
    Verify {
        /// An export (`receipts export`), or - for stdin.
        file: Option<PathBuf>,
    },
    /// Write the whole ledger as NDJSON, one entry per line (the API's shape), then the node's
    /// signed head (`{"kind": "Head", "signed": …, "record": …}`: entry count and last chain
    /// hash, signed with the node key).
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the node's signed ledger head now: one JSON line, as an export ends with.
    Head,
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
                return Err(e.into());
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
                writeln!(out, "{line}")?;
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
            let read = if file == Path::new("-") {
                read_export(std::io::stdin().lock(), "stdin")?
            } else {
                let f =
                    File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
                read_export(BufReader::new(f), &file.display().to_string())?
            };
            return Ok(report_export(read)?);
        }
        ReceiptsCommand::Verify { file: None } => {
            let entries = Ledger::open(&data_dir()?)?.entries()?;
            return Ok(report(&entries)?);
        }
        ReceiptsCommand::Head => {
            let dir = data_dir()?;
            let key = dir.load_key()?;
            let (len, hash) = Ledger::open(&dir)?.tip()?;
            outln!("{}", head_line(&key, len, hash)?)?;
        }
        ReceiptsCommand::Export { out } => {
            let dir = data_dir()?;
            let key = dir.load_key()?;
            let ledger = Ledger::open(&dir)?;
            let n = match &out {
                Some(path) => {
                    let file = File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = BufWriter::new(file);
                    let n = export(&ledger, &key, &mut w, &path.display().to_string())?;
                    w.into_inner()
                        .map_err(|e| e.into_error())
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    n
                }
                None => {
                    let mut w = BufWriter::new(std::io::stdout().lock());
                    let n = export(&ledger, &key, &mut w, "stdout")?;
                    w.flush()?;
                    n
                }
            };
            let to = out.map(|p| format!(" to {}", p.display())).unwrap_or_default();
            eprintln!("exported {n} ledger entries{to}, and a head signed by {}", key.peer_id());
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

    /// The ledger's length and last chain hash, as a [`LedgerHead`] states them.
    fn tip(&self) -> anyhow::Result<(u64, Digest)> {
        match self {
            Ledger::Node { .. } => {
                let len = self.page(0, 1)?.len;
                if len == 0 {
                    return Ok((0, Digest::from_bytes(LedgerHead::EMPTY_HASH)));
                }
                // The last entry of the length just read (the ledger only grows).
                let last = self.page(len - 1, 1)?;
                let e = last.entries.first().context("the node's ledger lost its last entry")?;
                Ok((e.seq + 1, e.hash))
            }
            Ledger::Offline(store) => Ok(store.ledger_tip()?),
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

/// Writes every entry as one JSON line to `w` (named `to` in errors), then the head signed by
/// `key` over what was written; returns how many entries.
///
/// The head is signed here, on demand, from the entries just written: it then covers exactly
/// the export (entries appended meanwhile are beyond it), and it needs no API of its own, so it
/// is the same whether the ledger was read through a running node or offline. The chain and
/// sequence numbers are recomputed on the way (one BLAKE3 per entry), so the key never signs
/// a head over a broken chain; signatures are not checked here (`receipts verify` does): the
/// head states the ledger's length, not that every record in it is sound.
fn export(ledger: &Ledger, key: &NodeKey, w: &mut impl Write, to: &str) -> anyhow::Result<u64> {
    let (mut prev, mut next) = (Digest::from_bytes(LedgerHead::EMPTY_HASH), 0u64);
    let n = ledger.for_each(|e| {
        let entry = store_entry(e);
        let reason = if entry.seq != next {
            Some(format!("expected sequence {next}"))
        } else if ledger_chain(&prev, entry.kind, &entry.signed) != entry.hash {
            Some("chain hash does not match".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            anyhow::bail!(
                "ledger entry {} is bad: {reason}; the export stops before it, without a head \
                 (`capmesh receipts verify` checks the whole ledger)",
                entry.seq
            );
        }
        (prev, next) = (entry.hash, next + 1);
        let mut line = serde_json::to_vec(e)?;
        line.push(b'\n');
        w.write_all(&line).with_context(|| format!("cannot write {to}"))
    })?;
    let mut line = head_line(key, n, prev)?;
    line.push('\n');
    w.write_all(line.as_bytes()).with_context(|| format!("cannot write {to}"))?;
    Ok(n)
}

/// The export line of a head `(len, hash)` signed now by `key`.
fn head_line(key: &NodeKey, len: u64, hash: Digest) -> anyhow::Result<String> {
    let head = registry::signed_head(key, len, hash).context("cannot sign the ledger head")?;
    Ok(serde_json::to_string(&head)?)
}

/// One entry line of an export, as verification reads it: every member of
/// [`LedgerEntryJson`], and no other. `id` and `record` are derived from `signed` and must be
/// what `signed` gives; `note` is local and unsigned (protocol.md §6.10), read but not judged.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportLine {
    seq: u64,
    hash: FixedBytes<32>,
    kind: capmesh_api::LedgerKind,
    id: serde_json::Value,
    signed: Bytes,
    record: serde_json::Value,
    /// Local and unsigned: allowed, not judged.
    #[serde(default, rename = "note")]
    _note: serde_json::Value,
}

/// An export as read: its entries, what each entry line claims its signed bytes give, and its
/// head line (with its line number), if any.
struct Export {
    name: String,
    entries: Vec<LedgerEntry>,
    /// Per entry: its line number, `id` and `record`.
    claims: Vec<(usize, serde_json::Value, serde_json::Value)>,
    head: Option<(usize, LedgerHeadLine)>,
}

/// Reads an export (one JSON entry per line, then the head; blank lines are skipped). A line
/// that is neither an entry nor a head is an error naming its line number (`Err`); a line
/// after the head is the verdict (`Ok(Err(reason))`).
fn read_export(reader: impl BufRead, name: &str) -> anyhow::Result<Result<Export, String>> {
    let mut export =
        Export { name: name.to_owned(), entries: Vec::new(), claims: Vec::new(), head: None };
    for (i, line) in reader.lines().enumerate() {
        let at = format!("{name} line {}", i + 1);
        let line = line.with_context(|| format!("{at}: cannot read"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = capmesh_wire::json::from_str_strict(&line)
            .with_context(|| format!("{at}: not a ledger entry"))?;
        if let Some((n, _)) = &export.head {
            return Ok(Err(format!(
                "{at}: a line after the head (line {n}); the head must be the last line"
            )));
        }
        if value.get("kind").and_then(serde_json::Value::as_str) == Some("Head") {
            let head: LedgerHeadLine = serde_json::from_value(value)
                .with_context(|| format!("{at}: not a ledger head"))?;
            export.head = Some((i + 1, head));
            continue;
        }
        let e: ExportLine =
            serde_json::from_value(value).with_context(|| format!("{at}: not a ledger entry"))?;
        export.claims.push((i + 1, e.id, e.record));
        export.entries.push(LedgerEntry {
            seq: e.seq,
            hash: Digest::from_bytes(e.hash.0),
            kind: store_kind(e.kind),
            signed: e.signed.0,
        });
    }
    Ok(Ok(export))
}

/// Verifies the node's ledger and says so: `ok: …` on stdout, or the first bad entry on
/// stderr.
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

/// Verifies an export and says so: `ok: …` and the head on stdout, or on stderr the first thing
/// wrong with it (protocol.md §6.10): its lines, its entries, then its head.
fn report_export(read: Result<Export, String>) -> std::io::Result<ExitCode> {
    match check_export(read) {
        Ok((export, head)) => {
            outln!("{}", summary(&export.entries))?;
            outln!("head: signed by {} at {}", head.node, utc(head.issued))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("{reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The checks of an export after its lines were read, in the order of protocol.md §6.10: the
/// entries (sequence, chain, signatures), then what each line derives from its signed bytes,
/// then the head (signature, parties, length, chain hash, its own `record`). The verdict as
/// text.
fn check_export(read: Result<Export, String>) -> Result<(Export, LedgerHead), String> {
    let export = read?;
    let name = &export.name;
    if export.entries.is_empty() && export.head.is_none() {
        return Err(format!(
            "{name} is empty: a ledger export holds its entries and ends with the node's signed \
             head (`capmesh receipts export`), even for an empty ledger"
        ));
    }
    verify_ledger(&export.entries).map_err(|e| e.to_string())?;
    for (e, (line, id, record)) in export.entries.iter().zip(&export.claims) {
        // What the signed bytes give: the API's own derivation, so the two cannot drift.
        let kind = match e.kind {
            LedgerKind::Receipt => capmesh_api::LedgerKind::Receipt,
            LedgerKind::Countersignature => capmesh_api::LedgerKind::Countersignature,
        };
        let derived =
            serde_json::to_value(LedgerEntryJson::new(e.seq, e.hash, kind, e.signed.clone()))
                .map_err(|err| format!("{name} line {line}: {err}"))?;
        for (member, claimed) in [("id", id), ("record", record)] {
            if derived[member] != *claimed {
                return Err(format!(
                    "{name} line {line} (ledger entry {}): `{member}` is not what its signed \
                     bytes give",
                    e.seq
                ));
            }
        }
    }
    let Some((line, head)) = &export.head else {
        return Err(format!(
            "{name} has no signed head: its last line is ledger entry {}, and an export ends \
             with the node's signed head, without which a truncated export cannot be told from \
             a whole one",
            export.entries.len().saturating_sub(1)
        ));
    };
    let verified = verify_head(&export.entries, &head.signed.0)
        .map_err(|e| format!("{name} line {line} (the head): {e}"))?;
    let derived = Signed::<LedgerHead>::from_bytes(&head.signed.0, Limits::default())
        .ok()
        .and_then(|signed| serde_json::to_value(&signed).ok());
    if derived.as_ref() != Some(&head.record) {
        return Err(format!(
            "{name} line {line} (the head): `record` is not what its signed bytes give"
        ));
    }
    Ok((export, verified))
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

    /// An export of `entries` (kind, signed bytes), with the head `key` signs over it.
    fn export_text(entries: &[(capmesh_api::LedgerKind, Vec<u8>)], key: &NodeKey) -> String {
        let mut prev = Digest::from_bytes([0; 32]);
        let mut text = String::new();
        for (seq, (kind, signed)) in entries.iter().enumerate() {
            prev = capmesh_store::ledger_chain(&prev, store_kind(*kind), signed);
            let e = LedgerEntryJson::new(seq as u64, prev, *kind, signed.clone());
            text += &format!("{}\n", serde_json::to_string(&e).unwrap());
        }
        text + &head_line(key, entries.len() as u64, prev).unwrap() + "\n"
    }

    fn verdict(text: &str) -> Result<(Export, LedgerHead), String> {
        check_export(read_export(text.as_bytes(), "x").unwrap())
    }

    #[test]
    fn exports_read_back_and_malformed_lines_are_named() {
        let r = receipt();
        let provider = NodeKey::from_seed([1; 32]);
        let text = export_text(&[(capmesh_api::LedgerKind::Receipt, r.to_bytes())], &provider);
        let (export, head) = verdict(&format!("{text}\n")).unwrap();
        assert_eq!(export.entries.len(), 1);
        assert_eq!((head.node, head.len), (provider.peer_id(), 1));
        assert_eq!(
            summary(&export.entries),
            format!(
                "ok: 1 entries (1 receipts, 0 countersignatures), chain head {}",
                b64(export.entries[0].hash.as_bytes())
            )
        );
        assert!(summary(&[]).ends_with(&format!("chain head {}", b64(&[0; 32]))));
        // The caller is a party too; an empty ledger's export is its head alone.
        let caller = NodeKey::from_seed([2; 32]);
        verdict(&export_text(&[(capmesh_api::LedgerKind::Receipt, r.to_bytes())], &caller))
            .unwrap();
        assert_eq!(verdict(&export_text(&[], &provider)).unwrap().1.len, 0);

        // `id` and `record` must be what the signed bytes give.
        let lines: Vec<&str> = text.lines().collect();
        let mut v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        v["record"]["payload"]["price"]["amount"] = 8.into();
        let err = verdict(&format!("{v}\n{}\n", lines[1])).err().unwrap();
        assert_eq!(err, "x line 1 (ledger entry 0): `record` is not what its signed bytes give");
        let mut v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        v["id"] = Cid::of(Codec::DagCbor, b"other").to_string().into();
        let err = verdict(&format!("{v}\n{}\n", lines[1])).err().unwrap();
        assert!(err.contains("`id` is not what"), "{err}");
        let mut h: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        h["record"]["payload"]["len"] = 2.into();
        let err = verdict(&format!("{}\n{h}\n", lines[0])).err().unwrap();
        assert_eq!(err, "x line 2 (the head): `record` is not what its signed bytes give");

        // Empty, headless, truncated, a line after the head, a head by a stranger.
        assert!(verdict("\n").err().unwrap().starts_with("x is empty"));
        let err = verdict(&format!("{}\n", lines[0])).err().unwrap();
        assert!(err.starts_with("x has no signed head: its last line is ledger entry 0"), "{err}");
        let err = verdict(&format!("{}\n", lines[1])).err().unwrap();
        assert!(err.starts_with("x line 1 (the head): the head signed by "), "{err}");
        assert!(err.contains("counts 1 entries, the ledger has 0"), "{err}");
        let err = verdict(&format!("{}\n{}\n", lines[1], lines[0])).err().unwrap();
        assert!(err.starts_with("x line 2: a line after the head (line 1)"), "{err}");
        let stranger = NodeKey::from_seed([9; 32]);
        let text = export_text(&[(capmesh_api::LedgerKind::Receipt, r.to_bytes())], &stranger);
        let err = verdict(&text).err().unwrap();
        assert!(err.contains("ledger entry 0 is not one of"), "{err}");

        let text = format!("{}\n{{\"seq\": 1}}\n", lines[0]);
        let err = read_export(text.as_bytes(), "export.ndjson").err().unwrap();
        assert!(format!("{err:#}").starts_with("export.ndjson line 2: not a ledger entry: "));
        let mut v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        v["extra"] = 1.into();
        let err = read_export(v.to_string().as_bytes(), "x").err().unwrap();
        assert!(format!("{err:#}").contains("unknown field `extra`"), "{err:#}");
    }
}
