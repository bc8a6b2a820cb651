//! Every endpoint through the typed client: the request the backend sees and the answer the
//! client gets are the ones sent.

use capmesh_api::{BlockRequest, Blocked, Client, PublishRequest, QueryRequest, remove_files};
use capmesh_wire::{CallLimits, Filter, Price};
use serde_json::json;

use crate::fake::{self, Call, Server, cid, guard, peer};

#[tokio::test]
async fn every_endpoint_round_trips() {
    let server = Server::start().await;
    let client = server.client();

    assert_eq!(guard("status", client.status()).await.unwrap(), fake::status());
    assert_eq!(guard("peers", client.peers()).await.unwrap(), fake::peers());

    let publish = PublishRequest {
        contract: json!({"name": "echo", "version": "1.0.0", "input": true, "output": {}}),
        price: Some(Price { amount: 5, unit: "usd-micro".into() }),
        limits: Some(CallLimits { timeout_ms: 1_000, max_input_bytes: 2_048, concurrency: 3 }),
        ttl_ms: Some(60_000),
        announce_only: true,
    };
    let published = guard("publish", client.publish(&publish)).await.unwrap();
    assert_eq!((published.capability, published.advert_id, published.seq), (cid(1), cid(2), 3));
    let bare = PublishRequest {
        contract: json!({}),
        price: None,
        limits: None,
        ttl_ms: None,
        announce_only: false,
    };
    guard("publish", client.publish(&bare)).await.unwrap();

    let retired = guard("retire", client.retire(cid(4))).await.unwrap();
    assert_eq!((retired.capability, retired.retirement_id, retired.seq), (cid(4), cid(5), 6));

    let query = QueryRequest {
        capability: Some(cid(1)),
        filter: Filter {
            tags: vec!["text".into()],
            name_prefix: Some("ec".into()),
            text: Some("echo back".into()),
            provider: Some(peer(2)),
            max_price: Some(Price { amount: 10, unit: "usd-micro".into() }),
            claim: Some("kyc".into()),
            issuer: Some(peer(3)),
            issued_after: Some(7),
        },
        newest: true,
        limit: Some(50),
        cursor: Some("0a0b".into()),
    };
    let page = guard("query", client.query(&query)).await.unwrap();
    assert_eq!(page.hits.len(), 1);
    assert_eq!(page.hits[0].provider, peer(2));
    assert_eq!(page.next.as_deref(), Some("00ff"));
    guard("query", client.query(&QueryRequest::default())).await.unwrap();

    assert_eq!(
        server.fake.calls(),
        [
            Call::Status,
            Call::Peers,
            Call::Publish(publish),
            Call::Publish(bare),
            Call::Retire(cid(4)),
            Call::Query(query),
            Call::Query(QueryRequest::default()),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_block_list_changes_all_or_nothing() {
    let server = Server::start().await;
    let client = server.client();
    let block = |block: Vec<u8>, unblock: Vec<u8>| BlockRequest {
        block: block.into_iter().map(peer).collect(),
        unblock: unblock.into_iter().map(peer).collect(),
    };
    let peers = |b: Blocked| b.peers;

    let first = guard("block", client.block(&block(vec![2, 3], vec![]))).await.unwrap();
    assert_eq!(peers(first), [peer(2), peer(3)]);
    // Unblocking comes first: 2 goes, 4 comes, 3 stays.
    let second = guard("block", client.block(&block(vec![4], vec![2]))).await.unwrap();
    assert_eq!(peers(second), [peer(3), peer(4)]);
    // Over the cap: refused, nothing changes.
    let over = guard("block", client.block(&block(vec![5, 6], vec![]))).await.unwrap_err();
    assert!(over.to_string().contains("at most"), "{over}");
    assert_eq!(peers(guard("blocked", client.blocked()).await.unwrap()), [peer(3), peer(4)]);

    // The wire shape other clients see: peer ids as strings, both lists optional.
    let post = crate::http::raw()
        .post(server.url("/v1/blocked"))
        .bearer_auth(server.token.as_str())
        .json(&json!({"unblock": [peer(3).to_string()]}))
        .send();
    let raw: serde_json::Value = guard("raw block", post).await.unwrap().json().await.unwrap();
    assert_eq!(raw, json!({"peers": [peer(4).to_string()]}));
    server.stop().await;
}

#[tokio::test]
async fn the_query_page_has_the_cli_shape() {
    let server = Server::start().await;
    let response = crate::http::raw()
        .post(server.url("/v1/registry/query"))
        .bearer_auth(server.token.as_str())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"hits": [{
            "id": cid(7).to_string(),
            "capability": cid(1).to_string(),
            "name": "echo",
            "provider": peer(2).to_string(),
            "price": {"amount": 100, "unit": "usd-micro"},
            "issued": 1,
            "expires": 2,
        }], "next": "00ff"})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_from_the_data_dir_reaches_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start().await;
    server.write_files(dir.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(capmesh_api::TOKEN_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let client = Client::from_data_dir(dir.path()).unwrap();
    assert_eq!(client.addr(), server.addr);
    assert!(!format!("{client:?}").contains(server.token.as_str()));
    assert_eq!(guard("status", client.status()).await.unwrap(), fake::status());
    server.stop().await;
    remove_files(dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
