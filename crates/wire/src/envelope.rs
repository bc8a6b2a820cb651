//! Pervasive.link envelopes: build and sign, open and check (DESIGN §2).

use std::collections::{BTreeSet, HashSet};

use capmesh_types::{Cid, NodeKey, PeerId, PublicKey};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    Body, Carrier, Kind,
    cbor::{self, Limits},
    error::{SignError, VerifyError},
    repr::{self, FixedBytes},
    schema,
    signed::{DEFAULT_SKEW_MS, Payload, Signed, check_window, domain, verify_sig},
};

/// Protocol version carried in `v`.
pub const VERSION: u64 = 1;

/// 8 random bytes; (`from`, `nonce`) is unique within the validity window.
pub type Nonce = FixedBytes<8>;
/// 16 bytes threading every envelope of one call or workflow.
pub type TraceId = FixedBytes<16>;

/// A signed envelope: `{payload, sig}` under the `pervasive.link/v1/envelope` domain.
pub type Envelope = Signed<EnvelopePayload>;

/// The signed content of an envelope. `kind` is implied by the body.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopePayload {
    pub v: u64,
    pub from: PublicKey,
    /// Recipient of a direct message; absent for gossip.
    pub to: Option<PeerId>,
    /// Creation time, unix ms.
    pub ts: u64,
    /// Expiry, unix ms.
    pub exp: u64,
    pub nonce: Nonce,
    pub trace: TraceId,
    /// Id of the envelope this one answers.
    pub re: Option<Cid>,
    /// Id of the JSON Schema of `body` as shipped in specs/.
    pub schema: Cid,
    pub body: Body,
}

impl EnvelopePayload {
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The sender as a PeerId.
    pub fn sender(&self) -> PeerId {
        PeerId::from_public_key(self.from)
    }
}

/// Field order is irrelevant: the canonical writer sorts keys. Every header field is `Copy`;
/// only the body is borrowed.
#[derive(Serialize)]
struct PayloadSer<'a> {
    v: u64,
    kind: Kind,
    #[serde(with = "repr")]
    from: PublicKey,
    #[serde(with = "repr", skip_serializing_if = "Option::is_none")]
    to: Option<PeerId>,
    ts: u64,
    exp: u64,
    nonce: Nonce,
    trace: TraceId,
    #[serde(with = "repr", skip_serializing_if = "Option::is_none")]
    re: Option<Cid>,
    #[serde(with = "repr")]
    schema: Cid,
    body: &'a Body,
}

/// The payload's header, with the body left as `B` (skipped, a CBOR value, or JSON).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadDe<B> {
    v: u64,
    kind: Kind,
    #[serde(with = "repr")]
    from: PublicKey,
    #[serde(with = "repr", default)]
    to: Option<PeerId>,
    ts: u64,
    exp: u64,
    nonce: Nonce,
    trace: TraceId,
    #[serde(with = "repr", default)]
    re: Option<Cid>,
    #[serde(with = "repr")]
    schema: Cid,
    body: B,
}

impl<B> PayloadDe<B> {
    fn with_body(self, body: Body) -> EnvelopePayload {
        EnvelopePayload {
            v: self.v,
            from: self.from,
            to: self.to,
            ts: self.ts,
            exp: self.exp,
            nonce: self.nonce,
            trace: self.trace,
            re: self.re,
            schema: self.schema,
            body,
        }
    }
}

impl Serialize for EnvelopePayload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PayloadSer {
            v: self.v,
            kind: self.kind(),
            from: self.from,
            to: self.to,
            ts: self.ts,
            exp: self.exp,
            nonce: self.nonce,
            trace: self.trace,
            re: self.re,
            schema: self.schema,
            body: &self.body,
        }
        .serialize(s)
    }
}

/// The body's encoded bytes, borrowed: `body` sorts before `kind` in canonical order, so the
/// body is decoded only after the header, once its type is known.
struct RawBody<'de>(&'de [u8]);

impl<'de> Deserialize<'de> for RawBody<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an envelope body")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(RawBody(v))
            }
        }
        d.deserialize_newtype_struct(cbor::de::RAW, V)
    }
}

impl<'de> Deserialize<'de> for EnvelopePayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let de = PayloadDe::<serde_json::Value>::deserialize(d)?;
            let body = Body::from_json(de.kind, de.body.clone()).map_err(D::Error::custom)?;
            Ok(de.with_body(body))
        } else {
            let de = PayloadDe::<RawBody<'de>>::deserialize(d)?;
            let body = Body::decode_checked(de.kind, de.body.0).map_err(D::Error::custom)?;
            Ok(de.with_body(body))
        }
    }
}

impl Payload for EnvelopePayload {
    const NAME: &'static str = "EnvelopePayload";

    /// The shape, then the body's rules (protocol.md §7.2 check 4, §8.8): both before the
    /// version, so a body a v1 decoder cannot accept is `InvalidObject` whatever `v` says.
    fn decode_payload(bytes: &[u8], limits: Limits) -> Result<Self, VerifyError> {
        let payload: Self = cbor::from_slice(bytes, limits, Self::NAME)?;
        payload.body.check(limits)?;
        Ok(payload)
    }
}

/// Receiver-side rules for envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Size and depth limits of the decoder. Default 1 MiB, depth 64.
    pub limits: Limits,
    /// Allowed clock skew for `ts`. Default 30 s.
    pub skew_ms: u64,
    /// Longest accepted `exp - ts`. Default 10 minutes; bounds the replay cache's window.
    pub max_ttl_ms: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { limits: Limits::default(), skew_ms: DEFAULT_SKEW_MS, max_ttl_ms: 10 * 60 * 1000 }
    }
}

/// An envelope that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub id: Cid,
    pub payload: EnvelopePayload,
}

impl Envelope {
    /// Starts an envelope with this body; sign it with [`EnvelopeBuilder::sign`].
    pub fn builder(body: impl Into<Body>) -> EnvelopeBuilder {
        EnvelopeBuilder {
            body: body.into(),
            to: None,
            re: None,
            trace: None,
            nonce: None,
            ttl_ms: 60_000,
        }
    }

    /// Checks everything that needs no receiver state: strict decode (with the body's rules,
    /// [`Body::check`]), version, signature by `from`, time window and schema id.
    /// [`Receiver::accept`] adds recipient and replay checks.
    pub fn open(&self, now_ms: u64, rules: &Rules) -> Result<Opened, VerifyError> {
        let payload = self.decode(rules.limits)?;
        if payload.v != VERSION {
            return Err(VerifyError::UnsupportedVersion(payload.v));
        }
        verify_sig(&payload.sender(), domain::ENVELOPE, self.payload(), self.sig())?;
        check_window(payload.ts, Some(payload.exp), now_ms, rules.skew_ms)?;
        let ttl_ms = payload.exp.saturating_sub(payload.ts);
        if ttl_ms > rules.max_ttl_ms {
            return Err(VerifyError::TtlTooLong { ttl_ms, max_ms: rules.max_ttl_ms });
        }
        let kind = payload.kind();
        if !schema::is_known(kind, &payload.schema) {
            return Err(VerifyError::UnknownSchema { kind, schema: payload.schema });
        }
        Ok(Opened { id: self.id(), payload })
    }
}

/// Builds and signs an envelope. Defaults: no recipient, no `re`, random trace and nonce,
/// valid for 60 s, schema id of the body's kind.
#[derive(Debug, Clone)]
pub struct EnvelopeBuilder {
    body: Body,
    to: Option<PeerId>,
    re: Option<Cid>,
    trace: Option<TraceId>,
    nonce: Option<Nonce>,
    ttl_ms: u64,
}

impl EnvelopeBuilder {
    pub fn to(mut self, to: PeerId) -> Self {
        self.to = Some(to);
        self
    }

    pub fn re(mut self, re: Cid) -> Self {
        self.re = Some(re);
        self
    }

    pub fn trace(mut self, trace: TraceId) -> Self {
        self.trace = Some(trace);
        self
    }

    /// A fixed nonce (test vectors); by default it is random.
    pub fn nonce(mut self, nonce: Nonce) -> Self {
        self.nonce = Some(nonce);
        self
    }

    pub fn ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    /// The payload this builder would sign at `now_ms` as `key`.
    pub fn payload(self, key: &NodeKey, now_ms: u64) -> Result<EnvelopePayload, SignError> {
        // One call to the OS for both (24 bytes), used only where no value was fixed.
        let mut random = [0u8; 24];
        if self.nonce.is_none() || self.trace.is_none() {
            getrandom::fill(&mut random).map_err(|_| SignError::Randomness)?;
        }
        let (nonce, trace) = random.split_at(8);
        let nonce = self.nonce.unwrap_or(FixedBytes(nonce.try_into().expect("8 bytes")));
        let trace = self.trace.unwrap_or(FixedBytes(trace.try_into().expect("16 bytes")));
        Ok(EnvelopePayload {
            v: VERSION,
            from: key.public(),
            to: self.to,
            ts: now_ms,
            exp: now_ms.saturating_add(self.ttl_ms),
            nonce,
            trace,
            re: self.re,
            schema: schema::id(self.body.kind()),
            body: self.body,
        })
    }

    /// Encodes canonically and signs with `key`, timestamped `now_ms`.
    pub fn sign(self, key: &NodeKey, now_ms: u64) -> Result<Envelope, SignError> {
        seal(key, &self.payload(key, now_ms)?)
    }
}

/// Signs an already built payload; `key` must be its `from`.
pub fn seal(key: &NodeKey, payload: &EnvelopePayload) -> Result<Envelope, SignError> {
    if payload.from != key.public() {
        return Err(SignError::WrongSigner { named: payload.sender(), key: key.peer_id() });
    }
    let bytes = cbor::to_vec(payload)?;
    let sig = key.sign(domain::ENVELOPE.as_bytes(), &bytes);
    Ok(Envelope::from_parts(bytes, sig))
}

/// A node's receiving side: [`Envelope::open`] plus recipient and replay checks.
#[derive(Debug)]
pub struct Receiver {
    me: PeerId,
    rules: Rules,
    replay: ReplayCache,
}

impl Receiver {
    /// Default replay cache capacity (envelope ids held until they expire).
    pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

    pub fn new(me: PeerId) -> Self {
        Self::with_rules(me, Rules::default(), Self::DEFAULT_REPLAY_CAPACITY)
    }

    pub fn with_rules(me: PeerId, rules: Rules, replay_capacity: usize) -> Self {
        Self { me, rules, replay: ReplayCache::new(replay_capacity) }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Parses, verifies and checks received envelope bytes at `now_ms`. The envelope id is
    /// remembered only when every other check passed, so refused input cannot fill the cache.
    pub fn accept(&mut self, bytes: &[u8], now_ms: u64) -> Result<Opened, VerifyError> {
        let opened = self.check(bytes, now_ms)?;
        self.remember(&opened, now_ms)?;
        Ok(opened)
    }

    /// Every check of [`Receiver::accept`] that needs no write: parse, replay lookup, signature,
    /// time, recipient. Lets callers verify outside a lock and then [`Receiver::remember`]
    /// under it (the replay insert is what makes the check final).
    pub fn check(&self, bytes: &[u8], now_ms: u64) -> Result<Opened, VerifyError> {
        let envelope = Envelope::from_bytes(bytes, self.rules.limits)?;
        // A replay costs one hash, not a decode and a signature check.
        let id = envelope.id();
        if self.replay.ids.contains(&id) {
            return Err(VerifyError::Replay(id));
        }
        let opened = envelope.open(now_ms, &self.rules)?;
        let p = &opened.payload;
        let addressed = match (p.to, p.kind().carrier()) {
            (Some(to), _) => to == self.me,
            (None, Carrier::Gossip) => true,
            (None, Carrier::Rpc) => false,
        };
        if !addressed {
            return Err(VerifyError::Misaddressed { to: p.to, me: self.me });
        }
        Ok(opened)
    }

    /// Records a checked envelope's id; `Replay` if it was recorded since the check.
    pub fn remember(&mut self, opened: &Opened, now_ms: u64) -> Result<(), VerifyError> {
        // Held until `exp + skew`: a clock that is behind by up to the skew still refuses it.
        let until = opened.payload.exp.saturating_add(self.rules.skew_ms);
        self.replay.insert(opened.id, until, now_ms)
    }
}

/// Envelope ids seen and not yet expired, bounded. When full of unexpired ids it refuses new
/// envelopes (retryable) rather than forget one, which would let a replay through.
#[derive(Debug)]
struct ReplayCache {
    capacity: usize,
    ids: HashSet<Cid>,
    by_expiry: BTreeSet<(u64, Cid)>,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        Self { capacity, ids: HashSet::new(), by_expiry: BTreeSet::new() }
    }

    fn insert(&mut self, id: Cid, until: u64, now: u64) -> Result<(), VerifyError> {
        if self.ids.contains(&id) {
            return Err(VerifyError::Replay(id));
        }
        while let Some(&(expiry, old)) = self.by_expiry.first() {
            if expiry >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.ids.remove(&old);
        }
        if self.ids.len() >= self.capacity {
            return Err(VerifyError::ReplayCacheFull);
        }
        self.ids.insert(id);
        self.by_expiry.insert((until, id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TaskCancel, kinds::ErrorBody};

    const NOW: u64 = 1_760_000_000_000;

    fn cancel() -> Body {
        TaskCancel { call: FixedBytes([7; 16]), reason: None }.into()
    }

    #[test]
    fn round_trip_and_checks() {
        let alice = NodeKey::from_seed([1; 32]);
        let bob = NodeKey::from_seed([2; 32]);
        let env = Envelope::builder(cancel()).to(bob.peer_id()).sign(&alice, NOW).unwrap();
        let bytes = env.to_bytes();
        let mut rx = Receiver::new(bob.peer_id());
        let opened = rx.accept(&bytes, NOW + 10).unwrap();
        assert_eq!(opened.id, env.id());
        assert_eq!(opened.payload.sender(), alice.peer_id());
        assert_eq!(opened.payload.body, cancel());
        assert_eq!(rx.accept(&bytes, NOW + 20).unwrap_err().code(), "Replay");

        let mut carol = Receiver::new(NodeKey::from_seed([3; 32]).peer_id());
        assert_eq!(carol.accept(&bytes, NOW).unwrap_err().code(), "Misaddressed");
        let mut fresh = Receiver::new(bob.peer_id());
        assert_eq!(fresh.accept(&bytes, NOW + 61_000).unwrap_err().code(), "Expired");
        assert_eq!(fresh.accept(&bytes, NOW - 31_000).unwrap_err().code(), "FutureDated");
        // Refused envelopes are not remembered: the same bytes are accepted in their window.
        fresh.accept(&bytes, NOW).unwrap();

        // An rpc kind without a recipient is misaddressed everywhere.
        let open = Envelope::builder(cancel()).sign(&alice, NOW).unwrap();
        assert_eq!(rx.accept(&open.to_bytes(), NOW).unwrap_err().code(), "Misaddressed");
    }

    #[test]
    fn replay_cache_is_bounded_and_never_forgets_unexpired_ids() {
        let alice = NodeKey::from_seed([1; 32]);
        let bob = NodeKey::from_seed([2; 32]);
        let mut rx = Receiver::with_rules(bob.peer_id(), Rules::default(), 2);
        let mk = |n: u8, ttl| {
            Envelope::builder(ErrorBody {
                code: "Busy".into(),
                message: String::new(),
                retryable: true,
                retry_after_ms: Some(u64::from(n)),
            })
            .to(bob.peer_id())
            .ttl_ms(ttl)
            .sign(&alice, NOW)
            .unwrap()
            .to_bytes()
        };
        rx.accept(&mk(1, 1_000), NOW).unwrap();
        let second = mk(2, 60_000);
        rx.accept(&second, NOW).unwrap();
        assert_eq!(rx.accept(&mk(3, 60_000), NOW).unwrap_err().code(), "ReplayCacheFull");
        // Once the first expired (plus skew), there is room again.
        rx.accept(&mk(3, 60_000), NOW + 1_000 + DEFAULT_SKEW_MS + 1).unwrap();
        assert_eq!(rx.accept(&second, NOW + 2_000).unwrap_err().code(), "Replay");
    }

    #[test]
    fn ttl_and_wrong_signer() {
        let alice = NodeKey::from_seed([1; 32]);
        let env = Envelope::builder(cancel()).ttl_ms(3_600_000).sign(&alice, NOW).unwrap();
        assert_eq!(env.open(NOW, &Rules::default()).unwrap_err().code(), "TtlTooLong");
        let payload = Envelope::builder(cancel()).payload(&alice, NOW).unwrap();
        let err = seal(&NodeKey::from_seed([9; 32]), &payload).unwrap_err();
        assert!(matches!(err, SignError::WrongSigner { .. }));
    }
}
