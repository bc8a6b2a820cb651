//! Helpers the in-process scenarios share.

use std::time::Duration;

use capmesh_exec::Builtin;
use capmesh_store::LedgerKind;
use capmesh_testkit::{TestNode, wait_for};
use capmesh_types::Cid;
use capmesh_wire::{Receipt, Signed, cbor::Limits};

/// Bound on anything awaited in a scenario: a guard against hangs, never a measurement.
pub(crate) const T: Duration = Duration::from_secs(30);

/// The capability id of a builtin's own contract.
pub(crate) fn cap_of(b: Builtin) -> Cid {
    capmesh_contract::check(&b.contract()).unwrap()
}

/// Waits until `node`'s replica holds `n` adverts for `cap` (gossip reached it).
pub(crate) async fn sees(node: &TestNode, cap: Cid, n: usize) {
    wait_for("adverts in the replica", T, || async {
        let have = node.adverts(&cap);
        if have >= n { Ok(()) } else { Err(have) }
    })
    .await;
}

/// The receipts in `node`'s ledger, decoded, in order.
pub(crate) fn receipts_in(node: &TestNode) -> Vec<Receipt> {
    node.node
        .store
        .ledger()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Receipt)
        .map(|e| {
            Signed::<Receipt>::from_bytes(&e.signed, Limits::default())
                .unwrap()
                .decode(Limits::default())
                .unwrap()
        })
        .collect()
}
