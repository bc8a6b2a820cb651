//! The delay line: latency and loss for lab links on kernels without `sch_netem`.
//!
//! A shaped link runs through a "wire" namespace of its own (`cmlab-<run>-w-<name>`) holding
//! two veth ends and nothing else: `up0` towards the segment's bridge, `dn0` towards the host
//! or router. The wire namespace has no address, no route, no IPv6, no nftables rule and so no
//! conntrack: it only moves Ethernet frames, so the NATs behave exactly as without it. One
//! `capmesh-testnet lab delay` process (started by `up`, inside the public segment's namespace
//! so `down` finds it there too) opens a packet socket on each end of every wire (entering
//! each wire namespace on a thread of its own) and, for each direction, holds every frame for
//! the link's one-way latency before sending it out of the other end, in order, dropping the
//! link's share of loss. Each direction's queue is bounded in frames and bytes; what does not
//! fit is dropped and counted. Counters are written to `<dir>/delay.json` every second.
//!
//! Two things a packet socket needs that a qdisc does not: the veth ends that send into a
//! wire have `gso_max_segs 1` (so the kernel segments before the wire and no frame exceeds the
//! MTU), and the wire fills in IPv4 TCP / UDP checksums (a locally made packet crosses a veth
//! with its checksum left to "hardware", which a packet socket copies as is, and the receiver
//! would drop).

use std::{
    collections::VecDeque,
    num::NonZeroUsize,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, bind, recvfrom, send,
    setsockopt, socket, sockopt,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, time::Instant};

use super::{LabError, LabManifest, io};
use crate::rng::Rng;

/// File name of the delay line's counters in the lab directory.
pub const STATUS: &str = "delay.json";
/// The wire's end towards the segment (bridge) and towards the host or router.
pub const UP: &str = "up0";
pub const DOWN: &str = "dn0";
/// Largest frame the wire carries: the veths' MTU (1500) plus the Ethernet header. Larger
/// ones cannot be sent out of the other end (`gso_max_segs 1` keeps them from coming).
const MAX_FRAME: usize = 1514;
/// Receive buffer of each packet socket (root may exceed rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// A bound on one direction's queue, parsed at the edge (`lab delay --max-frames/--max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimit {
    pub frames: NonZeroUsize,
    pub bytes: NonZeroUsize,
}

impl Default for QueueLimit {
    /// 4096 frames, 4 MiB: 20 ms of a gigabit link fit, a runaway sender does not.
    fn default() -> Self {
        Self {
            frames: NonZeroUsize::new(4096).expect("non-zero"),
            bytes: NonZeroUsize::new(4 << 20).expect("non-zero"),
        }
    }
}

/// One direction's frames in flight, bounded by a [`QueueLimit`].
#[derive(Debug)]
pub struct Line {
    limit: QueueLimit,
    queue: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
}

impl Line {
    pub fn new(limit: QueueLimit) -> Self {
        Self { limit, queue: VecDeque::new(), bytes: 0 }
    }

    /// Queues `frame` until `due`; gives it back when the queue is full (the caller counts it).
    pub fn push(&mut self, due: Instant, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.queue.len() >= self.limit.frames.get()
            || self.bytes + frame.len() > self.limit.bytes.get()
        {
            return Err(frame);
        }
        self.bytes += frame.len();
        self.queue.push_back((due, frame));
        Ok(())
    }

    /// When the oldest frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// The oldest frame if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        let (_, frame) = self.queue.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Counters of one direction of one wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DirStats {
    pub forwarded: u64,
    pub bytes: u64,
    /// Dropped because the queue was full.
    pub dropped_full: u64,
    /// Dropped as the link's loss.
    pub dropped_loss: u64,
    /// Larger than [`MAX_FRAME`] (should not happen: `gso_max_segs 1`).
    pub dropped_oversize: u64,
    pub send_errors: u64,
    pub max_queue: u64,
}

/// One wire in `delay.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStatus {
    pub ns: String,
    pub latency_ms: u32,
    pub loss_pct: f64,
    /// Frames from the segment towards the host or router.
    pub down: DirStats,
    /// Frames from the host or router towards the segment.
    pub up: DirStats,
}

/// `delay.json`: written once every socket is open (`ready`), then every second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DelayStatus {
    pub pid: u32,
    pub ready: bool,
    pub limit: QueueLimit,
    pub wires: Vec<WireStatus>,
}

impl DelayStatus {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATUS)
    }

    pub fn load(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(Self::path(dir)).ok()?).ok()
    }

    fn save(&self, dir: &Path) -> Result<(), LabError> {
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| LabError::Io {
            what: "cannot encode the delay line's counters".into(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(io(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("cannot write {}", path.display())))
    }

    /// Totals over every wire and direction: (forwarded, dropped).
    pub fn totals(&self) -> (u64, u64) {
        self.wires.iter().flat_map(|w| [&w.up, &w.down]).fold((0, 0), |(f, d), s| {
            (f + s.forwarded, d + s.dropped_full + s.dropped_loss + s.dropped_oversize)
        })
    }
}

/// A wire the delay line serves (from the manifest's links).
#[derive(Debug, Clone)]
struct Wire {
    ns: String,
    latency: Duration,
    loss_pct: f64,
}

/// `lab delay`: serves every wire of the lab in `dir` until it is killed (`down` does).
pub async fn serve(dir: &Path, limit: QueueLimit) -> Result<(), LabError> {
    let m = LabManifest::load(dir)?;
    let wires: Vec<Wire> = m
        .links
        .iter()
        .filter_map(|l| {
            l.wire_ns.as_ref().map(|ns| Wire {
                ns: ns.clone(),
                latency: Duration::from_millis(u64::from(l.latency_ms)),
                loss_pct: l.loss_pct,
            })
        })
        .collect();
    let opened = {
        let names: Vec<String> = wires.iter().map(|w| w.ns.clone()).collect();
        tokio::task::spawn_blocking(move || open_all(&names))
            .await
            .map_err(|e| LabError::Tool { tool: "lab delay".into(), detail: e.to_string() })??
    };
    let stats: Vec<Arc<Mutex<[DirStats; 2]>>> =
        wires.iter().map(|_| Arc::new(Mutex::new(Default::default()))).collect();
    let seed = u64::from_str_radix(&m.run, 16).unwrap_or(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (wire, (up, down))) in wires.iter().zip(opened).enumerate() {
        let (up, down) = (Arc::new(async_fd(up)?), Arc::new(async_fd(down)?));
        // [0]: segment → host (`down`), [1]: host → segment (`up`).
        for (d, from, to) in [(0, up.clone(), down.clone()), (1, down, up)] {
            let pump = Pump {
                from,
                to,
                latency: wire.latency,
                loss_pct: wire.loss_pct,
                line: Line::new(limit),
                rng: Rng::new(seed ^ ((i as u64) << 1 | d as u64)),
                stats: stats[i].clone(),
                dir: d,
            };
            tasks.spawn(pump.run());
        }
    }
    let snapshot = |ready: bool| DelayStatus {
        pid: std::process::id(),
        ready,
        limit,
        wires: wires
            .iter()
            .zip(&stats)
            .map(|(w, s)| {
                let [down, up] = s.lock().map(|s| s.clone()).unwrap_or_default();
                WireStatus {
                    ns: w.ns.clone(),
                    latency_ms: u32::try_from(w.latency.as_millis()).unwrap_or(u32::MAX),
                    loss_pct: w.loss_pct,
                    down,
                    up,
                }
            })
            .collect(),
    };
    snapshot(true).save(dir)?;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            done = tasks.join_next() => {
                let detail = match done {
                    Some(Ok(Err(e))) => e.to_string(),
                    Some(Err(e)) => e.to_string(),
                    _ => "a wire stopped".into(),
                };
                return Err(LabError::Tool { tool: "lab delay".into(), detail });
            }
            _ = every.tick() => snapshot(true).save(dir)?,
        }
    }
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, LabError> {
    // Deprecated for any `T: AsRawFd` whose fd could change or close under it; an `OwnedFd`
    // owned by the `AsyncFd` can do neither, which is what `register`'s safety asks.
    #[allow(deprecated)]
    AsyncFd::new(fd).map_err(io("cannot register a packet socket"))
}

/// Opens the two packet sockets of each wire, entering its namespace on this thread (a
/// socket stays in the namespace it was made in).
fn open_all(names: &[String]) -> Result<Vec<(OwnedFd, OwnedFd)>, LabError> {
    let fail =
        |what: String| move |e: nix::Error| LabError::Tool { tool: what, detail: e.to_string() };
    let mut out = Vec::with_capacity(names.len());
    for ns in names {
        let handle = std::fs::File::open(format!("/run/netns/{ns}"))
            .map_err(io(format!("cannot open namespace {ns}")))?;
        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(fail(format!("setns {ns}")))?;
        let addrs: Vec<_> =
            nix::ifaddrs::getifaddrs().map_err(fail(format!("getifaddrs in {ns}")))?.collect();
        let open = |dev: &str| -> Result<OwnedFd, LabError> {
            let link = addrs
                .iter()
                .filter(|a| a.interface_name == dev)
                .find_map(|a| a.address.as_ref().and_then(|s| s.as_link_addr().cloned()))
                .ok_or_else(|| LabError::Tool {
                    tool: "lab delay".into(),
                    detail: format!("no interface {dev} in {ns}"),
                })?;
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .map_err(fail(format!("packet socket in {ns}")))?;
            setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER)
                .map_err(fail(format!("SO_RCVBUFFORCE in {ns}")))?;
            bind(fd.as_raw_fd(), &link).map_err(fail(format!("bind to {dev} in {ns}")))?;
            Ok(fd)
        };
        out.push((open(UP)?, open(DOWN)?));
    }
    Ok(out)
}

/// One direction of one wire.
struct Pump {
    from: Arc<AsyncFd<OwnedFd>>,
    to: Arc<AsyncFd<OwnedFd>>,
    latency: Duration,
    loss_pct: f64,
    line: Line,
    rng: Rng,
    stats: Arc<Mutex<[DirStats; 2]>>,
    dir: usize,
}

/// `PACKET_OUTGOING`: a frame this interface sent (not one to carry).
const PACKET_OUTGOING: u8 = 4;

impl Pump {
    async fn run(mut self) -> Result<(), LabError> {
        let mut buf = vec![0u8; 1 << 16];
        let from = self.from.clone();
        loop {
            let due = self.line.next_due();
            tokio::select! {
                ready = from.readable() => {
                    let mut guard = ready.map_err(io("packet socket"))?;
                    // Drain what is there; the guard clears readiness on WouldBlock.
                    loop {
                        let got = guard.try_io(|fd| {
                            recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf).map_err(std::io::Error::from)
                        });
                        match got {
                            Ok(Ok((n, addr))) => {
                                if addr.is_some_and(|a| a.pkttype() == PACKET_OUTGOING) {
                                    continue;
                                }
                                let frame = buf.get(..n).unwrap_or_default().to_vec();
                                self.take(frame);
                            }
                            Ok(Err(e)) => return Err(LabError::Io { what: "packet socket".into(), source: e }),
                            Err(_would_block) => break,
                        }
                    }
                }
                _ = sleep_until(due), if due.is_some() => {
                    let now = Instant::now();
                    while let Some(frame) = self.line.pop_due(now) {
                        self.send(&frame).await;
                    }
                }
            }
        }
    }

    /// A frame came in: dropped (loss, oversize, full queue) or queued for its time.
    fn take(&mut self, mut frame: Vec<u8>) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut stats[self.dir];
        if frame.len() > MAX_FRAME {
            s.dropped_oversize += 1;
            return;
        }
        // 2^-53 steps: exact enough for a percentage.
        if self.loss_pct > 0.0
            && (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 100.0 < self.loss_pct
        {
            s.dropped_loss += 1;
            return;
        }
        fix_checksum(&mut frame);
        match self.line.push(Instant::now() + self.latency, frame) {
            Ok(()) => s.max_queue = s.max_queue.max(self.line.len() as u64),
            Err(_) => s.dropped_full += 1,
        }
    }

    async fn send(&self, frame: &[u8]) {
        let sent = loop {
            let Ok(mut guard) = self.to.writable().await else { break false };
            match guard.try_io(|fd| {
                send(fd.as_raw_fd(), frame, MsgFlags::empty()).map_err(std::io::Error::from)
            }) {
                Ok(r) => break r.is_ok(),
                Err(_would_block) => continue,
            }
        };
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut stats[self.dir];
        if sent {
            s.forwarded += 1;
            s.bytes += frame.len() as u64;
        } else {
            s.send_errors += 1;
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Fills in the TCP or UDP checksum of an IPv4 frame (not a fragment); other frames are left
/// as they are. A checksum that was right stays the same.
pub fn fix_checksum(frame: &mut [u8]) {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    let fragment = u16::from_be_bytes([frame[ETH + 6], frame[ETH + 7]]) & 0x3fff;
    if ihl < 20 || total < ihl || ETH + total > frame.len() || fragment != 0 {
        return;
    }
    let proto = frame[ETH + 9];
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return,
    };
    let (l4_start, l4_end) = (ETH + ihl, ETH + total);
    if l4_end - l4_start < at + 2 {
        return;
    }
    // UDP over IPv4 may carry no checksum (0): keep it that way.
    if proto == 17 && frame[l4_start + at..l4_start + at + 2] == [0, 0] {
        return;
    }
    frame[l4_start + at] = 0;
    frame[l4_start + at + 1] = 0;
    let len = (l4_end - l4_start) as u32;
    let mut sum: u32 = 0;
    for chunk in frame[ETH + 12..ETH + 20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    sum += u32::from(proto) + len;
    let mut words = frame[l4_start..l4_end].chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    // A UDP checksum that comes out 0 is sent as all ones (0 means none).
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    frame[l4_start + at..l4_start + at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 frame carrying `proto` with `payload` (its checksum field garbage).
    fn frame(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let total = (20 + l4.len()) as u16;
        let mut ip =
            vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 198, 18, 1, 10, 198, 18, 0, 10];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend(ip);
        f.extend_from_slice(l4);
        f
    }

    /// The one's-complement sum of pseudo-header and segment: 0xffff when the checksum holds.
    fn verify(f: &[u8]) -> u16 {
        let proto = f[23];
        let l4 = &f[34..];
        let mut sum: u32 = 0;
        for c in f[26..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += u32::from(proto) + l4.len() as u32;
        let mut words = l4.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn tcp_and_udp_checksums_are_filled_in_and_kept_when_right() {
        let mut tcp = vec![0u8; 20];
        tcp[..4].copy_from_slice(&[0x12, 0x5d, 0x12, 0x5d]);
        tcp[12] = 0x50;
        tcp[16..18].copy_from_slice(&[0xde, 0xad]);
        tcp.extend_from_slice(b"hello, odd");
        let mut f = frame(6, &tcp);
        fix_checksum(&mut f);
        assert_eq!(verify(&f), 0xffff);
        let once = f.clone();
        fix_checksum(&mut f);
        assert_eq!(f, once, "a right checksum stays");

        let mut udp = vec![0x12, 0x5d, 0x12, 0x5d, 0, 13, 0xbe, 0xef];
        udp.extend_from_slice(b"quic!");
        let mut f = frame(17, &udp);
        fix_checksum(&mut f);
        assert_eq!(verify(&f), 0xffff);
        // No checksum (0) stays none.
        let mut none = frame(17, &[0x12, 0x5d, 0x12, 0x5d, 0, 8, 0, 0]);
        let before = none.clone();
        fix_checksum(&mut none);
        assert_eq!(none, before);
        // A fragment is left alone (its checksum covers bytes it does not hold).
        let mut frag = frame(6, &tcp);
        frag[14 + 6] = 0x20;
        let before = frag.clone();
        fix_checksum(&mut frag);
        assert_eq!(frag, before);
    }

    #[test]
    fn a_line_is_bounded_in_frames_and_bytes_and_keeps_order() {
        let limit = QueueLimit {
            frames: NonZeroUsize::new(3).unwrap(),
            bytes: NonZeroUsize::new(250).unwrap(),
        };
        let mut line = Line::new(limit);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(line.push(at(20), vec![1; 100]).is_ok());
        assert!(line.push(at(21), vec![2; 100]).is_ok());
        assert!(line.push(at(22), vec![3; 100]).is_err(), "over the byte bound");
        assert!(line.push(at(22), vec![4; 10]).is_ok());
        assert!(line.push(at(23), vec![5; 1]).is_err(), "over the frame bound");
        assert_eq!(line.pop_due(at(19)), None, "nothing before its time");
        assert_eq!(line.pop_due(at(21)), Some(vec![1; 100]));
        assert_eq!(line.pop_due(at(21)), Some(vec![2; 100]));
        assert_eq!(line.pop_due(at(21)), None);
        assert!(line.push(at(24), vec![6; 200]).is_ok(), "room again");
        assert_eq!(line.pop_due(at(30)), Some(vec![4; 10]));
        assert_eq!(line.pop_due(at(30)), Some(vec![6; 200]));
        assert!(line.is_empty());
    }
}
