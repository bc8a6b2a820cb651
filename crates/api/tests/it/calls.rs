//! Calls and attestations: `POST /v1/call`, `POST /v1/calls/{call_id}/cancel`,
//! `POST /v1/attest`.

use std::time::Duration;

use capmesh_api::{AttestRequest, CallRequest, ClientError, ErrorCode, Optimize, Principal};
use capmesh_wire::{Price, Subject, repr::FixedBytes};
use serde_json::{Value, json};

use crate::{
    fake::{self, Call, Server, cid, guard, peer},
    http::{expect_error, raw},
};

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

#[tokio::test]
async fn a_call_round_trips_and_the_node_picks_an_id_when_none_is_sent() {
    let server = Server::start().await;
    let client = server.client();

    let mut req = CallRequest::new(fake::answers(), json!({"text": "hi"}));
    req.call_id = Some(FixedBytes([9; 16]));
    req.optimize = Some(Optimize { price: Some(0.5), latency: Some(0.5), reputation: None });
    req.max_price = Some(Price { amount: 10, unit: "usd-micro".into() });
    req.deadline_ms = Some(5_000);
    let done = guard("call", client.call(&req)).await.unwrap();
    assert_eq!(done, fake::call_result(FixedBytes([9; 16]), &req));

    // Without an id, the server makes one and the answer names it.
    let bare = CallRequest::new(fake::answers(), json!({}));
    let done = guard("call", client.call(&bare)).await.unwrap();
    let calls = server.fake.calls();
    assert_eq!(calls[0], Call::Invoke(Principal::Node, FixedBytes([9; 16]), req, None));
    let Call::Invoke(_, chosen, received, _) = &calls[1] else { panic!("{calls:?}") };
    assert_eq!(received, &bare);
    assert_eq!(done.call_id, *chosen);
    assert_ne!(*chosen, FixedBytes([9; 16]));
    server.stop().await;
}

#[tokio::test]
async fn a_call_answer_has_the_specified_json_shape() {
    let server = Server::start().await;
    let id = b64(&[7; 16]);
    let body = json!({"capability": fake::answers().to_string(), "args": {"n": 1},
                      "call_id": id, "optimize": {"price": 1.0}, "max_price": null,
                      "deadline_ms": null});
    let response = guard(
        "call",
        raw().post(server.url("/v1/call")).bearer_auth(server.token.as_str()).json(&body).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let receipt = fake::receipt();
    assert_eq!(
        answer,
        json!({
            "call_id": id,
            "capability": fake::answers().to_string(),
            "provider": peer(1).to_string(),
            "output": {"echo": {"n": 1}},
            "chunks": 2,
            "stream_root": b64(capmesh_types::Digest::of(b"root").as_bytes()),
            "stream": [b64(b"ab"), b64(b"c")],
            "stream_truncated": false,
            "receipt_id": receipt.id().to_string(),
            "receipt": serde_json::to_value(&receipt).unwrap(),
            "ledger_seq": 0,
            "price": {"amount": 5, "unit": "usd-micro"},
            "warm": true,
            "requests": 1,
            "elapsed_ms": 12,
            "attempts": [{"provider": peer(3).to_string(), "code": "Busy",
                          "message": "Busy at peer 3", "stage": "task", "retry_after_ms": null}],
            "trace": "07070707070707070707070707070707"
        })
    );
    assert_eq!(answer["receipt"]["payload"]["call"], b64(&[7; 16]));
    assert_eq!(
        server.fake.calls()[0],
        Call::Invoke(
            Principal::Node,
            FixedBytes([7; 16]),
            {
                let mut req = CallRequest::new(fake::answers(), json!({"n": 1}));
                req.call_id = Some(FixedBytes([7; 16]));
                req.optimize = Some(Optimize { price: Some(1.0), ..Optimize::default() });
                req
            },
            None
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn a_failed_call_carries_its_code_attempts_and_retry_after() {
    let server = Server::start().await;
    let body = json!({"capability": fake::rate_limited().to_string(), "args": {}});
    let post = || raw().post(server.url("/v1/call")).bearer_auth(server.token.as_str());
    let response = guard("call", post().json(&body).send()).await.unwrap();
    assert_eq!(response.status(), 429);
    // 2 500 ms, rounded up to whole seconds.
    assert_eq!(response.headers()["retry-after"], "3");
    let answer: Value = response.json().await.unwrap();
    let call_id = answer["error"]["call"]["call_id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer,
        json!({"error": {
            "code": "RateLimited",
            "message": "every provider refused or failed",
            "call": {
                "call_id": call_id,
                "code": "Exhausted",
                "attempts": [
                    {"provider": peer(3).to_string(), "code": "RateLimited",
                     "message": "RateLimited at peer 3", "stage": "task", "retry_after_ms": 2500},
                    {"provider": peer(4).to_string(), "code": "Busy",
                     "message": "Busy at peer 4", "stage": "task", "retry_after_ms": null}
                ],
                "retry_after_ms": 2500
            }
        }})
    );

    // Through the client, typed.
    let client = server.client();
    let req = CallRequest::new(fake::rate_limited(), json!({}));
    let error = guard("call", client.call(&req)).await.unwrap_err();
    let ClientError::Api(e) = error else { panic!("{error:?}") };
    assert_eq!(e.code, ErrorCode::RateLimited);
    let failure = e.call.unwrap();
    assert_eq!((failure.code.as_str(), failure.retry_after_ms), ("Exhausted", Some(2500)));
    assert_eq!(
        failure.attempts,
        [fake::attempt(3, "RateLimited", Some(2500)), fake::attempt(4, "Busy", None)]
    );

    // No provider: 404, still with the call's code and no Retry-After.
    let body = json!({"capability": cid(77).to_string(), "args": {}});
    let response = guard("call", post().json(&body).send()).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().get("retry-after").is_none());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["call"]["code"], "NotFound");
    assert_eq!(answer["error"]["call"]["attempts"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn cancel_stops_a_call_in_flight_and_is_not_found_otherwise() {
    let server = Server::start().await;
    let client = server.client();
    let id = FixedBytes([5; 16]);
    let mut req = CallRequest::new(fake::waits(), json!({}));
    req.call_id = Some(id);
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.call(&req).await }
    });
    guard("the call in flight", async {
        while !server.fake.in_flight.lock().unwrap().contains_key(&id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let cancelled = guard("cancel", client.cancel(&id)).await.unwrap();
    assert!(cancelled.cancelled);
    let error = guard("the cancelled call", pending).await.unwrap().unwrap_err();
    let ClientError::Api(e) = error else { panic!("{error:?}") };
    assert_eq!(e.code, ErrorCode::Cancelled);
    assert_eq!(e.call.unwrap().code, "Cancelled");

    // Not in flight any more; never was.
    for unknown in [id, FixedBytes([6; 16])] {
        let error = guard("cancel", client.cancel(&unknown)).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Api(e) if e.code == ErrorCode::NotFound),
            "{error:?}"
        );
    }
    // The raw answer of a cancel.
    let (tx, _rx) = tokio::sync::oneshot::channel();
    server.fake.in_flight.lock().unwrap().insert(FixedBytes([8; 16]), tx);
    let url = server.url(&format!("/v1/calls/{}/cancel", b64(&[8; 16])));
    let response =
        guard("cancel", raw().post(url).bearer_auth(server.token.as_str()).send()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"cancelled": true}));

    let calls = server.fake.calls();
    assert_eq!(
        calls[1..],
        [
            Call::Cancel(id),
            Call::Cancel(id),
            Call::Cancel(FixedBytes([6; 16])),
            Call::Cancel(FixedBytes([8; 16]))
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn attestations_name_a_peer_or_a_cid() {
    let server = Server::start().await;
    let client = server.client();
    for subject in [Subject::Peer(peer(2)), Subject::Cid(cid(3))] {
        let req =
            AttestRequest { subject: subject.clone(), claim: "member".into(), expires_ms: None };
        let attested = guard("attest", client.attest(&req)).await.unwrap();
        let expected = fake::attestation(&req);
        assert_eq!((attested.id, &attested.attestation), (expected.id(), &expected));
    }

    // The JSON shapes: the subject as text in, the record's projection out.
    let body = json!({"subject": peer(2).to_string(), "claim": "org:acme/audited",
                      "expires_ms": 5000});
    let response = guard(
        "attest",
        raw().post(server.url("/v1/attest")).bearer_auth(server.token.as_str()).json(&body).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let req = AttestRequest {
        subject: Subject::Peer(peer(2)),
        claim: "org:acme/audited".into(),
        expires_ms: Some(5000),
    };
    let signed = fake::attestation(&req);
    assert_eq!(
        answer,
        json!({"id": signed.id().to_string(), "attestation": serde_json::to_value(&signed).unwrap()})
    );
    assert_eq!(answer["attestation"]["payload"]["subject"], json!({"peer": peer(2).to_string()}));
    assert_eq!(server.fake.calls().len(), 3);

    // A subject that is neither: 400, and the backend never hears of it.
    for subject in
        ["alice", "", "12D3KooWnope", "bafy", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"]
    {
        let body = json!({"subject": subject, "claim": "member"});
        let req =
            raw().post(server.url("/v1/attest")).bearer_auth(server.token.as_str()).json(&body);
        let message = expect_error(req, ErrorCode::BadRequest).await;
        assert!(message.contains("neither a peer id"), "{subject}: {message}");
    }
    assert_eq!(server.fake.calls().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn malformed_call_requests_are_bad_requests() {
    let server = Server::start().await;
    let token = server.token.as_str();
    let cap = fake::answers().to_string();
    for body in [
        json!({"args": {}}),
        json!({"capability": cap}),
        json!({"capability": "bnope", "args": {}}),
        json!({"capability": cap, "args": {}, "call_id": "AAAA"}),
        json!({"capability": cap, "args": {}, "call_id": b64(&[1; 17])}),
        json!({"capability": cap, "args": {}, "optimize": {"cost": 1}}),
        json!({"capability": cap, "args": {}, "optimize": {"price": "high"}}),
        json!({"capability": cap, "args": {}, "max_price": {"amount": 1}}),
        json!({"capability": cap, "args": {}, "deadline_ms": -1}),
        json!({"capability": cap, "args": {}, "deadline": 1}),
    ] {
        let req = raw().post(server.url("/v1/call")).bearer_auth(token).json(&body);
        expect_error(req, ErrorCode::BadRequest).await;
    }
    for body in [
        json!({"subject": peer(1).to_string()}),
        json!({"claim": "x"}),
        json!({"subject": peer(1).to_string(), "claim": "x", "expires": 1}),
    ] {
        let req = raw().post(server.url("/v1/attest")).bearer_auth(token).json(&body);
        expect_error(req, ErrorCode::BadRequest).await;
    }
    for bad in ["nope", "AAAA", &b64(&[1; 17]), "AQEBAQEBAQEBAQEBAQEBAQ=="] {
        let url = server.url(&format!("/v1/calls/{bad}/cancel"));
        let message = expect_error(raw().post(url).bearer_auth(token), ErrorCode::BadRequest).await;
        assert!(message.contains("call id"), "{bad}: {message}");
    }
    // Wrong methods.
    let get = raw().get(server.url("/v1/call")).bearer_auth(token);
    expect_error(get, ErrorCode::NotFound).await;
    let get =
        raw().get(server.url(&format!("/v1/calls/{}/cancel", b64(&[1; 16])))).bearer_auth(token);
    expect_error(get, ErrorCode::NotFound).await;
    assert_eq!(server.fake.calls(), []);
    server.stop().await;
}
