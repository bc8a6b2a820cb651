//! `GET /v1/contracts/{capability}`: a capability's contract and where the node found it.

use capmesh_api::{ClientError, ContractInfo, ErrorCode, Source};
use serde_json::{Value, json};

use crate::{
    fake::{self, Call, Server, answers, cid, guard, on_the_mesh},
    http::{expect_error, raw},
};

#[tokio::test]
async fn contracts_round_trip_through_the_client_with_their_source() {
    let server = Server::start().await;
    let client = server.client();

    let replica = guard("contract", client.contract(answers())).await.unwrap();
    assert_eq!(
        replica,
        ContractInfo {
            capability: answers(),
            contract: fake::contract_json(),
            source: Source::Replica
        }
    );
    let mesh = guard("contract", client.contract(on_the_mesh())).await.unwrap();
    assert_eq!((mesh.capability, mesh.source), (on_the_mesh(), Source::Kademlia));
    assert_eq!(mesh.contract, fake::contract_json());

    let error = guard("contract", client.contract(cid(42))).await.unwrap_err();
    match &error {
        ClientError::Api(e) => {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(e.message.contains(&cid(42).to_string()), "{e}");
            assert_eq!(e.call, None);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    assert_eq!(
        server.fake.calls(),
        [Call::Contract(answers()), Call::Contract(on_the_mesh()), Call::Contract(cid(42))]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_answer_has_the_specified_json_shape() {
    let server = Server::start().await;
    let response = guard(
        "contract",
        raw()
            .get(server.url(&format!("/v1/contracts/{}", on_the_mesh())))
            .bearer_auth(server.token.as_str())
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "capability": on_the_mesh().to_string(),
            "contract": fake::contract_json(),
            "source": "kademlia",
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_ids_are_bad_requests_unknown_ones_not_found_and_the_token_is_required() {
    let server = Server::start().await;
    let http = raw();
    let get = |path: &str| http.get(server.url(path)).bearer_auth(server.token.as_str());
    for bad in ["nope", "bafy", "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"] {
        let message =
            expect_error(get(&format!("/v1/contracts/{bad}")), ErrorCode::BadRequest).await;
        assert!(message.contains("capability id") && message.contains(bad), "{message}");
    }
    // An extra segment is no endpoint.
    let path = format!("/v1/contracts/{}/extra", answers());
    expect_error(get(&path), ErrorCode::NotFound).await;
    assert_eq!(server.fake.calls(), [], "nothing malformed reaches the backend");

    let path = format!("/v1/contracts/{}", cid(9));
    let message = expect_error(get(&path), ErrorCode::NotFound).await;
    assert!(message.contains(&cid(9).to_string()), "{message}");
    assert_eq!(server.fake.calls(), [Call::Contract(cid(9))]);

    // Without the token, or with another, the backend is never asked.
    let path = format!("/v1/contracts/{}", answers());
    expect_error(http.get(server.url(&path)), ErrorCode::Unauthorized).await;
    expect_error(http.get(server.url(&path)).bearer_auth("0".repeat(64)), ErrorCode::Unauthorized)
        .await;
    let wrong = capmesh_api::Client::new(server.addr, "f".repeat(64)).unwrap();
    let error = guard("contract", wrong.contract(answers())).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Api(e) if e.code == ErrorCode::Unauthorized),
        "{error:?}"
    );
    assert_eq!(server.fake.calls(), [Call::Contract(cid(9))]);
    server.stop().await;
}
