//! The wire format of capmesh: Pervasive.link envelopes and signed records in canonical CBOR,
//! every v1 kind, and their JSON projections. Nothing here touches the network or the disk; the
//! specs in `specs/` are the contract and the tests hold this crate to them.
//!
//! - [`cbor`]: canonical encoding and the strict decoder, with size and depth limits.
//! - [`Signed`] records ([`Advert`], [`Retirement`], [`Attestation`], [`Receipt`],
//!   [`Countersignature`], [`LedgerHead`]) with a domain tag per type; id = CID of the payload.
//! - [`Envelope`]s carrying a [`Body`] of one [`Kind`]; [`Receiver`] checks expiry, clock
//!   skew, replay, recipient and schema id.
//!
//! ```
//! use capmesh_types::NodeKey;
//! use capmesh_wire::{Envelope, Receiver, TaskCancel, repr::FixedBytes};
//!
//! let (alice, bob) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
//! let now = 1_760_000_000_000;
//! let body = TaskCancel { call: FixedBytes([0; 16]), reason: Some("user".into()) };
//! let bytes = Envelope::builder(body).to(bob.peer_id()).sign(&alice, now)?.to_bytes();
//!
//! let opened = Receiver::new(bob.peer_id()).accept(&bytes, now)?;
//! assert_eq!(opened.payload.sender(), alice.peer_id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod body_rules;
pub mod cbor;
mod code;
mod envelope;
mod error;
pub mod json;
mod kinds;
mod records;
pub mod repr;
pub mod schema;
mod signed;

pub use code::Code;
pub use envelope::{
    Envelope, EnvelopeBuilder, EnvelopePayload, Nonce, Opened, Receiver, Rules, TraceId, VERSION,
    seal,
};
pub use error::{SignError, VerifyError};
pub use kinds::*;
pub use records::*;
pub use signed::{DEFAULT_SKEW_MS, Payload, Record, Signed, Verified, domain};
