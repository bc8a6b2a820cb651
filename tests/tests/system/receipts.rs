//! `capmesh receipts list|show|export|verify` on a ledger the test writes itself (seeded keys,
//! fixed times, real signatures), offline and through a running node's API.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use capmesh_store::{Config, LedgerKind, Store, ledger_chain};
use capmesh_system_tests::User;
use capmesh_types::{Cid, Codec, Digest, NodeKey};
use capmesh_wire::{
    CallStatus, Countersignature, LedgerHead, Price, Receipt, Record, Signed, Validation, cbor,
    repr::FixedBytes,
};
use serde_json::Value;

const NOW: u64 = 1_760_000_000_000;

fn key(seed: u8) -> NodeKey {
    NodeKey::from_seed([seed; 32])
}

/// Receipt `n`: provider key 1, caller key 2.
fn receipt(n: u8, status: CallStatus) -> Receipt {
    Receipt {
        call: FixedBytes([n; 16]),
        capability: Cid::of(Codec::DagCbor, &[n]),
        caller: key(2).peer_id(),
        provider: key(1).peer_id(),
        offer: Cid::of(Codec::DagCbor, &[n, n]),
        input: Digest::of(&[b'i', n]),
        output: (status == CallStatus::Ok).then(|| Digest::of(&[b'o', n])),
        price: Price { amount: 10 * u64::from(n), unit: "usd-micro".into() },
        started: NOW + 1_000 * u64::from(n),
        ended: NOW + 1_000 * u64::from(n) + 250,
        status,
        validation: if status == CallStatus::Ok { Validation::Passed } else { Validation::Skipped },
    }
}

fn countersign(receipt: &Signed<Receipt>) -> Signed<Countersignature> {
    let c = Countersignature { receipt: receipt.id(), caller: key(2).peer_id(), signed: NOW + 9 };
    Signed::sign(&key(2), &c).unwrap()
}

/// Receipt 4, naming key 1 as its provider but signed by key 3.
fn forged() -> Signed<Receipt> {
    let r = receipt(4, CallStatus::Ok);
    let payload = cbor::to_vec(&r).unwrap();
    let sig = key(3).sign(<Receipt as Record>::DOMAIN.as_bytes(), &payload);
    Signed::from_parts(payload, sig)
}

/// The ledger: receipt 1 and its countersignature, receipt 2 (failed, never countersigned),
/// receipt 3 and its countersignature; with `forge`, then the [`forged`] receipt.
fn entries(forge: bool) -> Vec<(LedgerKind, Vec<u8>)> {
    let r1 = Signed::sign(&key(1), &receipt(1, CallStatus::Ok)).unwrap();
    let r2 = Signed::sign(&key(1), &receipt(2, CallStatus::Failed)).unwrap();
    let r3 = Signed::sign(&key(1), &receipt(3, CallStatus::Ok)).unwrap();
    let mut all = vec![
        (LedgerKind::Receipt, r1.to_bytes()),
        (LedgerKind::Countersignature, countersign(&r1).to_bytes()),
        (LedgerKind::Receipt, r2.to_bytes()),
        (LedgerKind::Receipt, r3.to_bytes()),
        (LedgerKind::Countersignature, countersign(&r3).to_bytes()),
    ];
    if forge {
        all.push((LedgerKind::Receipt, forged().to_bytes()));
    }
    all
}

fn receipt_id(n: u8) -> Cid {
    Signed::sign(&key(1), &receipt(n, if n == 2 { CallStatus::Failed } else { CallStatus::Ok }))
        .unwrap()
        .id()
}

const FILL_VAR: &str = "CAPMESH_TEST_FILL_LEDGER";
const FORGE_VAR: &str = "CAPMESH_TEST_FORGE_LEDGER";

/// Not a test: the child process of [`user_with_ledger`], which appends [`entries`] to the
/// ledger of the replica named by `CAPMESH_TEST_FILL_LEDGER` (and does nothing when it is not
/// set).
#[test]
fn fill_ledger_child() {
    let Some(dir) = std::env::var_os(FILL_VAR) else { return };
    let store = Store::open(Path::new(&dir), Config::default()).unwrap();
    for (kind, signed) in entries(std::env::var_os(FORGE_VAR).is_some()) {
        store.ledger_append(kind, &signed).unwrap();
    }
    store.close();
}

/// An initialized user whose node key is key 1 (the provider of every receipt in
/// [`entries`], so a party to every entry, as a real node is to its own ledger).
fn user_as_key_1() -> User {
    let user = User::new();
    user.run(&["init"]).success();
    let key_file = user.data_dir.path().join("node.key");
    std::fs::remove_file(&key_file).unwrap();
    key(1).save(&key_file).unwrap();
    user
}

/// An initialized user (node key 1) whose ledger holds [`entries`]. A child process writes it,
/// so that sled's lock is surely released when the CLI opens the replica (see `registry.rs`).
fn user_with_ledger(forge: bool) -> User {
    let user = user_as_key_1();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", "receipts::fill_ledger_child", "--test-threads", "1", "--nocapture"])
        .env(FILL_VAR, user.data_dir.path().join("replica"));
    if forge {
        child.env(FORGE_VAR, "1");
    }
    let out = child.output().unwrap();
    assert!(
        out.status.success(),
        "filling the ledger failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    user
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

fn unb64(text: &Value) -> Vec<u8> {
    data_encoding::BASE64URL_NOPAD.decode(text.as_str().unwrap().as_bytes()).unwrap()
}

/// Runs `capmesh args…` and returns (exit code, stdout, stderr).
fn run_code(user: &User, args: &[&str]) -> (Option<i32>, String, String) {
    let out = user.command(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// What `receipts verify` prints for a sound ledger of `entries`.
fn ok_line(entries: &[(LedgerKind, Vec<u8>)]) -> String {
    let mut head = Digest::from_bytes([0; 32]);
    for (kind, signed) in entries {
        head = ledger_chain(&head, *kind, signed);
    }
    let receipts = entries.iter().filter(|(k, _)| *k == LedgerKind::Receipt).count();
    format!(
        "ok: {} entries ({receipts} receipts, {} countersignatures), chain head {}\n",
        entries.len(),
        entries.len() - receipts,
        b64(head.as_bytes())
    )
}

/// What `receipts verify FILE` prints for a sound export of `entries` whose head key 1 signed:
/// [`ok_line`], then who signed the head (the time varies).
#[track_caller]
fn assert_ok_export(out: &str, entries: &[(LedgerKind, Vec<u8>)]) {
    let head = format!("head: signed by {} at ", key(1).peer_id());
    let (ok, rest) = out.split_at(out.find('\n').map_or(out.len(), |n| n + 1));
    assert_eq!(ok, ok_line(entries), "{out}");
    assert!(rest.starts_with(&head) && rest.lines().count() == 1, "{out}");
}

/// The entry lines of an export: all but its last line, the head (which differs between two
/// exports of one ledger only by when it was signed).
#[track_caller]
fn entry_lines(export: &str) -> String {
    let lines: Vec<&str> = export.lines().collect();
    let (head, entries) = lines.split_last().expect("an export has a head line");
    let head: Value = serde_json::from_str(head).unwrap();
    assert_eq!(head["kind"], "Head", "{export}");
    assert_eq!(head["record"]["payload"]["node"], key(1).peer_id().to_string());
    entries.iter().map(|l| format!("{l}\n")).collect()
}

/// Checks the text of `receipts list` against [`entries`], from `first` on.
fn check_list(out: &str, first: usize, count: usize) {
    let all = entries(false);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), count, "{out}");
    for (i, line) in lines.iter().enumerate() {
        let seq = first + i;
        let fields: Vec<&str> = line.split("  ").collect();
        let (kind, signed) = &all[seq];
        assert_eq!(fields[0], seq.to_string(), "{line}");
        assert_eq!(fields[1], format!("{kind:?}"), "{line}");
        match kind {
            LedgerKind::Receipt => {
                let s = Signed::<Receipt>::from_bytes(signed, Default::default()).unwrap();
                let r = s.decode(Default::default()).unwrap();
                assert_eq!(fields[2], s.id().to_string(), "{line}");
                assert_eq!(fields[3], r.capability.to_string(), "{line}");
                let provider = r.provider.to_string();
                let caller = r.caller.to_string();
                let (p, c) = fields[4].split_once("->").unwrap();
                assert!(p.starts_with('…') && provider.ends_with(&p[3..]), "{line}");
                assert!(c.starts_with('…') && caller.ends_with(&c[3..]), "{line}");
                assert_eq!(fields[5], format!("{:?}", r.status), "{line}");
                assert_eq!(fields[6], format!("{} usd-micro", r.price.amount), "{line}");
                assert!(fields[7].starts_with("2025-10-09T08:53:2") && fields[7].ends_with('Z'));
            }
            LedgerKind::Countersignature => {
                let s = Signed::<Countersignature>::from_bytes(signed, Default::default()).unwrap();
                let c = s.decode(Default::default()).unwrap();
                assert_eq!(fields[2], s.id().to_string(), "{line}");
                assert_eq!(fields[3], format!("of {}", c.receipt), "{line}");
                assert!(fields[4].starts_with("by …"), "{line}");
                assert_eq!(fields[5], "2025-10-09T08:53:20.009Z", "{line}");
            }
        }
    }
}

#[test]
fn receipts_list_show_export_and_verify_an_offline_ledger() {
    let user = user_with_ledger(false);
    let all = entries(false);

    let run = user.run(&["receipts", "list"]);
    assert_eq!(
        run.stderr, "SEQ  KIND  ID  DETAILS\n",
        "the header; the whole ledger fits: no `more`"
    );
    check_list(&run.success(), 0, 5);
    let run = user.run(&["receipts", "list", "--from", "1", "--limit", "2"]);
    assert!(run.stderr.contains("more: --from 3"), "{}", run.stderr);
    check_list(&run.success(), 1, 2);
    let run = user.run(&["receipts", "list", "--from", "9"]);
    assert!(run.stderr.contains("no entries from 9"), "{}", run.stderr);
    assert_eq!(run.success(), "");

    // --json: one entry per line, in the API's shape.
    let out = user.run(&["receipts", "list", "--json"]).success();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    for (seq, (line, (kind, signed))) in lines.iter().zip(&all).enumerate() {
        let mut keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["hash", "id", "kind", "note", "record", "seq", "signed"]);
        assert_eq!(line["note"], Value::Null, "no call here was made through a node");
        assert_eq!(line["seq"], seq);
        assert_eq!(line["kind"], format!("{kind:?}"));
        assert_eq!(unb64(&line["signed"]), *signed);
        assert_eq!(line["record"]["payload"]["caller"], key(2).peer_id().to_string());
    }
    assert_eq!(lines[0]["id"], receipt_id(1).to_string());
    assert_eq!(lines[0]["record"]["payload"]["provider"], key(1).peer_id().to_string());
    assert_eq!(lines[1]["record"]["payload"]["receipt"], receipt_id(1).to_string());

    // show: the receipt with its countersignature, each verified.
    let id1 = receipt_id(1).to_string();
    let out = user.run(&["receipts", "show", &id1]).success();
    let provider = key(1).peer_id().to_string();
    let caller = key(2).peer_id().to_string();
    assert!(
        out.starts_with(&format!(
            "receipt {id1} (ledger entry 0): verified, signed by provider {provider}\n"
        )),
        "{out}"
    );
    let cs = format!("(ledger entry 1): verified, signed by caller {caller}\n");
    assert!(out.contains(&cs), "{out}");
    assert!(out.contains(&format!("\"provider\": \"{provider}\"")), "pretty JSON: {out}");
    assert!(out.contains(&format!("\"receipt\": \"{id1}\"")), "{out}");
    let out = user.run(&["receipts", "show", &receipt_id(2).to_string()]).success();
    assert!(out.contains("(ledger entry 2): verified"), "{out}");
    assert!(out.contains("no countersignature in the ledger"), "{out}");
    let unknown = Cid::of(Codec::DagCbor, b"no such receipt").to_string();
    let err = user.run(&["receipts", "show", &unknown]).failure();
    assert!(err.contains(&format!("no receipt {unknown}")), "{err}");

    // export, to a file and to stdout alike; verify the node's ledger and the export.
    let file = user.data_dir.path().join("ledger.ndjson");
    let run = user.run(&["receipts", "export", "--out", file.to_str().unwrap()]);
    assert!(run.stderr.contains("exported 5 ledger entries"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("a head signed by {}", key(1).peer_id())));
    run.success();
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 6, "five entries and the head");
    let entries_text = entry_lines(&exported);
    assert_eq!(entry_lines(&user.run(&["receipts", "export"]).success()), entries_text);
    assert_eq!(entries_text, format!("{}\n", out_lines(&user)));

    assert_eq!(user.run(&["receipts", "verify"]).success(), ok_line(&all));
    assert_ok_export(&user.run(&["receipts", "verify", file.to_str().unwrap()]).success(), &all);
    // From stdin, and without any data directory: an export is checked anywhere.
    let elsewhere = User::new();
    assert_ok_export(
        &elsewhere.run_with_stdin(&["receipts", "verify", "-"], exported.as_bytes()).success(),
        &all,
    );
    assert_eq!(std::fs::read_dir(elsewhere.data_dir.path()).unwrap().count(), 0);

    // The head on demand: the export's last line, signed anew.
    let head: Value = serde_json::from_str(&user.run(&["receipts", "head"]).success()).unwrap();
    let last: Value = serde_json::from_str(exported.lines().last().unwrap()).unwrap();
    assert_eq!(head["kind"], "Head");
    for field in ["node", "len", "hash"] {
        assert_eq!(head["record"]["payload"][field], last["record"]["payload"][field], "{field}");
    }
    assert_eq!(head["record"]["payload"]["len"], 5);
}

/// `receipts list --json`, without its final newline.
fn out_lines(user: &User) -> String {
    user.run(&["receipts", "list", "--json"]).success().trim_end().to_owned()
}

/// The export of a fresh ledger, one line per entry, then the head.
fn exported_lines() -> (User, Vec<Value>) {
    let user = user_with_ledger(false);
    let out = user.run(&["receipts", "export"]).success();
    let lines = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (user, lines)
}

/// Writes `lines` as an export and runs `receipts verify` on it: (exit code, stdout, stderr).
fn verify_lines(user: &User, lines: &[Value]) -> (Option<i32>, String, String) {
    let file = user.data_dir.path().join("tampered.ndjson");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    run_code(user, &["receipts", "verify", file.to_str().unwrap()])
}

#[track_caller]
fn assert_bad(result: (Option<i32>, String, String), seq: u64, reason: &str) {
    let (code, out, err) = result;
    assert_eq!(code, Some(1), "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "", "{err}");
    let expected = format!("ledger entry {seq} is bad: {reason}");
    assert!(err.starts_with(&expected) && err.lines().count() == 1, "{expected:?}: {err:?}");
}

#[test]
fn verify_names_the_first_bad_entry_of_a_tampered_export() {
    let (user, lines) = exported_lines();
    assert_ok_export(&verify_lines(&user, &lines).1, &entries(false));

    // One byte of receipt 2's input digest changed: its chain hash no longer matches.
    let mut signed = unb64(&lines[2]["signed"]);
    let input = Digest::of(b"i\x02");
    let at = signed.windows(32).position(|w| w == input.as_bytes()).unwrap();
    signed[at] ^= 1;
    let mut altered = lines.clone();
    altered[2]["signed"] = b64(&signed).into();
    assert_bad(verify_lines(&user, &altered), 2, "chain hash does not match");

    // The chain recomputed over the altered bytes: the signature gives it away.
    let mut head = Digest::from_bytes(unb64(&altered[1]["hash"]).try_into().unwrap());
    for line in &mut altered[2..5] {
        let kind = if line["kind"] == "Receipt" {
            LedgerKind::Receipt
        } else {
            LedgerKind::Countersignature
        };
        head = ledger_chain(&head, kind, &unb64(&line["signed"]));
        line["hash"] = b64(head.as_bytes()).into();
    }
    assert_bad(verify_lines(&user, &altered), 2, "the signature does not verify");

    // A deleted line, or two lines swapped: the first entry out of place is named.
    let mut deleted = lines.clone();
    deleted.remove(2);
    assert_bad(verify_lines(&user, &deleted), 3, "expected sequence 2");
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    assert_bad(verify_lines(&user, &swapped), 2, "expected sequence 1");
    // A receipt retyped as a countersignature.
    let mut retyped = lines.clone();
    retyped[3]["kind"] = "Countersignature".into();
    assert_bad(verify_lines(&user, &retyped), 3, "chain hash does not match");

    // `id` and `record` are derived from `signed`: a line whose are not is refused by name.
    let mut relabelled = lines.clone();
    relabelled[0]["id"] = receipt_id(3).to_string().into();
    assert_refused(
        verify_lines(&user, &relabelled),
        "tampered.ndjson line 1 (ledger entry 0): `id` is not what its signed bytes give",
    );
    let mut edited = lines.clone();
    edited[3]["record"]["payload"]["price"]["amount"] = 0.into();
    assert_refused(
        verify_lines(&user, &edited),
        "tampered.ndjson line 4 (ledger entry 3): `record` is not what its signed bytes give",
    );

    // A line that is not an entry is named by its line number.
    let file = user.data_dir.path().join("malformed.ndjson");
    let mut text: Vec<String> = lines.iter().map(Value::to_string).collect();
    text[3] = r#"{"seq": 3, "hash": "AAAA", "kind": "Receipt", "signed": ""}"#.into();
    std::fs::write(&file, text.join("\n")).unwrap();
    let (code, _, err) = run_code(&user, &["receipts", "verify", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("malformed.ndjson line 4: not a ledger entry"), "{err}");
    text[3] = "{not json".into();
    std::fs::write(&file, text.join("\n")).unwrap();
    let (code, _, err) = run_code(&user, &["receipts", "verify", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 4: not a ledger entry"), "{err}");
    let err = user.run(&["receipts", "verify", "/nonexistent/ledger.ndjson"]).failure();
    assert!(err.contains("cannot read /nonexistent/ledger.ndjson"), "{err}");
}

/// `receipts verify` refused the export, and stderr is one line that starts with the file's
/// path, then `expected`.
#[track_caller]
fn assert_refused(result: (Option<i32>, String, String), expected: &str) {
    let (code, out, err) = result;
    assert_eq!(code, Some(1), "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "", "{err}");
    let at = err.find(expected).unwrap_or_else(|| panic!("{expected:?}: {err:?}"));
    assert!(err[..at].starts_with('/') && err.lines().count() == 1, "{expected:?}: {err:?}");
}

/// The head line of an export: a head of `len` entries ending in `hash`, signed by `by`.
fn head_line(by: &NodeKey, len: u64, hash: &Value) -> Value {
    let hash = Digest::from_bytes(unb64(hash).try_into().unwrap());
    let head = LedgerHead { node: by.peer_id(), len, hash, issued: NOW };
    let signed = Signed::sign(by, &head).unwrap();
    serde_json::json!({
        "kind": "Head",
        "signed": b64(&signed.to_bytes()),
        "record": serde_json::to_value(&signed).unwrap(),
    })
}

#[test]
fn verify_refuses_an_export_whose_length_is_not_the_signed_one() {
    let (user, lines) = exported_lines();
    assert_eq!(lines.len(), 6);
    assert_ok_export(&verify_lines(&user, &lines).1, &entries(false));

    // An empty file, or blank lines only: not an export (not even of an empty ledger).
    assert_refused(
        verify_lines(&user, &[]),
        "tampered.ndjson is empty: a ledger export holds its entries and ends with the node's \
         signed head (`capmesh receipts export`), even for an empty ledger",
    );
    let file = user.data_dir.path().join("blank.ndjson");
    std::fs::write(&file, "\n\n").unwrap();
    assert_refused(run_code(&user, &["receipts", "verify", file.to_str().unwrap()]), "is empty");

    // The entries without their head: every entry sound, but the length is nobody's word.
    assert_refused(
        verify_lines(&user, &lines[..5]),
        "tampered.ndjson has no signed head: its last line is ledger entry 4",
    );
    // Truncated: the first three entries, the head of five.
    let truncated = [&lines[..3], &lines[5..]].concat();
    let (_, _, err) = verify_lines(&user, &truncated);
    assert_refused(verify_lines(&user, &truncated), "tampered.ndjson line 4 (the head): ");
    assert!(err.contains("counts 5 entries, the ledger has 3: entries were removed"), "{err}");
    // The head alone.
    let (_, _, err) = verify_lines(&user, &lines[5..]);
    assert!(err.contains("counts 5 entries, the ledger has 0"), "{err}");
    // A head that says three entries, over five.
    let short = [&lines[..5], &[head_line(&key(1), 3, &lines[2]["hash"])]].concat();
    let (_, _, err) = verify_lines(&user, &short);
    assert!(err.contains("counts 3 entries, the ledger has 5: entries were added"), "{err}");
    // The right length, another chain hash.
    let other = [&lines[..5], &[head_line(&key(1), 5, &lines[3]["hash"])]].concat();
    let (_, _, err) = verify_lines(&user, &other);
    assert!(err.contains("names another chain hash than ledger entry 4's"), "{err}");
    // A line after the head.
    let after = [&lines[..4], &lines[5..], &lines[4..5]].concat();
    assert_refused(
        verify_lines(&user, &after),
        "tampered.ndjson line 6: a line after the head (line 5)",
    );

    // A head signed by a node that is no party to these calls.
    let stranger = [&lines[..5], &[head_line(&key(3), 5, &lines[4]["hash"])]].concat();
    let (_, _, err) = verify_lines(&user, &stranger);
    assert!(
        err.contains(&format!("ledger entry 0 is not one of {}'s calls", key(3).peer_id())),
        "{err}"
    );
    // The caller's head over the same entries holds: it is a party to every one.
    let callers = [&lines[..5], &[head_line(&key(2), 5, &lines[4]["hash"])]].concat();
    assert_eq!(verify_lines(&user, &callers).0, Some(0));
    // A head whose signature does not hold, and one whose `record` is not its bytes.
    let mut forged = lines.clone();
    let mut signed = unb64(&forged[5]["signed"]);
    signed[20] ^= 1;
    forged[5]["signed"] = b64(&signed).into();
    let (_, _, err) = verify_lines(&user, &forged);
    assert!(
        err.contains("the ledger head does not verify: the signature does not verify"),
        "{err}"
    );
    let mut edited = lines.clone();
    edited[5]["record"]["payload"]["len"] = 3.into();
    assert_refused(
        verify_lines(&user, &edited),
        "tampered.ndjson line 6 (the head): `record` is not what its signed bytes give",
    );

    // An empty ledger's export is its head alone, and verifies.
    let empty = user_as_key_1();
    let out = empty.run(&["receipts", "export"]).success();
    assert_eq!(out.lines().count(), 1, "{out}");
    let file = empty.data_dir.path().join("empty.ndjson");
    std::fs::write(&file, empty.run(&["receipts", "export"]).success()).unwrap();
    assert_ok_export(&empty.run(&["receipts", "verify", file.to_str().unwrap()]).success(), &[]);
}

#[test]
fn verify_names_a_forged_receipt() {
    let user = user_with_ledger(true);
    let forged_id = forged().id().to_string();
    // Listed like any other entry: the ledger keeps what it was given.
    let out = user.run(&["receipts", "list"]).success();
    assert_eq!(out.lines().count(), 6);
    assert!(out.lines().last().unwrap().starts_with(&format!("5  Receipt  {forged_id}  ")));

    assert_bad(run_code(&user, &["receipts", "verify"]), 5, "the signature does not verify");
    let file = user.data_dir.path().join("ledger.ndjson");
    user.run(&["receipts", "export", "--out", file.to_str().unwrap()]).success();
    assert_bad(
        run_code(&user, &["receipts", "verify", file.to_str().unwrap()]),
        5,
        "the signature does not verify",
    );

    let (code, out, _) = run_code(&user, &["receipts", "show", &forged_id]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with(&format!("receipt {forged_id} (ledger entry 5): DOES NOT VERIFY: ")),
        "{out}"
    );
    assert!(out.contains("no countersignature in the ledger"), "{out}");
}

/// A `capmesh run` child on 127.0.0.1, killed if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn receipts_go_through_the_api_while_a_node_holds_the_ledger() {
    let user = user_with_ledger(false);
    let addr_file: PathBuf = user.data_dir.path().join("api.addr");
    let child = user
        .command(&["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Running(child);
    wait_until("api.addr written", || addr_file.exists());

    // The node holds sled's lock: without api.addr the CLI could not read the ledger, so the
    // answers below come through the API.
    let hidden = user.data_dir.path().join("api.addr.hidden");
    std::fs::rename(&addr_file, &hidden).unwrap();
    let err = user.run_within(Duration::from_secs(30), &["receipts", "list"]).failure();
    assert!(err.contains("in use by a running capmesh node"), "{err}");
    std::fs::rename(&hidden, &addr_file).unwrap();

    check_list(&user.run(&["receipts", "list"]).success(), 0, 5);
    let run = user.run(&["receipts", "list", "--from", "3", "--limit", "1"]);
    assert!(run.stderr.contains("more: --from 4"), "{}", run.stderr);
    check_list(&run.success(), 3, 1);
    let ok = ok_line(&entries(false));
    assert_eq!(user.run(&["receipts", "verify"]).success(), ok);
    let out = user.run(&["receipts", "show", &receipt_id(3).to_string()]).success();
    assert!(out.contains("(ledger entry 3): verified"), "{out}");
    assert!(out.contains("(ledger entry 4): verified, signed by caller"), "{out}");
    let unknown = Cid::of(Codec::DagCbor, b"no such receipt").to_string();
    let err = user.run(&["receipts", "show", &unknown]).failure();
    assert!(err.contains(&format!("no receipt {unknown}")), "{err}");
    let exported = user.run(&["receipts", "export"]).success();
    assert_eq!(exported.lines().count(), 6);
    // Exported through the API, the head is signed all the same and verifies anywhere.
    assert_ok_export(
        &User::new().run_with_stdin(&["receipts", "verify", "-"], exported.as_bytes()).success(),
        &entries(false),
    );

    // Stopped cleanly, the node leaves the same ledger to the offline commands.
    let pid = node.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit on SIGTERM");
    assert!(!addr_file.exists());
    assert_eq!(user.run(&["receipts", "verify"]).success(), ok);
    assert_eq!(entry_lines(&user.run(&["receipts", "export"]).success()), entry_lines(&exported));
}
