//! The OpenAPI document: what `specs/openapi.json` holds, what `GET /v1/openapi.json` serves
//! (without a token), the routes it lists against what the server answers, and the server's
//! answers against the schemas it gives them.
//!
//! `CAPMESH_BLESS=1 cargo test -p capmesh-api --test it openapi` rewrites `specs/openapi.json`.

use capmesh_api::{ErrorCode, SessionRequest, openapi};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    fake::{self, Server, guard},
    http::raw,
};

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/openapi.json");

#[test]
fn specs_openapi_json_is_what_the_code_generates() {
    let generated = openapi::json();
    if std::env::var("CAPMESH_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(CHECKED_IN, generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "specs/openapi.json is not what the code generates (first difference at line {}: \
             {:?} there, {:?} generated); if the change is meant, rewrite it with \
             `CAPMESH_BLESS=1 cargo test -p capmesh-api --test it openapi` and commit it",
            line + 1,
            checked_in.lines().nth(line).unwrap_or("<end>"),
            generated.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

#[tokio::test]
async fn the_document_is_served_to_anyone_and_nothing_else_is() {
    let server = Server::start().await;
    let node = server.client();
    let session = guard("open", node.open_session(&SessionRequest::new("reader"))).await.unwrap();
    let http = raw();
    let url = server.url("/v1/openapi.json");
    let wrong = "0".repeat(64);
    for token in [None, Some(wrong.as_str()), Some(server.token.as_str()), Some(&session.token)] {
        let req = http.get(&url);
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let response = guard("openapi", req.send()).await.unwrap();
        assert_eq!(response.status(), 200, "{token:?}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), openapi::json());
    }
    // Other methods on the path are not public: 401 without the token, 404 with it.
    let post = |token: Option<&str>| {
        let req = http.post(&url);
        match token {
            Some(t) => req.bearer_auth(t.to_owned()),
            None => req,
        }
    };
    crate::http::expect_error(post(None), ErrorCode::Unauthorized).await;
    crate::http::expect_error(post(Some(server.token.as_str())), ErrorCode::NotFound).await;
    assert!(server.fake.calls().is_empty());
    server.stop().await;
}

/// A concrete path for a documented one.
fn concrete(path: &str) -> String {
    path.replace("{capability}", &fake::cid(1).to_string())
        .replace("{receipt}", &fake::receipt().id().to_string())
        .replace("{call_id}", "AQEBAQEBAQEBAQEBAQEBAQ")
        .replace("{session}", &"0f".repeat(16))
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let server = Server::start().await;
    let http = raw();
    let doc = openapi::document();
    let methods = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in &methods {
            let documented = item.get(method.as_str().to_ascii_lowercase()).is_some();
            let req = http.request(method.clone(), server.url(&concrete(path)));
            let response =
                guard("probe", req.bearer_auth(server.token.as_str()).send()).await.unwrap();
            let unrouted = response.status() == 404 && {
                let body: Value = response.json().await.unwrap();
                body["error"]["message"].as_str().unwrap().starts_with("no endpoint")
            };
            assert_eq!(unrouted, !documented, "{method} {path}");
        }
    }
    server.stop().await;
}

/// Validates instances against the document's schemas.
struct Schemas {
    doc: &'static Value,
}

impl Schemas {
    /// What is wrong with `instance` by `schema` (which may `$ref` the document's components).
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        let validator = jsonschema::draft202012::new(&root).unwrap();
        validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    fn check(&self, what: &str, schema: &Value, instance: &Value) {
        let errors = self.errors(schema, instance);
        assert!(errors.is_empty(), "{what}: {instance:#}\ndoes not match its schema: {errors:#?}");
    }

    fn operation(&self, method: &Method, path: &str) -> &'static Value {
        let op = &self.doc["paths"][path][method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// The documented response of `status` (or `default`), `$ref` followed.
    fn response(&self, method: &Method, path: &str, status: u16) -> &'static Value {
        let responses = &self.operation(method, path)["responses"];
        let response = responses.get(status.to_string()).unwrap_or(&responses["default"]);
        match response["$ref"].as_str() {
            Some(r) => {
                let name = r.strip_prefix("#/components/responses/").unwrap();
                &self.doc["components"]["responses"][name]
            }
            None => response,
        }
    }

    /// Sends a request as the documented `method path` and checks its body, if any, and the
    /// answer against the document; returns the status and the answer's JSON values (one, or
    /// one per line or event of a stream).
    async fn exchange(
        &self,
        server: &Server,
        token: &str,
        method: Method,
        path: &str,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Vec<Value>) {
        let what = format!("{method} {url}");
        let mut req = raw().request(method.clone(), server.url(url)).bearer_auth(token);
        if let Some(body) = body {
            let op = self.operation(&method, path);
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{what} documents no body");
            self.check(&format!("request of {what}"), schema, &body);
            req = req.json(&body);
        }
        let response = guard(&what, req.send()).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        let documented = self.response(&method, path, status);
        let schema = &documented["content"][&content_type]["schema"];
        assert!(schema.is_object(), "{what}: {status} {content_type} is not documented");
        let text = guard(&what, response.text()).await.unwrap();
        let values: Vec<Value> = match content_type.as_str() {
            "application/json" => vec![serde_json::from_str(&text).unwrap()],
            "application/x-ndjson" => {
                text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
            }
            "text/event-stream" => text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect(),
            other => panic!("{what}: unexpected content type {other}"),
        };
        assert!(!values.is_empty(), "{what}: empty answer");
        for value in &values {
            self.check(&format!("{status} answer of {what}"), schema, value);
        }
        (status, values)
    }
}

#[tokio::test]
async fn the_servers_answers_match_their_schemas() {
    let server = Server::start().await;
    let s = Schemas { doc: openapi::document() };
    // The check checks: a wrong answer fails it.
    let status = json!({"$ref": "#/components/schemas/Status"});
    let mut wrong = serde_json::to_value(fake::status()).unwrap();
    assert!(s.errors(&status, &wrong).is_empty());
    wrong["published"] = json!(["not a cid"]);
    assert!(!s.errors(&status, &wrong).is_empty());
    let node = server.token.as_str().to_owned();
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    let cap = fake::cid(1).to_string();
    let answers = fake::answers().to_string();
    let receipt = fake::receipt().id().to_string();
    let call_id = "AQEBAQEBAQEBAQEBAQEBAQ";

    let cases: Vec<(Method, &str, String, Option<Value>, u16)> = vec![
        (get.clone(), "/v1/status", "/v1/status".into(), None, 200),
        (get.clone(), "/v1/peers", "/v1/peers".into(), None, 200),
        (get.clone(), "/v1/blocked", "/v1/blocked".into(), None, 200),
        (
            post.clone(),
            "/v1/blocked",
            "/v1/blocked".into(),
            Some(json!({"block": [fake::peer(2).to_string()]})),
            200,
        ),
        (
            post.clone(),
            "/v1/capabilities",
            "/v1/capabilities".into(),
            Some(
                json!({"contract": fake::contract_json(), "price": {"amount": 1, "unit": "credit"},
                        "limits": {"timeout_ms": 1000, "max_input_bytes": 10, "concurrency": 1},
                        "ttl_ms": 5, "announce_only": true}),
            ),
            200,
        ),
        (
            delete.clone(),
            "/v1/capabilities/{capability}",
            format!("/v1/capabilities/{cap}"),
            None,
            200,
        ),
        (
            delete.clone(),
            "/v1/capabilities/{capability}",
            format!("/v1/capabilities/{}", fake::conflicting()),
            None,
            409,
        ),
        (get.clone(), "/v1/find/{capability}", format!("/v1/find/{cap}?limit=2"), None, 200),
        (get.clone(), "/v1/contracts/{capability}", format!("/v1/contracts/{answers}"), None, 200),
        (get.clone(), "/v1/contracts/{capability}", format!("/v1/contracts/{cap}"), None, 404),
        (
            post.clone(),
            "/v1/registry/query",
            "/v1/registry/query".into(),
            Some(
                json!({"filter": {"tags": ["text"], "max_price": {"amount": 10, "unit": "credit"}},
                        "newest": true, "limit": 2}),
            ),
            200,
        ),
        (get.clone(), "/v1/receipts", "/v1/receipts?from=0&limit=1".into(), None, 200),
        (get.clone(), "/v1/receipts", "/v1/receipts?limit=0".into(), None, 400),
        (get.clone(), "/v1/receipts/head", "/v1/receipts/head".into(), None, 200),
        (get.clone(), "/v1/receipts/{receipt}", format!("/v1/receipts/{receipt}"), None, 200),
        (get.clone(), "/v1/receipts/{receipt}", "/v1/receipts/nope".into(), None, 400),
        (
            post.clone(),
            "/v1/call",
            "/v1/call".into(),
            Some(json!({"capability": answers, "args": {"text": "hi"}, "call_id": call_id,
                        "optimize": {"price": 0.5, "latency": 0.5},
                        "max_price": {"amount": 10, "unit": "credit"}, "deadline_ms": 30000})),
            200,
        ),
        (
            post.clone(),
            "/v1/call",
            "/v1/call".into(),
            Some(json!({"capability": fake::rate_limited().to_string(), "args": null})),
            429,
        ),
        (
            post.clone(),
            "/v1/calls",
            "/v1/calls".into(),
            Some(json!({"capability": answers, "args": {}, "call_id": call_id})),
            202,
        ),
        (get.clone(), "/v1/calls/{call_id}", format!("/v1/calls/{call_id}"), None, 200),
        (
            get.clone(),
            "/v1/calls/{call_id}/events",
            format!("/v1/calls/{call_id}/events?from=1"),
            None,
            200,
        ),
        (
            post.clone(),
            "/v1/calls/{call_id}/cancel",
            format!("/v1/calls/{call_id}/cancel"),
            None,
            404,
        ),
        (
            post.clone(),
            "/v1/attest",
            "/v1/attest".into(),
            Some(json!({"subject": fake::peer(3).to_string(), "claim": "org:acme/member",
                        "expires_ms": 5000})),
            200,
        ),
        (
            post.clone(),
            "/v1/attest",
            "/v1/attest".into(),
            Some(json!({"subject": cap, "claim": "member"})),
            200,
        ),
        (
            get.clone(),
            "/v1/attestations",
            format!("/v1/attestations?subject={}&claim=member&limit=5", fake::peer(3)),
            None,
            200,
        ),
        (get.clone(), "/v1/attestations", format!("/v1/attestations?subject={cap}"), None, 200),
        (get.clone(), "/v1/attestations", "/v1/attestations?subject=alice".into(), None, 400),
        (get.clone(), "/v1/attestations", "/v1/attestations?limit=0".into(), None, 400),
        (
            post.clone(),
            "/v1/sessions",
            "/v1/sessions".into(),
            Some(json!({"name": "summarizer", "metadata": {"model": "m"}, "ttl_secs": 120})),
            201,
        ),
        (get.clone(), "/v1/sessions", "/v1/sessions".into(), None, 200),
        (
            get.clone(),
            "/v1/sessions/{session}",
            format!("/v1/sessions/{}", "01".repeat(16)),
            None,
            200,
        ),
        (
            post.clone(),
            "/v1/sessions/{session}/heartbeat",
            format!("/v1/sessions/{}/heartbeat", "01".repeat(16)),
            None,
            200,
        ),
        (
            get.clone(),
            "/v1/sessions/{session}/runtime",
            format!("/v1/sessions/{}/runtime", "01".repeat(16)),
            None,
            400,
        ),
        (
            delete.clone(),
            "/v1/sessions/{session}",
            format!("/v1/sessions/{}", "01".repeat(16)),
            None,
            200,
        ),
        (
            delete.clone(),
            "/v1/sessions/{session}",
            format!("/v1/sessions/{}", "01".repeat(16)),
            None,
            404,
        ),
    ];
    for (method, path, url, body, want) in cases {
        let (status, _) = s.exchange(&server, &node, method.clone(), path, &url, body).await;
        assert_eq!(status, want, "{method} {url}");
    }
    // A token that is not one, and a session's token outside its routes.
    let (status, _) =
        s.exchange(&server, "nope", get.clone(), "/v1/peers", "/v1/peers", None).await;
    assert_eq!(status, 401);
    let client = server.client();
    let session = guard("open", client.open_session(&SessionRequest::new("a"))).await.unwrap();
    let (status, _) =
        s.exchange(&server, &session.token, get.clone(), "/v1/peers", "/v1/peers", None).await;
    assert_eq!(status, 403);
    server.stop().await;
}
