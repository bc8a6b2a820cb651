//! Signed records: `{payload, sig}` with a domain tag per type (DESIGN §2).

use std::{fmt, marker::PhantomData};

use capmesh_types::{Cid, Codec, NodeKey, PeerId, SIGNATURE_LEN, SignatureError};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned, ser};

use crate::{
    Advert, Attestation, Countersignature, LedgerHead, Receipt, Retirement, Rules,
    cbor::{self, DecodeError, Limits},
    error::{SignError, VerifyError},
    repr::{Bytes, FixedBytes},
};

/// Domain tags: what a signature is for, so it can never be replayed as another type.
pub mod domain {
    pub const ENVELOPE: &str = "pervasive.link/v1/envelope";
    pub const ADVERT: &str = "pervasive.link/v1/advert";
    pub const RETIREMENT: &str = "pervasive.link/v1/retirement";
    pub const ATTESTATION: &str = "pervasive.link/v1/attestation";
    pub const RECEIPT: &str = "pervasive.link/v1/receipt";
    pub const COUNTERSIGN: &str = "pervasive.link/v1/countersign";
    pub const LEDGER_HEAD: &str = "pervasive.link/v1/ledger-head";
}

/// How far in the future a timestamp may lie (clock skew between honest nodes).
pub const DEFAULT_SKEW_MS: u64 = 30_000;

/// What a [`Signed`] object can carry: a type with a canonical CBOR form.
pub trait Payload: Serialize + DeserializeOwned + fmt::Debug {
    /// Type name, as in specs/ (`Advert`, …).
    const NAME: &'static str;

    /// Strict decode of payload bytes: canonical form, shape, and any rule across fields that
    /// the shape does not express (an envelope's body rules, protocol.md §8.8).
    fn decode_payload(bytes: &[u8], limits: Limits) -> Result<Self, VerifyError> {
        Ok(cbor::from_slice(bytes, limits, Self::NAME)?)
    }
}

/// A standalone signed object: its domain tag, and who signs it.
pub trait Record: Payload {
    const DOMAIN: &'static str;
    /// The PeerId whose key must have signed the payload.
    fn signer(&self) -> &PeerId;
    /// Creation time (unix ms), checked against clock skew.
    fn issued(&self) -> u64;
    /// Expiry (unix ms), for records that expire.
    fn expires(&self) -> Option<u64> {
        None
    }

    /// The time checks of [`Signed::verify`]: not dated beyond `now + skew`, not expired.
    fn check_time(&self, now_ms: u64, skew_ms: u64) -> Result<(), VerifyError> {
        check_window(self.issued(), self.expires(), now_ms, skew_ms)
    }
}

macro_rules! record {
    ($t:ty, $domain:expr, $signer:ident, $issued:ident $(, $expires:ident)?) => {
        impl Payload for $t {
            const NAME: &'static str = stringify!($t);
        }

        impl Record for $t {
            const DOMAIN: &'static str = $domain;
            fn signer(&self) -> &PeerId {
                &self.$signer
            }
            fn issued(&self) -> u64 {
                self.$issued
            }
            $(fn expires(&self) -> Option<u64> {
                Some(self.$expires)
            })?
        }
    };
}
record!(Advert, domain::ADVERT, provider, issued, expires);
record!(Retirement, domain::RETIREMENT, provider, issued);
record!(Attestation, domain::ATTESTATION, issuer, issued, expires);
record!(Receipt, domain::RECEIPT, provider, started);
record!(Countersignature, domain::COUNTERSIGN, caller, signed);
record!(LedgerHead, domain::LEDGER_HEAD, node, issued);

/// The wire form of every signed thing: canonical payload bytes and an ed25519 signature over
/// `domain || payload`. Holds the bytes as received, so verification and the id never depend on
/// re-encoding.
pub struct Signed<T> {
    payload: Vec<u8>,
    sig: [u8; SIGNATURE_LEN],
    _type: PhantomData<fn() -> T>,
}

/// A record that passed [`Signed::verify`]: its id and decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified<T> {
    pub id: Cid,
    pub record: T,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigned {
    payload: Bytes,
    sig: FixedBytes<SIGNATURE_LEN>,
}

impl<T> Signed<T> {
    /// Wraps received parts; nothing is checked until [`Signed::verify`].
    pub fn from_parts(payload: Vec<u8>, sig: [u8; SIGNATURE_LEN]) -> Self {
        Self { payload, sig, _type: PhantomData }
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn sig(&self) -> &[u8; SIGNATURE_LEN] {
        &self.sig
    }

    /// Id of the record: CID (dag-cbor, BLAKE3) of the payload bytes.
    pub fn id(&self) -> Cid {
        Cid::of(Codec::DagCbor, &self.payload)
    }

    /// Canonical CBOR of `{payload, sig}`.
    pub fn to_bytes(&self) -> Vec<u8> {
        // The layout is fixed (two byte strings under sorted keys), so it is written directly.
        let mut out = Vec::with_capacity(self.payload.len() + 90);
        out.extend_from_slice(SIG_PREFIX);
        out.extend_from_slice(&self.sig);
        out.extend_from_slice(b"\x67payload");
        cbor::head(&mut out, 2, self.payload.len() as u64);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses `{payload, sig}` strictly (canonical, within `limits`); does not verify.
    pub fn from_bytes(bytes: &[u8], limits: Limits) -> Result<Self, VerifyError> {
        if bytes.len() > limits.max_size {
            return Err(DecodeError::TooLarge { size: bytes.len(), max: limits.max_size }.into());
        }
        // Canonical form is unique, so a canonical `{payload, sig}` has exactly the layout
        // `to_bytes` writes: match it directly, and leave every other input to the general
        // strict decoder, which names what is wrong with it.
        if let Some(parsed) = Self::from_canonical_layout(bytes) {
            return Ok(parsed);
        }
        let raw: RawSigned = cbor::from_slice(bytes, limits, "signed object")?;
        Ok(Self::from_parts(raw.payload.0, raw.sig.0))
    }

    fn from_canonical_layout(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(SIG_PREFIX)?;
        let (sig, rest) = rest.split_first_chunk::<SIGNATURE_LEN>()?;
        let rest = rest.strip_prefix(b"\x67payload")?;
        let (&head, rest) = rest.split_first()?;
        let (len, rest) = match head {
            0x40..=0x57 => (usize::from(head - 0x40), rest),
            0x58 => (usize::from(*rest.first()?), &rest[1..]),
            0x59 => (usize::from(u16::from_be_bytes(*rest.first_chunk()?)), &rest[2..]),
            0x5a => (u32::from_be_bytes(*rest.first_chunk()?) as usize, &rest[4..]),
            _ => return None,
        };
        // Shortest form of the length, and nothing after the payload.
        let shortest = match head {
            0x58 => len >= 24,
            0x59 => len > 0xff,
            0x5a => len > 0xffff,
            _ => true,
        };
        (shortest && rest.len() == len).then(|| Self::from_parts(rest.to_vec(), *sig))
    }
}

/// `{` (map of 2), `"sig"`, byte string of 64: how every canonical signed object starts.
const SIG_PREFIX: &[u8] = &[0xa2, 0x63, b's', b'i', b'g', 0x58, 0x40];

impl<T: Record> Signed<T> {
    /// Encodes `record` canonically and signs it with `key`, which must be the record's signer.
    pub fn sign(key: &NodeKey, record: &T) -> Result<Self, SignError> {
        let named = *record.signer();
        if named != key.peer_id() {
            return Err(SignError::WrongSigner { named, key: key.peer_id() });
        }
        let payload = cbor::to_vec(record)?;
        let sig = key.sign(T::DOMAIN.as_bytes(), &payload);
        Ok(Self::from_parts(payload, sig))
    }

    /// Decodes the payload strictly (within `rules.limits`), checks the signature over the
    /// received bytes with the signer's key, and the record's time window at `now_ms` (unix ms)
    /// with `rules.skew_ms`.
    pub fn verify(&self, now_ms: u64, rules: &Rules) -> Result<Verified<T>, VerifyError> {
        let record = self.decode(rules.limits)?;
        self.check_signature(&record)?;
        record.check_time(now_ms, rules.skew_ms)?;
        Ok(Verified { id: self.id(), record })
    }

    /// The signature check of [`Signed::verify`] alone, for a payload already decoded (e.g. by a
    /// caller that verifies many signatures as one batch and falls back to this).
    pub fn check_signature(&self, record: &T) -> Result<(), VerifyError> {
        verify_sig(record.signer(), T::DOMAIN, &self.payload, &self.sig)
    }

    /// [`Signed::verify`], and the id must be `expected` (a record fetched by id).
    pub fn verify_as(
        &self,
        expected: &Cid,
        now_ms: u64,
        rules: &Rules,
    ) -> Result<Verified<T>, VerifyError> {
        let actual = self.id();
        if actual != *expected {
            return Err(VerifyError::CidMismatch { expected: *expected, actual });
        }
        self.verify(now_ms, rules)
    }
}

impl<T: Payload> Signed<T> {
    /// Decodes the payload strictly without checking the signature (inspection only).
    pub fn decode(&self, limits: Limits) -> Result<T, VerifyError> {
        T::decode_payload(&self.payload, limits)
    }
}

pub(crate) fn verify_sig(
    signer: &PeerId,
    domain: &'static str,
    payload: &[u8],
    sig: &[u8; SIGNATURE_LEN],
) -> Result<(), VerifyError> {
    signer.public_key().verify(domain.as_bytes(), payload, sig).map_err(|e| match e {
        SignatureError::BadKey => VerifyError::BadKey,
        _ => VerifyError::BadSignature { domain },
    })
}

pub(crate) fn check_window(
    issued: u64,
    expires: Option<u64>,
    now: u64,
    skew: u64,
) -> Result<(), VerifyError> {
    if issued > now.saturating_add(skew) {
        return Err(VerifyError::FutureDated { at: issued, now });
    }
    if let Some(expires) = expires
        && expires < now
    {
        return Err(VerifyError::Expired { expires, now });
    }
    Ok(())
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self::from_parts(self.payload.clone(), self.sig)
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload && self.sig == other.sig
    }
}
impl<T> Eq for Signed<T> {}

impl<T: Payload> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed").field("type", &T::NAME).field("id", &self.id()).finish()
    }
}

/// CBOR: `{payload: bytes, sig: bytes}`. JSON: `{payload: <the record's JSON>, sig: base64url}`;
/// the payload's canonical CBOR is rebuilt from the JSON, which is lossless because encoding is
/// deterministic.
impl<T: Payload> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeStruct;
        let sig = FixedBytes(self.sig);
        if s.is_human_readable() {
            let record = self.decode(Limits::default()).map_err(ser::Error::custom)?;
            let mut st = s.serialize_struct("Signed", 2)?;
            st.serialize_field("payload", &record)?;
            st.serialize_field("sig", &sig)?;
            st.end()
        } else {
            let mut st = s.serialize_struct("Signed", 2)?;
            st.serialize_field("payload", &BytesRef(&self.payload))?;
            st.serialize_field("sig", &sig)?;
            st.end()
        }
    }
}

struct BytesRef<'a>(&'a [u8]);
impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedJson<T> {
    payload: T,
    sig: FixedBytes<SIGNATURE_LEN>,
}

impl<'de, T: Payload> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let json = SignedJson::<T>::deserialize(d)?;
            let payload = cbor::to_vec(&json.payload).map_err(D::Error::custom)?;
            Ok(Self::from_parts(payload, json.sig.0))
        } else {
            let raw = RawSigned::deserialize(d)?;
            Ok(Self::from_parts(raw.payload.0, raw.sig.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Any = Signed<crate::Retirement>;

    #[test]
    fn layout_fast_path_agrees_with_the_strict_decoder() {
        for len in [0usize, 23, 24, 255, 256, 65_535, 65_536] {
            let signed = Any::from_parts(vec![7; len], [9; SIGNATURE_LEN]);
            let bytes = signed.to_bytes();
            let general: RawSigned = cbor::from_slice(&bytes, Limits::default(), "x").unwrap();
            assert_eq!(general.payload.0, signed.payload, "len {len}");
            assert_eq!(Any::from_bytes(&bytes, Limits::default()).unwrap(), signed);
        }
        // A non-shortest payload length is refused by name, not accepted by the fast path.
        let mut long = SIG_PREFIX.to_vec();
        long.extend_from_slice(&[0; 64]);
        long.extend_from_slice(b"\x67payload\x58\x01\x00");
        let err = Any::from_bytes(&long, Limits::default()).unwrap_err();
        assert_eq!(err.code(), "NonCanonical");
        // Trailing bytes are refused too.
        let mut trailing = Any::from_parts(vec![1], [0; 64]).to_bytes();
        trailing.push(0);
        assert_eq!(Any::from_bytes(&trailing, Limits::default()).unwrap_err().code(), "Malformed");
        // And the size limit holds before any parsing.
        let big = Any::from_parts(vec![0; 100], [0; 64]).to_bytes();
        let limits = Limits::default().with_max_size(50);
        assert_eq!(Any::from_bytes(&big, limits).unwrap_err().code(), "TooLarge");
    }
}
