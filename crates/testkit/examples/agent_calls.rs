//! Measures a warm call to a runtime attached over the local API (an agent's WebSocket) beside
//! a warm call to a builtin, same payload, same two nodes, same run (issue 14): the ratio is
//! the cost of the extra local hop. Calls alternate between the two, so both see the same
//! machine load.
//!
//! Node 0 serves the echo builtin and, through an agent session, `agent.echo` (the same schemas,
//! answered by a WebSocket client in this process that returns its arguments). Node 1 calls.
//!
//! Prints a report; asserts nothing.
//! `cargo run --release -p capmesh-testkit --example agent_calls -- [CALLS]`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use capmesh_api::{AgentFrame, Announcement, Client, NodeFrame, SessionRequest};
use capmesh_exec::Builtin;
use capmesh_market::CallRequest;
use capmesh_testkit::{Testnet, wait_for};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args().nth(1).map_or(Ok(2000), |a| a.parse())?;
    let net =
        Testnet::line(2, |i, o| if i == 0 { o.serve_builtin(Builtin::Echo, 1, 1) } else { o })
            .await?;
    let (provider, caller) = (net.node(0), net.node(1));
    // The provider admits the load: no rate limit to speak of.
    std::fs::write(
        provider.data_dir().join("policy.toml"),
        "[provider]\nrate_per_sec = 1000000.0\nburst = 1000000\nconcurrency = 128\n",
    )?;
    provider.node.market.policy().reload()?;

    // The agent: a session on node 0, its runtime socket, an echo contract of its own.
    let api = Client::new(provider.node.api_addr, provider.node.api_token.clone())?;
    let session = api.open_session(&SessionRequest::new("bench-agent")).await?;
    let mut req =
        format!("ws://{}/v1/sessions/{}/runtime", provider.node.api_addr, session.session.id)
            .into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {}", session.token).parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await?;
    let mut contract = Builtin::Echo.contract();
    contract.name = "agent.echo".into();
    let announce = AgentFrame::Announce {
        capabilities: vec![Announcement {
            contract: serde_json::to_value(&contract)?,
            price: None,
            limits: None,
            latency_ms: None,
        }],
    };
    socket.send(tungstenite::Message::Text(serde_json::to_string(&announce)?.into())).await?;
    let agent_cap = loop {
        let Some(Ok(tungstenite::Message::Text(t))) = socket.next().await else {
            anyhow::bail!("the runtime socket closed")
        };
        if let NodeFrame::Announced { capabilities } = serde_json::from_str(t.as_str())? {
            break capabilities[0].capability;
        }
    };
    let agent = tokio::spawn(async move {
        while let Some(Ok(tungstenite::Message::Text(t))) = socket.next().await {
            if let Ok(NodeFrame::Call { call_id, args, .. }) = serde_json::from_str(t.as_str()) {
                let answer = AgentFrame::Result { call_id, output: args };
                let text = serde_json::to_string(&answer).unwrap();
                if socket.send(tungstenite::Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        }
    });
    let builtin_cap = capmesh_contract::check(&Builtin::Echo.contract())?;
    for cap in [builtin_cap, agent_cap] {
        wait_for("the advert at the caller", Duration::from_secs(30), || async {
            if caller.has_capability(&cap) { Ok(()) } else { Err(()) }
        })
        .await;
    }

    let market = &caller.node.market;
    let args = json!({"text": "hello, mesh", "n": 42});
    // Warm both (offers taken, contracts cached).
    for cap in [builtin_cap, agent_cap] {
        for _ in 0..20 {
            market.call(CallRequest::new(cap, args.clone())).await?;
        }
    }
    let (mut builtin, mut attached) = (Vec::new(), Vec::new());
    let mut cold = 0;
    for i in 0..calls * 2 {
        let (cap, into) =
            if i % 2 == 0 { (builtin_cap, &mut builtin) } else { (agent_cap, &mut attached) };
        let t = Instant::now();
        let out = market.call(CallRequest::new(cap, args.clone())).await?;
        // An offer covers a bounded number of calls: the call that renews it is not warm.
        if out.warm {
            into.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            cold += 1;
        }
    }
    let (b50, a50) = (pct(&mut builtin, 0.5), pct(&mut attached, 0.5));
    let (b99, a99) = (pct(&mut builtin, 0.99), pct(&mut attached, 0.99));
    println!(
        "warm calls, {calls} each, alternating, same payload, same run ({cold} offer renewals left out):"
    );
    println!("  builtin echo           p50 {b50:8.0} µs   p99 {b99:8.0} µs");
    println!("  attached runtime echo  p50 {a50:8.0} µs   p99 {a99:8.0} µs");
    println!(
        "  ratio attached / builtin: p50 {:.2}×, p99 {:.2}× (goal ≤ 1.3× at p50)",
        a50 / b50,
        a99 / b99
    );
    agent.abort();
    net.shutdown().await?;
    Ok(())
}
