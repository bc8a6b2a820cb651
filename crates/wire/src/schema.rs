//! Schema ids: the CID of each kind's JSON Schema (its canonical CBOR form) as shipped in
//! specs/schemas/kinds/. The files are compiled in, so the ids cannot drift from the specs.

use std::sync::LazyLock;

use capmesh_types::{Cid, Codec};

use crate::{Kind, cbor};

macro_rules! schema_files {
    ($($kind:ident),*) => {
        /// The JSON Schema text of `kind`'s body, as shipped in specs/.
        pub fn text(kind: Kind) -> &'static str {
            match kind {
                $(Kind::$kind => include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"), "/../../specs/schemas/kinds/", stringify!($kind), ".json"
                )),)*
            }
        }
    };
}

schema_files!(
    AdvertiseCapability,
    Retire,
    Attest,
    Discover,
    DiscoverResult,
    Sync,
    SyncResult,
    Intent,
    Offer,
    Negotiate,
    TaskStart,
    TaskAccepted,
    TaskProgress,
    TaskDone,
    TaskCancel,
    Receipt,
    Error
);

/// CID of a JSON value's canonical CBOR form (how schema ids and `capmesh cid` are computed).
pub fn json_cid(json: &serde_json::Value) -> Result<Cid, cbor::EncodeError> {
    Ok(Cid::of(Codec::DagCbor, &cbor::to_vec(json)?))
}

static IDS: LazyLock<Vec<Cid>> = LazyLock::new(|| {
    Kind::ALL
        .iter()
        .map(|&kind| {
            let json: serde_json::Value = serde_json::from_str(text(kind))
                .expect("schemas in specs/ are valid JSON (checked by tests)");
            json_cid(&json).expect("schemas in specs/ have a canonical form (checked by tests)")
        })
        .collect()
});

/// The schema id of `kind`'s body.
pub fn id(kind: Kind) -> Cid {
    IDS[kind as usize]
}

/// Whether `schema` is a schema id this node knows for `kind` (v1 knows exactly one each).
pub fn is_known(kind: Kind, schema: &Cid) -> bool {
    id(kind) == *schema
}
