//! The receipt ledger endpoints: `GET /v1/receipts` and `GET /v1/receipts/{receipt_id}`.

use capmesh_api::{
    ClientError, ErrorCode, LEDGER_PAGE_DEFAULT, LEDGER_PAGE_MAX, LedgerEntryJson, LedgerKind,
    LedgerRequest,
};
use capmesh_types::Digest;
use serde_json::{Value, json};

use crate::{
    fake::{self, Call, Server, cid, guard, peer},
    http::{expect_error, raw},
};

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

#[tokio::test]
async fn pages_and_lookups_round_trip_through_the_client() {
    let server = Server::start().await;
    let client = server.client();
    let ledger = fake::ledger();

    let page = guard("receipts", client.receipts(&LedgerRequest::default())).await.unwrap();
    assert_eq!(page.entries, ledger);
    assert_eq!((page.next, page.len), (None, 2));

    let req = LedgerRequest { from: Some(0), limit: Some(1) };
    let first = guard("receipts", client.receipts(&req)).await.unwrap();
    assert_eq!((first.entries.as_slice(), first.next, first.len), (&ledger[..1], Some(1), 2));
    let req = LedgerRequest { from: first.next, limit: Some(LEDGER_PAGE_MAX) };
    let second = guard("receipts", client.receipts(&req)).await.unwrap();
    assert_eq!((second.entries.as_slice(), second.next), (&ledger[1..], None));

    let id = fake::receipt().id();
    let found = guard("receipt", client.receipt(id)).await.unwrap();
    assert_eq!(found.receipt, ledger[0]);
    assert_eq!(found.countersignature.as_ref(), Some(&ledger[1]));

    let error = guard("receipt", client.receipt(cid(42))).await.unwrap_err();
    assert!(matches!(&error, ClientError::Api(e) if e.code == ErrorCode::NotFound), "{error:?}");

    assert_eq!(
        server.fake.calls(),
        [
            Call::Receipts { from: 0, limit: LEDGER_PAGE_DEFAULT },
            Call::Receipts { from: 0, limit: 1 },
            Call::Receipts { from: 1, limit: LEDGER_PAGE_MAX },
            Call::Receipt(id),
            Call::Receipt(cid(42)),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn entries_have_the_specified_json_shape() {
    let server = Server::start().await;
    let get = |path: &str| raw().get(server.url(path)).bearer_auth(server.token.as_str());

    let response = guard("receipts", get("/v1/receipts?limit=1").send()).await.unwrap();
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    let receipt = fake::receipt();
    let expected_receipt = json!({
        "seq": 0,
        "hash": b64(Digest::of(b"0").as_bytes()),
        "kind": "Receipt",
        "id": receipt.id().to_string(),
        "signed": b64(&receipt.to_bytes()),
        "record": {
            "payload": {
                "call": b64(&[7; 16]),
                "capability": cid(1).to_string(),
                "caller": peer(2).to_string(),
                "provider": peer(1).to_string(),
                "offer": cid(3).to_string(),
                "input": b64(Digest::of(b"args").as_bytes()),
                "output": b64(Digest::of(b"output").as_bytes()),
                "price": {"amount": 5, "unit": "usd-micro"},
                "started": 1_000,
                "ended": 1_200,
                "status": "Ok",
                "validation": "Passed",
            },
            "sig": b64(receipt.sig()),
        },
        "note": null,
    });
    assert_eq!(page, json!({"entries": [expected_receipt], "next": 1, "len": 2}));

    let path = format!("/v1/receipts/{}", receipt.id());
    let response = guard("receipt", get(&path).send()).await.unwrap();
    assert_eq!(response.status(), 200);
    let found: Value = response.json().await.unwrap();
    let c = fake::countersignature();
    assert_eq!(found["receipt"], expected_receipt);
    assert_eq!(
        found["countersignature"],
        json!({
            "seq": 1,
            "hash": b64(Digest::of(b"1").as_bytes()),
            "kind": "Countersignature",
            "id": c.id().to_string(),
            "signed": b64(&c.to_bytes()),
            "record": {
                "payload": {
                    "receipt": receipt.id().to_string(),
                    "caller": peer(2).to_string(),
                    "signed": 1_300,
                },
                "sig": b64(c.sig()),
            },
            "note": null,
        })
    );
    assert_eq!(found.as_object().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn bad_pages_and_ids_are_typed_bad_requests_and_unknown_ids_not_found() {
    let server = Server::start().await;
    let http = raw();
    let get = |path: &str| http.get(server.url(path)).bearer_auth(server.token.as_str());
    for path in [
        "/v1/receipts?limit=0",
        "/v1/receipts?limit=1001",
        "/v1/receipts?limit=ten",
        "/v1/receipts?from=-1",
        "/v1/receipts?form=1",
    ] {
        let message = expect_error(get(path), ErrorCode::BadRequest).await;
        assert!(!message.contains('<'), "{path}: {message}");
        if path.contains("limit=10") || path.contains("limit=0") {
            assert!(message.contains("1 to 1000"), "{path}: {message}");
        }
    }
    let message = expect_error(get("/v1/receipts/bnope"), ErrorCode::BadRequest).await;
    assert!(message.contains("receipt id"), "{message}");
    assert_eq!(server.fake.calls(), [], "nothing malformed reaches the backend");

    let message = expect_error(get(&format!("/v1/receipts/{}", cid(9))), ErrorCode::NotFound).await;
    assert!(message.contains(&cid(9).to_string()), "{message}");
    // Other methods are unknown endpoints.
    let req = http.post(server.url("/v1/receipts")).bearer_auth(server.token.as_str());
    expect_error(req, ErrorCode::NotFound).await;
    server.stop().await;
}

#[test]
fn entries_that_do_not_decode_keep_their_bytes_and_lose_only_the_projection() {
    // Not a signed object at all.
    let e = LedgerEntryJson::new(3, Digest::of(b"h"), LedgerKind::Receipt, vec![1, 2, 3]);
    assert_eq!((e.id, &e.record, e.signed.0.as_slice()), (None, &None, &[1u8, 2, 3][..]));
    let value = serde_json::to_value(&e).unwrap();
    assert_eq!((&value["id"], &value["record"]), (&Value::Null, &Value::Null));
    assert_eq!(value["signed"], b64(&[1, 2, 3]));
    assert_eq!(serde_json::from_value::<LedgerEntryJson>(value).unwrap(), e);

    // A signed object whose payload is not a receipt: an id, no record.
    let c = fake::countersignature();
    let e = LedgerEntryJson::new(0, Digest::of(b"h"), LedgerKind::Receipt, c.to_bytes());
    assert_eq!((e.id, e.record), (Some(c.id()), None));

    // What verification reads is enough to read an entry back: `id` and `record` may be absent.
    let line = json!({"seq": 1, "hash": b64(&[0; 32]), "kind": "Countersignature", "signed": ""});
    let e: LedgerEntryJson = serde_json::from_value(line).unwrap();
    assert_eq!((e.seq, e.kind, e.id, e.record), (1, LedgerKind::Countersignature, None, None));
    // Bytes are unpadded base64url: padding and other alphabets are refused.
    for bad in [b64(&[0; 31]) + "=", "+/+/".into()] {
        let line = json!({"seq": 1, "hash": b64(&[0; 32]), "kind": "Receipt", "signed": bad});
        assert!(serde_json::from_value::<LedgerEntryJson>(line).is_err(), "{bad}");
    }
    let short = json!({"seq": 1, "hash": b64(&[0; 31]), "kind": "Receipt", "signed": ""});
    assert!(serde_json::from_value::<LedgerEntryJson>(short).is_err());
}
