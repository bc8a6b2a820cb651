//! Namespaces, links, NAT and netem: every change goes through `ip`, `nft` and `tc`, and every
//! one of them happens inside a namespace the lab made (`ip -n NS …`, `ip netns exec NS …`):
//! veth pairs are created in one lab namespace with their peer in another, so no link ever
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

/// A veth pair: `port` on the bridge `br0` of `bridge_ns`, `dev` in `ns` with `addr` (CIDR);
/// netem on both ends when the link has latency or loss.
async fn plug(
    bridge_ns: &str,
    port: &str,
    ns: &str,
    dev: &str,
    addr: &str,
    link: &mut Link,
) -> Result<(), LabError> {
    ip(bridge_ns, &["link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns]).await?;
    ip(bridge_ns, &["link", "set", port, "master", "br0", "up"]).await?;
    ip(ns, &["addr", "add", addr, "dev", dev]).await?;
    ip(ns, &["link", "set", dev, "up"]).await?;
    if link.latency_ms > 0 || link.loss_pct > 0.0 {
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
pub fn nat_rules(nat: Nat, private_net: &str) -> String {
    let flags = match nat {
        // No port flag: the kernel keeps a connection's source port when the translated tuple
        // is free, so one internal socket keeps one external port for every destination.
        Nat::Eim => "",
        // A random external port for every new connection, whatever the socket.
        Nat::Symmetric => " fully-random",
    };
    format!(
        "table ip cmlab {{\n\
         \tchain nat_out {{ type nat hook postrouting priority srcnat; policy accept;\n\
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

/// Every namespace a run of `t` makes, in the order it makes them.
pub fn planned(run: &str, t: &Topology) -> Vec<String> {
    let mut all = vec![ns_pub(run)];
    all.extend(t.routers.iter().map(|r| ns_router(run, &r.name)));
    all.extend(t.hosts.iter().map(|h| ns_host(run, &h.name)));
    all
}

/// Builds the network of `t` for run `run`: namespaces, bridges, veth pairs, addresses, routes
/// (only 198.18.0.0/15, never a default), NAT, netem. Returns the links made.
pub async fn build(run: &str, t: &Topology) -> Result<Vec<Link>, LabError> {
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
        plug(&public, &format!("r{n}"), &ns, "wan0", &wan, &mut link).await?;
        links.push(link);
        bridge(&ns, Some(&format!("198.18.{n}.1/24"))).await?;
        cmd("ip", &["netns", "exec", &ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
            .await?;
        cmd_stdin(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            &nat_rules(r.nat, &format!("198.18.{n}.0/24")),
        )
        .await?;
    }
    for (i, h) in t.hosts.iter().enumerate() {
        let ns = ns_host(run, &h.name);
        add_ns(&ns).await?;
        let addr = format!("{}/24", t.host_addr(&h.name).unwrap_or_default());
        let mut link = Link { latency_ms: h.latency_ms, loss_pct: h.loss_pct, ..empty_link() };
        match &h.behind {
            None => plug(&public, &format!("h{i}"), &ns, "eth0", &addr, &mut link).await?,
            Some(router) => {
                let n = t.router_number(router).unwrap_or_default();
                plug(&ns_router(run, router), &format!("h{i}"), &ns, "eth0", &addr, &mut link)
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eim_keeps_ports_and_symmetric_randomises_them() {
        let eim = nat_rules(Nat::Eim, "198.18.1.0/24");
        assert!(eim.contains("ip saddr 198.18.1.0/24 masquerade\n"), "{eim}");
        let sym = nat_rules(Nat::Symmetric, "198.18.2.0/24");
        assert!(sym.contains("masquerade fully-random"), "{sym}");
        assert!(sym.contains("policy drop") && sym.contains("ct state established,related accept"));
    }

    #[test]
    fn names_carry_the_prefix_and_the_run() {
        let t = super::super::topology::Topology::parse(
            "[[router]]\nname = \"r\"\nnat = \"eim\"\n[[host]]\nname = \"p\"\n[[host]]\nname = \"a\"\nbehind = \"r\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let all = planned("ab12cd", &t);
        assert_eq!(
            all,
            ["cmlab-ab12cd-pub", "cmlab-ab12cd-r-r", "cmlab-ab12cd-h-p", "cmlab-ab12cd-h-a"]
        );
    }
}
