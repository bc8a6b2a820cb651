//! Namespaces, links, NAT, shaping and cuts: every change goes through `ip`, `nft` and `tc`, and
//! every one of them happens inside a namespace the lab made (`ip -n NS …`, `ip netns exec NS
//! …`): veth pairs are created in one lab namespace with their peer in another, so no link ever
//! appears in the machine's own namespace, and no namespace has a route beyond 198.18.0.0/15.

use std::process::Stdio;

use super::{
    LabError,
    topology::{Nat, Topology},
};

/// Every namespace the lab makes starts with this, then the run id and `-`.
pub const PREFIX: &str = "cmlab-";

/// One veth pair, as the manifest records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Link {
    pub a_ns: String,
    pub a_dev: String,
    pub b_ns: String,
    pub b_dev: String,
    pub latency_ms: u32,
    pub loss_pct: f64,
    /// The wire namespace between the two ends, when the delay line shapes this link (then
    /// `a_dev` is joined to the wire's `up0` and `b_dev` to its `dn0`).
    #[serde(default)]
    pub wire_ns: Option<String>,
}

/// How links with latency or loss are shaped, as `up` chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shaper {
    /// No link has latency or loss.
    #[default]
    None,
    /// `tc netem` on both ends of each shaped veth pair.
    Netem,
    /// The userspace delay line ([`super::delay`]): the kernel has no `sch_netem`.
    DelayLine,
}

/// `lab up --shaper`: which shaper to use for links with latency or loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShaperChoice {
    /// netem where the kernel has it, else the delay line.
    #[default]
    Auto,
    Netem,
    DelayLine,
}

/// Runs `program args…`, waiting for it; a failure carries its stderr. The child is killed if
/// this future is dropped.
pub async fn cmd(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| LabError::Tool { tool: program.to_string(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`cmd`] with `input` on stdin (`nft -f -`).
async fn cmd_stdin(program: &str, args: &[&str], input: &str) -> Result<(), LabError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LabError::Tool { tool: program.to_string(), detail: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(|source| LabError::Io {
            what: format!("cannot write to {program}"),
            source,
        })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| LabError::Io { what: format!("{program} did not finish"), source })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {} <<< {input}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether this kernel can add a netem qdisc: tried on a veth pair in a throwaway namespace
/// `cmlab-<run>-probe` (deleted again; a crash leaves it to `down --leftovers`).
pub async fn netem_available(run: &str) -> bool {
    let ns = format!("{PREFIX}{run}-probe");
    let tried = async {
        add_ns(&ns).await?;
        ip(&ns, &["link", "add", "p0", "type", "veth", "peer", "name", "p1"]).await?;
        cmd("tc", &["-n", &ns, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"])
            .await
            .map(|_| ())
    }
    .await;
    let _ = delete_ns(&ns).await;
    tried.is_ok()
}

/// Checks that this process is root and that `ip` and `nft` (and `tc` when `netem`) run.
pub async fn preflight(netem: bool) -> Result<(), LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let mut tools = vec![("ip", "-V", "iproute2"), ("nft", "--version", "nftables")];
    if netem {
        tools.push(("tc", "-V", "iproute2"));
    }
    for (tool, arg, package) in tools {
        if cmd(tool, &[arg]).await.is_err() {
            return Err(LabError::Missing { tool: tool.into(), package: package.into() });
        }
    }
    Ok(())
}

/// Whether the effective user is root (from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .is_some_and(|euid| euid == "0")
    })
}

/// The lab namespaces that exist now whose names start with `prefix`.
pub async fn namespaces(prefix: &str) -> Result<Vec<String>, LabError> {
    let list = cmd("ip", &["netns", "list"]).await?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect())
}

/// Processes inside namespace `ns`.
pub async fn pids_in(ns: &str) -> Vec<u32> {
    match cmd("ip", &["netns", "pids", ns]).await {
        Ok(out) => out.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes namespace `ns` (its veth ends go with it, and with them their peers).
pub async fn delete_ns(ns: &str) -> Result<(), LabError> {
    match cmd("ip", &["netns", "delete", ns]).await {
        Ok(_) => Ok(()),
        Err(_) if !namespaces(ns).await?.iter().any(|n| n == ns) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn add_ns(ns: &str) -> Result<(), LabError> {
    cmd("ip", &["netns", "add", ns]).await?;
    cmd("ip", &["-n", ns, "link", "set", "lo", "up"]).await?;
    Ok(())
}

async fn ip(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    cmd("ip", &all).await.map(|_| ())
}

/// A bridge `br0` in `ns`, up, with `addr` (CIDR) if given.
async fn bridge(ns: &str, addr: Option<&str>) -> Result<(), LabError> {
    ip(ns, &["link", "add", "br0", "type", "bridge"]).await?;
    if let Some(a) = addr {
        ip(ns, &["addr", "add", a, "dev", "br0"]).await?;
    }
    ip(ns, &["link", "set", "br0", "up"]).await
}

/// Joins `dev` in `ns` (with `addr`, CIDR) to the bridge `br0` of `bridge_ns` through a veth
/// pair whose bridge end is `port`. A link with latency or loss is shaped by `shaper`: netem on
/// both ends, or a wire namespace `wire` in between for the delay line.
#[allow(clippy::too_many_arguments)]
async fn plug(
    bridge_ns: &str,
    port: &str,
    ns: &str,
    dev: &str,
    addr: &str,
    link: &mut Link,
    shaper: Shaper,
    wire: &str,
) -> Result<(), LabError> {
    let shaped = link.latency_ms > 0 || link.loss_pct > 0.0;
    if shaped && shaper == Shaper::DelayLine {
        use super::delay::{DOWN, UP};
        add_ns(wire).await?;
        // Nothing of the wire's own may go out on the link: no IPv6 (absent IPv6: nothing to do).
        let _ = cmd(
            "ip",
            &[
                "netns",
                "exec",
                wire,
                "sh",
                "-c",
                "for f in all default; do echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done 2>/dev/null",
            ],
        )
        .await;
        ip(bridge_ns, &["link", "add", port, "type", "veth", "peer", "name", UP, "netns", wire])
            .await?;
        ip(wire, &["link", "add", DOWN, "type", "veth", "peer", "name", dev, "netns", ns]).await?;
        // The kernel segments before a frame reaches the wire: a packet socket cannot send
        // more than the MTU.
        ip(bridge_ns, &["link", "set", port, "gso_max_segs", "1"]).await?;
        ip(ns, &["link", "set", dev, "gso_max_segs", "1"]).await?;
        for d in [UP, DOWN] {
            ip(wire, &["link", "set", d, "promisc", "on", "up"]).await?;
        }
        link.wire_ns = Some(wire.into());
    } else {
        ip(bridge_ns, &["link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns])
            .await?;
    }
    ip(bridge_ns, &["link", "set", port, "master", "br0", "up"]).await?;
    ip(ns, &["addr", "add", addr, "dev", dev]).await?;
    ip(ns, &["link", "set", dev, "up"]).await?;
    if shaped && shaper == Shaper::Netem {
        for (n, d) in [(bridge_ns, port), (ns, dev)] {
            let delay = format!("{}ms", link.latency_ms);
            let loss = format!("{}%", link.loss_pct);
            cmd(
                "tc",
                &[
                    "-n", n, "qdisc", "add", "dev", d, "root", "netem", "delay", &delay, "loss",
                    &loss,
                ],
            )
            .await
            .map_err(|e| match e {
                LabError::Command { stderr, .. } if stderr.contains("kind is unknown") => {
                    LabError::NoNetem
                }
                e => e,
            })?;
        }
    }
    link.a_ns = bridge_ns.into();
    link.a_dev = port.into();
    link.b_ns = ns.into();
    link.b_dev = dev.into();
    Ok(())
}

/// The nftables ruleset of a router: NAT from its private segment out of `wan0`, a forward
/// filter that lets in only what answers a connection from inside (conntrack), and unsolicited
/// packets to the router itself dropped silently, as home routers do: without that the router's
/// kernel answers a hole punch's first SYN with a RST (UDP: ICMP port unreachable), which tears
/// down the mapping the other side's SYN needs.
///
/// `hosts` are the addresses behind the router, in order. An endpoint-independent router maps
/// each one's node port ([`super::PORT`], TCP and UDP) to a public port of its own,
/// `PORT + index`, for every destination. Plain `masquerade` is not enough: it keeps a source
/// port only while the translated tuple is free, so when several hosts use the same port, every
/// host but the first gets another port towards each destination the first already talks to
/// (the relays): a per-destination mapping, which no hole punch can meet.
pub fn nat_rules(nat: Nat, private_net: &str, public_addr: &str, hosts: &[String]) -> String {
    let static_map = match nat {
        Nat::Eim if !hosts.is_empty() => {
            let port = super::PORT;
            let entries = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| format!("{h} . {port} : {public_addr} . {}", usize::from(port) + i))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "\t\toifname \"wan0\" ip saddr {private_net} meta l4proto {{ tcp, udp }} \
                 snat ip to ip saddr . th sport map {{ {entries} }}\n"
            )
        }
        _ => String::new(),
    };
    let flags = match nat {
        // Every other socket: the kernel keeps its source port when the translated tuple is free.
        Nat::Eim => "",
        // A random external port for every new connection, whatever the socket.
        Nat::Symmetric => " fully-random",
    };
    format!(
        "table ip cmlab {{\n\
         \tchain nat_out {{ type nat hook postrouting priority srcnat; policy accept;\n\
         {static_map}\
         \t\toifname \"wan0\" ip saddr {private_net} masquerade{flags}\n\t}}\n\
         \tchain filter_fwd {{ type filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"br0\" oifname \"wan0\" accept\n\t}}\n\
         \tchain filter_in {{ type filter hook input priority filter; policy accept;\n\
         \t\tiifname \"wan0\" ct state established,related accept\n\
         \t\tiifname \"wan0\" drop\n\t}}\n}}\n"
    )
}

/// Namespace names of a run: the public segment, each router, each host.
pub fn ns_pub(run: &str) -> String {
    format!("{PREFIX}{run}-pub")
}
pub fn ns_router(run: &str, name: &str) -> String {
    format!("{PREFIX}{run}-r-{name}")
}
pub fn ns_host(run: &str, name: &str) -> String {
    format!("{PREFIX}{run}-h-{name}")
}
/// The wire namespace of the link of router or host `name` (delay line).
pub fn ns_wire(run: &str, name: &str) -> String {
    format!("{PREFIX}{run}-w-{name}")
}

/// Every namespace a run of `t` makes, in the order it makes them.
pub fn planned(run: &str, t: &Topology, shaper: Shaper) -> Vec<String> {
    let mut all = vec![ns_pub(run)];
    all.extend(t.routers.iter().map(|r| ns_router(run, &r.name)));
    all.extend(t.hosts.iter().map(|h| ns_host(run, &h.name)));
    if shaper == Shaper::DelayLine {
        let shaped = t
            .routers
            .iter()
            .filter(|r| r.latency_ms > 0 || r.loss_pct > 0.0)
            .map(|r| &r.name)
            .chain(
                t.hosts.iter().filter(|h| h.latency_ms > 0 || h.loss_pct > 0.0).map(|h| &h.name),
            );
        all.extend(shaped.map(|name| ns_wire(run, name)));
    }
    all
}

/// Builds the network of `t` for run `run`: namespaces, bridges, veth pairs, addresses, routes
/// (only 198.18.0.0/15, never a default), NAT, shaping. Returns the links made.
pub async fn build(run: &str, t: &Topology, shaper: Shaper) -> Result<Vec<Link>, LabError> {
    let mut links = Vec::new();
    let public = ns_pub(run);
    add_ns(&public).await?;
    bridge(&public, None).await?;
    for (j, r) in t.routers.iter().enumerate() {
        let n = j + 1;
        let ns = ns_router(run, &r.name);
        add_ns(&ns).await?;
        let wan = format!("{}/24", t.router_public_addr(&r.name).unwrap_or_default());
        let mut link = Link { latency_ms: r.latency_ms, loss_pct: r.loss_pct, ..empty_link() };
        let wire = ns_wire(run, &r.name);
        plug(&public, &format!("r{n}"), &ns, "wan0", &wan, &mut link, shaper, &wire).await?;
        links.push(link);
        bridge(&ns, Some(&format!("198.18.{n}.1/24"))).await?;
        cmd("ip", &["netns", "exec", &ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
            .await?;
        let behind: Vec<String> = t
            .hosts
            .iter()
            .filter(|h| h.behind.as_deref() == Some(r.name.as_str()))
            .filter_map(|h| t.host_addr(&h.name))
            .collect();
        let public_addr = t.router_public_addr(&r.name).unwrap_or_default();
        cmd_stdin(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            &nat_rules(r.nat, &format!("198.18.{n}.0/24"), &public_addr, &behind),
        )
        .await?;
    }
    for (i, h) in t.hosts.iter().enumerate() {
        let ns = ns_host(run, &h.name);
        add_ns(&ns).await?;
        let addr = format!("{}/24", t.host_addr(&h.name).unwrap_or_default());
        let mut link = Link { latency_ms: h.latency_ms, loss_pct: h.loss_pct, ..empty_link() };
        let wire = ns_wire(run, &h.name);
        match &h.behind {
            None => {
                plug(&public, &format!("h{i}"), &ns, "eth0", &addr, &mut link, shaper, &wire)
                    .await?
            }
            Some(router) => {
                let n = t.router_number(router).unwrap_or_default();
                let bridge = ns_router(run, router);
                plug(&bridge, &format!("h{i}"), &ns, "eth0", &addr, &mut link, shaper, &wire)
                    .await?;
                // The rest of the lab through the router: the range, not a default route.
                ip(&ns, &["route", "add", "198.18.0.0/15", "via", &format!("198.18.{n}.1")])
                    .await?;
            }
        }
        links.push(link);
    }
    Ok(links)
}

fn empty_link() -> Link {
    Link {
        a_ns: String::new(),
        a_dev: String::new(),
        b_ns: String::new(),
        b_dev: String::new(),
        latency_ms: 0,
        loss_pct: 0.0,
        wire_ns: None,
    }
}

/// The bridge-family table in the public segment's namespace that cuts it in two: frames
/// between a port of `side` and any other port are dropped (counted), both ways.
pub fn cut_rules(side: &[String]) -> String {
    let set: Vec<String> = side.iter().map(|p| format!("{p:?}")).collect();
    let set = set.join(", ");
    format!(
        "table bridge cmlab_cut {{\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept;\n\
         \t\tiifname {{ {set} }} oifname != {{ {set} }} counter drop\n\
         \t\tiifname != {{ {set} }} oifname {{ {set} }} counter drop\n\t}}\n}}\n"
    )
}

/// Cuts the public segment between the bridge ports `side` and the rest (replacing any cut).
pub async fn cut(public: &str, side: &[String]) -> Result<(), LabError> {
    heal(public).await?;
    cmd_stdin("ip", &["netns", "exec", public, "nft", "-f", "-"], &cut_rules(side)).await
}

/// Removes the cut, if any.
pub async fn heal(public: &str) -> Result<(), LabError> {
    let tables = cmd("ip", &["netns", "exec", public, "nft", "list", "tables"]).await?;
    if tables.lines().any(|l| l.trim() == "table bridge cmlab_cut") {
        cmd("ip", &["netns", "exec", public, "nft", "delete", "table", "bridge", "cmlab_cut"])
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eim_keeps_ports_and_symmetric_randomises_them() {
        let hosts = ["198.18.1.10".to_string(), "198.18.1.11".to_string()];
        let eim = nat_rules(Nat::Eim, "198.18.1.0/24", "198.18.0.100", &hosts);
        assert!(eim.contains("ip saddr 198.18.1.0/24 masquerade\n"), "{eim}");
        // Each host's node port has a public port of its own, whatever the destination.
        assert!(
            eim.contains(
                "snat ip to ip saddr . th sport map { 198.18.1.10 . 4701 : 198.18.0.100 . 4701, \
                 198.18.1.11 . 4701 : 198.18.0.100 . 4702 }"
            ),
            "{eim}"
        );
        let sym = nat_rules(Nat::Symmetric, "198.18.2.0/24", "198.18.0.101", &hosts);
        assert!(!sym.contains("snat"), "{sym}");
        assert!(sym.contains("masquerade fully-random"), "{sym}");
        assert!(sym.contains("policy drop") && sym.contains("ct state established,related accept"));
    }

    #[test]
    fn names_carry_the_prefix_and_the_run() {
        let t = super::super::topology::Topology::parse(
            "[[router]]\nname = \"r\"\nnat = \"eim\"\n[[host]]\nname = \"p\"\n[[host]]\nname = \"a\"\nbehind = \"r\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let all = planned("ab12cd", &t, Shaper::DelayLine);
        assert_eq!(
            all,
            ["cmlab-ab12cd-pub", "cmlab-ab12cd-r-r", "cmlab-ab12cd-h-p", "cmlab-ab12cd-h-a"]
        );
        let shaped = super::super::topology::Topology::parse(
            "[[host]]\nname = \"p\"\nlatency_ms = 20\n[[host]]\nname = \"q\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(planned("ab12cd", &shaped, Shaper::Netem).len(), 3);
        assert_eq!(planned("ab12cd", &shaped, Shaper::DelayLine)[3], "cmlab-ab12cd-w-p");
    }

    #[test]
    fn a_cut_drops_both_ways_between_the_side_and_the_rest() {
        let rules = cut_rules(&["h1".into(), "r2".into()]);
        assert!(rules.contains(r#"iifname { "h1", "r2" } oifname != { "h1", "r2" } counter drop"#));
        assert!(rules.contains(r#"iifname != { "h1", "r2" } oifname { "h1", "r2" } counter drop"#));
    }
}
