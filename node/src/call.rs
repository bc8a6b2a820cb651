//! `capmesh call` and `capmesh attest`: a tool call and an attestation through the running
//! node's API (DESIGN §5, §6), and the parsers of their flags (durations, times, prices,
//! weights, call ids).

use std::{io::Write, path::Path, pin::pin, process::ExitCode, time::Duration};

use anyhow::Context;
use capmesh::{DataDir, remote};
use capmesh_api::{
    ApiError, AttestRequest, CallRequest, CallResult, Client, ClientError, ErrorCode, Optimize,
};
use capmesh_market::Weights;
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{CallId, Price, Subject, repr::FixedBytes};
use clap::Args;

/// Exit status of a call refused for its arguments or by policy.
const EXIT_REFUSED: u8 = 2;
/// Exit status of a call interrupted with ctrl-c (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;
/// How long to wait for the node's answer after a cancel it accepted.
const CANCEL_WAIT: Duration = Duration::from_secs(15);
/// … and after one it did not know (the call ended, or had not started yet).
const CANCEL_GRACE: Duration = Duration::from_secs(1);
/// Unit of `--max-price N` without one.
const DEFAULT_UNIT: &str = "credit";

#[derive(Debug, Args)]
#[command(after_help = "\
Prints the output (pretty JSON; a streaming capability's chunks as they are) on stdout, and \
`receipt <id> · provider <peer> · price <amount> <unit> · <elapsed> ms[ · warm]` on stderr. \
With --json, the API's whole answer (or error) as JSON on stdout.

The node checks the arguments against the contract before anything leaves it; a failure prints \
the reason and every provider's answer on stderr. Ctrl-C cancels the call (the provider is \
told) and exits 130.

Exit status: 0 the call succeeded; 2 the arguments or a policy refused the call (API codes \
BadRequest, Denied) or the command line is wrong; 130 interrupted with ctrl-c; 1 any other \
failure (no provider, rate limited, timeout, failed, no node running).")]
pub(crate) struct CallArgs {
    /// Capability id (`b…`).
    id: Cid,
    /// The arguments: JSON text, or @FILE (@- for stdin).
    #[arg(long, value_name = "JSON|@FILE")]
    args: String,
    /// Weights of offer selection, e.g. price=0.5,latency=0.5 (weights not named are 0;
    /// names: price, latency, reputation). Default: the node's (price 0.4, latency 0.4,
    /// reputation 0.2).
    #[arg(long, value_name = "WEIGHTS", value_parser = parse_optimize)]
    optimize: Option<Optimize>,
    /// The most the call may cost: AMOUNT[:UNIT], e.g. 10 or 100:usd-micro (unit default
    /// credit). Offers above it, or in another unit, are refused.
    #[arg(long, value_name = "N[:UNIT]", value_parser = parse_max_price)]
    max_price: Option<Price>,
    /// How long the call may take, failovers included: 30s, 500ms, 2m, 1h (at most 1 day).
    /// Default: the node's market.call_deadline_ms (30 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// The call's id: 16 bytes as unpadded base64url (22 characters). Repeating a call with
    /// the same id never runs it twice at a provider. Default: a random one.
    #[arg(long, value_name = "B64", value_parser = parse_call_id)]
    call_id: Option<CallId>,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AttestArgs {
    /// What the claim is about: a peer id (12D3KooW…) or a CID (b…).
    subject: String,
    /// The claim, matching ^[a-z0-9][a-z0-9_.:/-]{0,127}$ (e.g. member, org:acme/audited).
    claim: String,
    /// When it expires: a duration from now (30d, 12h, 90m), a UTC time
    /// (2026-12-31T00:00:00Z) or unix ms. Default 30 days from now.
    #[arg(long, value_name = "WHEN", value_parser = parse_expires)]
    expires: Option<u64>,
    /// Print the API's answer (id and the signed attestation) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AttestationsCommand {
    /// List the unexpired attestations the running node holds (its own and those gossiped to
    /// it): `ID  ISSUER  CLAIM  SUBJECT  EXPIRES`.
    List(AttestationsListArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AttestationsListArgs {
    /// Only about this subject: a peer id (12D3KooW…) or a CID (b…).
    #[arg(long, value_name = "SUBJECT", value_parser = subject_arg)]
    subject: Option<Subject>,
    /// Only issued by this peer.
    #[arg(long, value_name = "PEER_ID")]
    issuer: Option<PeerId>,
    /// Only with this claim.
    #[arg(long)]
    claim: Option<String>,
    /// Most attestations listed (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
}

fn subject_arg(text: &str) -> Result<Subject, String> {
    parse_subject(text)
        .ok_or_else(|| format!("{text:?} is neither a peer id (12D3KooW…) nor a CID (b…)"))
}

/// `capmesh attestations list`.
pub(crate) fn attestations(
    dir: &DataDir,
    command: AttestationsCommand,
) -> anyhow::Result<ExitCode> {
    let AttestationsCommand::List(args) = command;
    let req = capmesh_api::AttestationsRequest {
        subject: args.subject,
        issuer: args.issuer,
        claim: args.claim,
        limit: Some(args.limit),
    };
    let client = remote::client(dir)?;
    let list = crate::block_on(client.attestations(&req)).map_err(remote::explain)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.attestations.is_empty() {
        eprintln!("no attestations match");
        return Ok(ExitCode::SUCCESS);
    }
    remote::header(&["ID", "ISSUER", "CLAIM", "SUBJECT", "EXPIRES"]);
    for a in &list.attestations {
        let p = a.attestation.decode(capmesh_wire::cbor::Limits::default())?;
        let subject = match &p.subject {
            Subject::Peer(peer) => peer.to_string(),
            Subject::Cid(cid) => cid.to_string(),
        };
        outln!(
            "{}  {}  {}  {subject}  {}",
            a.id,
            p.issuer,
            p.claim,
            crate::receipts::utc(p.expires)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `capmesh call`.
pub(crate) fn call(dir: &DataDir, args: CallArgs) -> anyhow::Result<ExitCode> {
    let text = match args.args.strip_prefix('@') {
        Some(file) => crate::read(Path::new(file))?,
        None => args.args.clone().into_bytes(),
    };
    let json = match capmesh_wire::json::from_slice_strict(&text) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("error: --args is not JSON: {e}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    let call_id = match args.call_id {
        Some(id) => id,
        None => FixedBytes::random().context("no randomness for a call id")?,
    };
    let req = CallRequest {
        capability: args.id,
        args: json,
        call_id: Some(call_id),
        optimize: args.optimize,
        max_price: args.max_price,
        deadline_ms: args.deadline.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
    };
    let client = remote::client(dir)?;
    crate::block_on(run_call(&client, &req, call_id, args.json))
}

/// Makes the call; on ctrl-c, cancels it and waits (bounded) for how it ended.
async fn run_call(
    client: &Client,
    req: &CallRequest,
    call_id: CallId,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut pending = pin!(client.call(req));
    let answer = tokio::select! {
        answer = &mut pending => answer,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot listen for ctrl-c")?;
            let wait = match client.cancel(&call_id).await {
                Ok(_) => CANCEL_WAIT,
                Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => CANCEL_GRACE,
                Err(e) => {
                    eprintln!("warning: cannot cancel the call: {}", remote::explain(e));
                    CANCEL_GRACE
                }
            };
            // A second ctrl-c stops waiting; closing the connection cancels the call too.
            let ended = tokio::select! {
                answer = tokio::time::timeout(wait, &mut pending) => answer.ok(),
                _ = tokio::signal::ctrl_c() => None,
            };
            if let Some(Ok(done)) = ended {
                eprintln!("the call ended before the cancel reached it");
                return print_result(&done, json);
            }
            eprintln!("cancelled");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    match answer {
        Ok(done) => print_result(&done, json),
        Err(ClientError::Api(e)) => print_failure(&e, json),
        Err(e) => Err(remote::explain(e)),
    }
}

fn print_result(done: &CallResult, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(done)?)?;
    } else {
        let mut out = std::io::stdout().lock();
        match &done.output {
            Some(output) => writeln!(out, "{}", serde_json::to_string_pretty(output)?)?,
            None => {
                for chunk in &done.stream {
                    out.write_all(&chunk.0)?;
                }
            }
        }
        out.flush()?;
    }
    for a in &done.attempts {
        eprintln!("  tried first: {a}");
    }
    if done.stream_truncated {
        eprintln!(
            "the stream was cut at {} bytes ({} chunks in all; stream root in the receipt)",
            capmesh_api::MAX_STREAM_BYTES,
            done.chunks
        );
    }
    eprintln!("{}", receipt_line(done));
    Ok(ExitCode::SUCCESS)
}

/// `receipt <id> · provider <peer> · price <amount> <unit> · <elapsed> ms[ · warm]`.
fn receipt_line(done: &CallResult) -> String {
    format!(
        "receipt {} · provider {} · price {} {} · {} ms{}",
        done.receipt_id,
        done.provider,
        done.price.amount,
        done.price.unit,
        done.elapsed_ms,
        if done.warm { " · warm" } else { "" }
    )
}

fn print_failure(e: &ApiError, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "error": e }))?)?;
    }
    match &e.call {
        Some(call) => {
            // The call's own code and the API's say the same thing when they are one name.
            if call.code == e.code.as_str() {
                eprintln!("error: {} ({})", e.message, e.code);
            } else {
                eprintln!("error: {} ({}; {})", e.message, call.code, e.code);
            }
            for a in &call.attempts {
                eprintln!("  {a}");
            }
            if let Some(ms) = call.retry_after_ms {
                eprintln!("  retry after {ms} ms");
            }
        }
        None => eprintln!("error: {} ({})", e.message, e.code),
    }
    Ok(ExitCode::from(exit_status(e.code)))
}

/// 2 for refusals of the arguments or by policy, 1 otherwise.
fn exit_status(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::BadRequest | ErrorCode::Denied => EXIT_REFUSED,
        _ => 1,
    }
}

/// `capmesh attest`.
pub(crate) fn attest(dir: &DataDir, args: AttestArgs) -> anyhow::Result<ExitCode> {
    let Some(subject) = parse_subject(&args.subject) else {
        eprintln!("error: {:?} is neither a peer id (12D3KooW…) nor a CID (b…)", args.subject);
        return Ok(ExitCode::from(EXIT_REFUSED));
    };
    let req = AttestRequest { subject, claim: args.claim, expires_ms: args.expires };
    let client = remote::client(dir)?;
    let attested = match crate::block_on(client.attest(&req)) {
        Ok(a) => a,
        Err(ClientError::Api(e)) => {
            eprintln!("error: {} ({})", e.message, e.code);
            return Ok(ExitCode::from(exit_status(e.code)));
        }
        Err(e) => return Err(remote::explain(e)),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&attested)?)?;
    } else {
        eprintln!(
            "attestation {:?} about {} signed, stored and gossiped; its id:",
            req.claim, args.subject
        );
        outln!("{}", attested.id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A peer id, else a CID.
fn parse_subject(text: &str) -> Option<Subject> {
    if let Ok(peer) = text.parse::<PeerId>() {
        return Some(Subject::Peer(peer));
    }
    text.parse::<Cid>().ok().map(Subject::Cid)
}

/// `price=0.5,latency=0.5` (the market's syntax) as the API's weights.
fn parse_optimize(text: &str) -> Result<Optimize, String> {
    let w: Weights = text.parse().map_err(|e: capmesh_market::WeightsError| e.to_string())?;
    Ok(Optimize { price: Some(w.price), latency: Some(w.latency), reputation: Some(w.reputation) })
}

/// `N` (in credit) or `N:UNIT`.
fn parse_max_price(text: &str) -> Result<Price, String> {
    if text.contains(':') {
        return capmesh::registry::parse_price(text);
    }
    let amount = text
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is not AMOUNT or AMOUNT:UNIT, e.g. 10 or 100:usd-micro"))?;
    Ok(Price { amount, unit: DEFAULT_UNIT.into() })
}

/// 16 bytes as unpadded base64url.
fn parse_call_id(text: &str) -> Result<CallId, String> {
    let bad =
        || format!("{text:?} is not a call id: 16 bytes as unpadded base64url (22 characters)");
    let bytes = data_encoding::BASE64URL_NOPAD.decode(text.as_bytes()).map_err(|_| bad())?;
    bytes.try_into().map(FixedBytes).map_err(|_| bad())
}

/// A duration: an integer and a unit, `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`, `2m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: a whole number and ms, s, m, h or d (30s, 500ms, 2m)")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per).map(Duration::from_millis).ok_or_else(bad)
}

/// When an attestation expires (unix ms): a duration from now, a UTC time or unix ms.
fn parse_expires(text: &str) -> Result<u64, String> {
    expires_at(text, capmesh::now_ms())
}

fn expires_at(text: &str, now_ms: u64) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map_err(|e| format!("{text:?}: {e}"));
    }
    if let Ok(d) = parse_duration(text) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Ok(now_ms.saturating_add(ms));
    }
    parse_utc(text).ok_or_else(|| {
        format!(
            "{text:?} is neither a duration (30d, 12h), a UTC time (2026-12-31T00:00:00Z) nor unix ms"
        )
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or `+00:00`) as unix ms.
fn parse_utc(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', 't'])?;
    let mut d = date.splitn(3, '-');
    let (year, month, day): (u64, u64, u64) =
        (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let (h, m, s): (u64, u64, u64) =
        (t.next()?.parse().ok()?, t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let millis = match fraction {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            padded[..3].parse::<u64>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let valid = year >= 1970
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in[(month - 1) as usize]
        && h < 24
        && m < 60
        && s < 60;
    if !valid {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 86_400 + h * 3600 + m * 60 + s) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "30", "s", "1.5s", "-1s", "30 s", "30sec", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expiry_times() {
        let now = 1_760_000_000_000;
        assert_eq!(expires_at("30d", now), Ok(now + 30 * 86_400_000));
        assert_eq!(expires_at("1760000000123", now), Ok(1_760_000_000_123));
        assert_eq!(expires_at("2025-10-09T08:53:20.123Z", now), Ok(1_760_000_000_123));
        assert_eq!(expires_at("2026-12-31T00:00:00Z", now), Ok(1_798_675_200_000));
        assert_eq!(expires_at("2000-02-29T00:00:00+00:00", now), Ok(951_782_400_000));
        assert_eq!(expires_at("1970-01-01T00:00:00Z", now), Ok(0));
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-12-31T24:00:00Z",
            "2026-12-31T00:00:00",
            "2026-12-31T00:00:00+01:00",
            "2026-12-31",
            "soon",
            "",
        ] {
            assert!(expires_at(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn prices_weights_and_ids() {
        assert_eq!(parse_max_price("10"), Ok(Price { amount: 10, unit: "credit".into() }));
        assert_eq!(
            parse_max_price("7:usd-micro"),
            Ok(Price { amount: 7, unit: "usd-micro".into() })
        );
        assert!(parse_max_price("x").is_err() && parse_max_price("1:").is_err());
        assert_eq!(
            parse_optimize("price=0.5,latency=0.5"),
            Ok(Optimize { price: Some(0.5), latency: Some(0.5), reputation: Some(0.0) })
        );
        assert!(parse_optimize("cost=1").is_err());
        assert_eq!(parse_call_id("AQEBAQEBAQEBAQEBAQEBAQ"), Ok(FixedBytes([1; 16])));
        for bad in ["AQEBAQEBAQEBAQEBAQEBAQ==", "AQEB", "!!"] {
            assert!(parse_call_id(bad).is_err(), "{bad}");
        }
        assert!(parse_subject("bafy").is_none());
        assert_eq!(exit_status(ErrorCode::Denied), 2);
        assert_eq!(exit_status(ErrorCode::RateLimited), 1);
    }
}
