//! Signed records: `{payload, sig}` with a domain tag per type (DESIGN §2).

use std::{fmt, marker::PhantomData};

use capmesh_types::{Cid, Codec, NodeKey, PeerId, SIGNATURE_LEN, SignatureError};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned, ser};

use crate::{
    Advert, Attestation, Countersignature, Receipt, Retirement,
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
}

/// How far in the future a timestamp may lie (clock skew between honest nodes).
pub const DEFAULT_SKEW_MS: u64 = 30_000;

/// What a [`Signed`] object can carry: a type with a canonical CBOR form.
pub trait Payload: Serialize + DeserializeOwned + fmt::Debug {
    /// Type name, as in specs/ (`Advert`, …).
    const NAME: &'static str;

    /// Strict decode of payload bytes.
    fn decode_payload(bytes: &[u8], limits: Limits) -> Result<Self, DecodeError> {
        cbor::from_slice(bytes, limits, Self::NAME)
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
        out.push(0xa2);
        out.extend_from_slice(&[0x63, b's', b'i', b'g', 0x58, 0x40]);
        out.extend_from_slice(&self.sig);
        out.extend_from_slice(b"\x67payload");
        cbor_bytes_head(&mut out, self.payload.len());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses `{payload, sig}` strictly (canonical, within `limits`); does not verify.
    pub fn from_bytes(bytes: &[u8], limits: Limits) -> Result<Self, VerifyError> {
        let raw: RawSigned = cbor::from_slice(bytes, limits, "signed object")?;
        Ok(Self::from_parts(raw.payload.0, raw.sig.0))
    }
}

fn cbor_bytes_head(out: &mut Vec<u8>, len: usize) {
    let len = len as u64;
    if len < 24 {
        out.push(0x40 | len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x58, len as u8]);
    } else if len <= 0xffff {
        out.push(0x59);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else if len <= 0xffff_ffff {
        out.push(0x5a);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x5b);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

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

    /// Decodes the payload strictly, checks the signature over the received bytes with the
    /// signer's key, and the record's time window at `now_ms` (unix ms).
    pub fn verify(&self, now_ms: u64, limits: Limits) -> Result<Verified<T>, VerifyError> {
        self.verify_with_skew(now_ms, limits, DEFAULT_SKEW_MS)
    }

    /// [`Signed::verify`] with a configured clock skew (a node's `Rules::skew_ms`).
    pub fn verify_with_skew(
        &self,
        now_ms: u64,
        limits: Limits,
        skew_ms: u64,
    ) -> Result<Verified<T>, VerifyError> {
        let record = self.decode(limits)?;
        verify_sig(record.signer(), T::DOMAIN, &self.payload, &self.sig)?;
        check_window(record.issued(), record.expires(), now_ms, skew_ms)?;
        Ok(Verified { id: self.id(), record })
    }

    /// [`Signed::verify`], and the id must be `expected` (a record fetched by id).
    pub fn verify_as(
        &self,
        expected: &Cid,
        now_ms: u64,
        limits: Limits,
    ) -> Result<Verified<T>, VerifyError> {
        let actual = self.id();
        if actual != *expected {
            return Err(VerifyError::CidMismatch { expected: *expected, actual });
        }
        self.verify(now_ms, limits)
    }
}

impl<T: Payload> Signed<T> {
    /// Decodes the payload strictly without checking the signature (inspection only).
    pub fn decode(&self, limits: Limits) -> Result<T, VerifyError> {
        Ok(T::decode_payload(&self.payload, limits)?)
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
