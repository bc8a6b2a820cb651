//! Raw HTTP, for requests the typed client cannot make (no token, bad JSON, bad ids).

use capmesh_api::{ErrorCode, MAX_BODY_BYTES};
use serde_json::Value;

use crate::fake::{Server, guard};

pub(crate) fn raw() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends `req` and checks the answer is the typed error body with `code` and its status.
pub(crate) async fn expect_error(req: reqwest::RequestBuilder, code: ErrorCode) -> String {
    let response = guard("request", req.send()).await.unwrap();
    assert_eq!(response.status().as_u16(), code.http_status());
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code.as_str(), "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    message
}

#[tokio::test]
async fn without_the_right_token_nothing_reaches_the_backend() {
    let server = Server::start().await;
    let http = raw();
    let bearer = |req: reqwest::RequestBuilder, token: Option<&str>| match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let wrong = "0".repeat(64);
    let cap = crate::fake::cid(1);
    for token in [None, Some(wrong.as_str()), Some(""), Some("x")] {
        let requests = [
            http.get(server.url("/v1/status")),
            http.get(server.url("/v1/peers")),
            http.post(server.url("/v1/capabilities")).json(&serde_json::json!({"contract": {}})),
            http.delete(server.url(&format!("/v1/capabilities/{cap}"))),
            http.get(server.url(&format!("/v1/find/{cap}"))),
            http.get(server.url(&format!("/v1/contracts/{cap}"))),
            http.post(server.url("/v1/registry/query")).json(&serde_json::json!({})),
            http.get(server.url("/v1/receipts")),
            http.get(server.url(&format!("/v1/receipts/{cap}"))),
            http.post(server.url("/v1/call"))
                .json(&serde_json::json!({"capability": cap.to_string(), "args": {}})),
            http.post(server.url("/v1/calls/AQEBAQEBAQEBAQEBAQEBAQ/cancel")),
            http.post(server.url("/v1/attest"))
                .json(&serde_json::json!({"subject": cap.to_string(), "claim": "member"})),
            // Malformed and unknown requests too: the token is checked before anything else.
            http.post(server.url("/v1/registry/query")).body("{"),
            http.get(server.url("/v1/nowhere")),
        ];
        for req in requests {
            let req = bearer(req, token);
            let response = guard("request", req.send()).await.unwrap();
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
        }
    }
    // Not `Bearer`: the token alone, or another scheme.
    let req = http.get(server.url("/v1/status")).header("authorization", server.token.as_str());
    expect_error(req, ErrorCode::Unauthorized).await;
    let req = http.get(server.url("/v1/status")).basic_auth("capmesh", Some(server.token.as_str()));
    expect_error(req, ErrorCode::Unauthorized).await;

    assert_eq!(server.fake.calls(), []);
    // The right token, for contrast.
    let req = http.get(server.url("/v1/status")).bearer_auth(server.token.as_str());
    assert_eq!(guard("status", req.send()).await.unwrap().status(), 200);
    assert_eq!(server.fake.calls().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_typed_bad_requests() {
    let server = Server::start().await;
    let http = raw();
    let token = server.token.as_str();
    let post = |path: &str| http.post(server.url(path)).bearer_auth(token);

    let json = |req: reqwest::RequestBuilder, body: &str| {
        req.header("content-type", "application/json").body(body.to_owned())
    };
    for (path, body) in [
        ("/v1/capabilities", "{"),
        ("/v1/capabilities", "[]"),
        ("/v1/capabilities", "{}"),
        ("/v1/capabilities", r#"{"contract": {}, "ttl": 5}"#),
        ("/v1/capabilities", r#"{"contract": {}, "price": {"amount": -1, "unit": "x"}}"#),
        ("/v1/registry/query", "not json"),
        ("/v1/registry/query", r#"{"capability": "bnope"}"#),
        ("/v1/registry/query", r#"{"limit": "ten"}"#),
    ] {
        let message = expect_error(json(post(path), body), ErrorCode::BadRequest).await;
        assert!(!message.contains("<"), "{message}");
    }
    // JSON without its content type.
    let message = expect_error(post("/v1/registry/query").body("{}"), ErrorCode::BadRequest).await;
    assert!(message.contains("application/json"), "{message}");
    // Over 1 MiB.
    let big = format!(r#"{{"contract": {{"description": "{}"}}}}"#, "x".repeat(MAX_BODY_BYTES));
    let message = expect_error(json(post("/v1/capabilities"), &big), ErrorCode::BadRequest).await;
    assert!(message.contains("1 MiB"), "{message}");

    // Bad ids in the path, bad query strings.
    let get = |path: &str| http.get(server.url(path)).bearer_auth(token);
    let message = expect_error(
        http.delete(server.url("/v1/capabilities/nope")).bearer_auth(token),
        ErrorCode::BadRequest,
    )
    .await;
    assert!(message.contains("capability id"), "{message}");
    expect_error(get("/v1/find/bafy"), ErrorCode::BadRequest).await;
    let message = expect_error(get("/v1/contracts/bafy"), ErrorCode::BadRequest).await;
    assert!(message.contains("capability id"), "{message}");
    let cap = crate::fake::cid(1);
    expect_error(get(&format!("/v1/find/{cap}?limit=-1")), ErrorCode::BadRequest).await;
    expect_error(get(&format!("/v1/find/{cap}?limt=1")), ErrorCode::BadRequest).await;

    assert_eq!(server.fake.calls(), []);
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_typed_not_found() {
    let server = Server::start().await;
    let http = raw();
    let token = server.token.as_str();
    for req in [
        http.get(server.url("/")),
        http.get(server.url("/v1")),
        http.get(server.url("/v2/status")),
        http.get(server.url("/v1/status/extra")),
        http.post(server.url("/v1/status")),
        http.get(server.url("/v1/capabilities")),
        http.get(server.url("/v1/contracts")),
        http.post(server.url(&format!("/v1/contracts/{}", crate::fake::cid(1)))),
        http.put(server.url("/v1/registry/query")),
    ] {
        let message = expect_error(req.bearer_auth(token), ErrorCode::NotFound).await;
        assert!(message.contains("specs/api.md"), "{message}");
    }
    assert_eq!(server.fake.calls(), []);
    server.stop().await;
}
