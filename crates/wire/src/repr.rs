//! How ids, keys and byte strings look on each side of the serialization boundary.
//!
//! One serde implementation serves both forms: CBOR (`is_human_readable() == false`: byte
//! strings, CIDs as tag-42 links, PeerIds as their binary multihash) and the JSON projection
//! (unpadded base64url, CIDs and PeerIds as their usual text). Types of `capmesh-types` are
//! foreign here, so fields use `#[serde(with = "repr")]`, which also covers `Option` and `Vec`.

use std::fmt;

use capmesh_types::{Cid, Digest, PeerId, PublicKey};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, Visitor},
};

/// The DAG-CBOR tag of a CID link.
pub(crate) const CID_TAG: u64 = 42;

static B64: data_encoding::Encoding = data_encoding::BASE64URL_NOPAD;

fn b64() -> &'static data_encoding::Encoding {
    &B64
}

/// A type with a wire representation in both forms.
pub trait Repr: Sized {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

pub(crate) fn serialize<T: Repr, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    value.ser(s)
}

pub(crate) fn deserialize<'de, T: Repr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    T::de(d)
}

struct Ser<'a, T>(&'a T);
impl<T: Repr> Serialize for Ser<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.ser(s)
    }
}

struct De<T>(T);
impl<'de, T: Repr> Deserialize<'de> for De<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::de(d).map(De)
    }
}

/// `None` is skipped by `skip_serializing_if`; a present field must hold a value, so an explicit
/// null is refused (it would be a second encoding of "absent").
impl<T: Repr> Repr for Option<T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Some(v) => v.ser(s),
            None => s.serialize_none(),
        }
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::de(d).map(Some)
    }
}

impl<T: Repr> Repr for Vec<T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Ser))
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<De<T>>::deserialize(d)?.into_iter().map(|De(v)| v).collect())
    }
}

/// Plain values whose serde form is already right (strings, numbers, structs): lets optional
/// fields of any type refuse an explicit null through the same `with = "repr"`.
macro_rules! plain_repr {
    ($($t:ty),*) => {$(
        impl Repr for $t {
            fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                Serialize::serialize(self, s)
            }
            fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Deserialize::deserialize(d)
            }
        }
    )*};
}
plain_repr!(String, u64, u32, crate::Price, crate::Filter, crate::ErrorBody, serde_json::Value);

/// Reads a byte string: CBOR bytes (and nothing else, not even a tagged byte string) or, in
/// JSON, unpadded base64url text.
fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(v)
        }
    }
    struct T;
    impl Visitor<'_> for T {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("unpadded base64url text")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            b64().decode(v.as_bytes()).map_err(|_| E::custom("invalid unpadded base64url"))
        }
    }
    if d.is_human_readable() {
        d.deserialize_str(T)
    } else {
        // `deserialize_any`, not `deserialize_bytes`: ciborium's typed entry points skip tags.
        d.deserialize_any(V)
    }
}

fn ser_bytes<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&b64().encode(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

/// A variable-length byte string.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", b64().encode(&self.0))
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_bytes(d).map(Bytes)
    }
}
plain_repr!(Bytes);

/// A fixed-length byte string (nonces, trace and call ids, signatures).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> FixedBytes<N> {
    /// Fresh random bytes from the operating system.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut out = [0u8; N];
        getrandom::fill(&mut out)?;
        Ok(Self(out))
    }
}

impl<const N: usize> fmt::Debug for FixedBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&b64().encode(&self.0))
    }
}

impl<const N: usize> Serialize for FixedBytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(&self.0, s)
    }
}

impl<'de, const N: usize> Deserialize<'de> for FixedBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = de_bytes(d)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map(FixedBytes)
            .map_err(|_| de::Error::invalid_length(len, &format!("{N} bytes").as_str()))
    }
}

impl<const N: usize> Repr for FixedBytes<N> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize(s)
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize(d)
    }
}

impl Repr for PublicKey {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(self.as_bytes(), s)
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FixedBytes::<32>::deserialize(d).map(|b| PublicKey::from_bytes(b.0))
    }
}

impl Repr for Digest {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_bytes(self.as_bytes(), s)
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FixedBytes::<32>::deserialize(d).map(|b| Digest::from_bytes(b.0))
    }
}

impl Repr for PeerId {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.to_bytes())
        }
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(de::Error::custom)
        } else {
            PeerId::from_bytes(&de_bytes(d)?).map_err(de::Error::custom)
        }
    }
}

impl Repr for Cid {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            // DAG-CBOR link: tag 42 over the multibase identity prefix 0x00 and the binary CID.
            let mut bytes = [0u8; 1 + Cid::BINARY_LEN];
            bytes[1..].copy_from_slice(&self.to_bytes());
            ciborium::tag::Required::<Bytes, CID_TAG>(Bytes(bytes.to_vec())).serialize(s)
        }
    }
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(de::Error::custom)
        } else {
            struct Link;
            impl Visitor<'_> for Link {
                type Value = Cid;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a CID link (tag 42)")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Cid, E> {
                    cid_from_link(v).map_err(E::custom)
                }
            }
            // Only capmesh's own deserializer (`cbor::from_slice`) knows this marker.
            d.deserialize_newtype_struct(crate::cbor::de::LINK, Link)
        }
    }
}

/// Parses the content of a tag-42 link: `0x00` then a binary CID.
pub(crate) fn cid_from_link(bytes: &[u8]) -> Result<Cid, String> {
    match bytes.split_first() {
        Some((0x00, cid)) => Cid::from_bytes(cid).map_err(|e| e.to_string()),
        _ => Err("a CID link must start with the identity multibase prefix 0x00".into()),
    }
}
