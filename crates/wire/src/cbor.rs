//! Canonical CBOR (DAG-CBOR's deterministic form, DESIGN §1) on top of ciborium.
//!
//! ciborium shortens floats when lossless and its decoder accepts non-shortest integers and
//! unsorted or duplicate keys, so neither direction is left to it alone:
//! - [`to_vec`] serializes through `ciborium::Value` and writes the bytes itself: shortest
//!   integers, definite lengths, text keys sorted length-first then bytewise, tag 42 only (CID
//!   links), integral floats reduced to integers, other floats as 64-bit, NaN and infinities
//!   refused.
//! - [`from_slice`] first walks the bytes once and refuses anything that [`to_vec`] would not
//!   have written ([`check`]), bounded in size and depth, then builds the typed value with a
//!   small zero-copy serde deserializer ([`de`]) that admits exactly one form per value (a unit
//!   enum variant is its name, never a map; nothing may follow the value). So a value that
//!   decodes re-encodes to the very same bytes.

pub(crate) mod de;
mod ser;

use ciborium::Value;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::repr::{CID_TAG, cid_from_link};

/// Bounds on what the decoder accepts, checked before anything is allocated for the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input in bytes. Default 1 MiB.
    pub max_size: usize,
    /// Deepest accepted nesting of arrays, maps and tags. Default 64.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_size: 1024 * 1024, max_depth: 64 }
    }
}

impl Limits {
    pub fn with_max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// Sets the depth limit, at most [`Limits::MAX_DEPTH`] (ciborium's own recursion bound, so
    /// the strict checker, not ciborium, is always the one to refuse deep input as `TooDeep`).
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth.min(Self::MAX_DEPTH);
        self
    }

    /// Largest depth limit that can be configured.
    pub const MAX_DEPTH: usize = 256;
}

/// Which rule of canonical form some bytes break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonCanonical {
    IndefiniteLength,
    NonShortestInteger,
    ShortFloat,
    UnreducedFloat,
    NonFiniteFloat,
    UnsortedKeys,
    DuplicateKey,
    NonTextKey,
    UnsupportedTag(u64),
    UnsupportedSimple(u8),
}

impl std::fmt::Display for NonCanonical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IndefiniteLength => f.write_str("indefinite length"),
            Self::NonShortestInteger => f.write_str("integer or length not in its shortest form"),
            Self::ShortFloat => f.write_str("16- or 32-bit float (only 64-bit floats are used)"),
            Self::UnreducedFloat => f.write_str("integral float (must be written as an integer)"),
            Self::NonFiniteFloat => f.write_str("NaN or infinity"),
            Self::UnsortedKeys => f.write_str("map keys not sorted length-first then bytewise"),
            Self::DuplicateKey => f.write_str("duplicate map key"),
            Self::NonTextKey => f.write_str("map key is not text"),
            Self::UnsupportedTag(t) => write!(f, "tag {t} (only tag 42, CID links, is used)"),
            Self::UnsupportedSimple(s) => write!(f, "simple value {s}"),
        }
    }
}

/// Why bytes are not a canonical encoding of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("{size} bytes exceed the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("nesting deeper than {max}")]
    TooDeep { max: usize },
    #[error("input ends in the middle of a value")]
    Truncated,
    #[error("not well-formed CBOR: {0}")]
    Malformed(&'static str),
    #[error("not canonical CBOR at byte {offset}: {rule}")]
    NonCanonical { offset: usize, rule: NonCanonical },
    #[error("invalid CID link at byte {offset}: {reason}")]
    BadLink { offset: usize, reason: String },
    #[error("well-formed CBOR, but not a valid {expected}: {reason}")]
    Invalid { expected: &'static str, reason: String },
}

/// Why a value has no canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("cannot serialize: {0}")]
    Serialize(String),
    #[error("{0}")]
    NotCanonical(NonCanonical),
    #[error("nesting deeper than {max}")]
    TooDeep { max: usize },
}

/// Canonical bytes of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    ser::write(value, &mut out)?;
    Ok(out)
}

/// Canonical bytes of a CBOR data model value.
pub fn value_to_vec(value: &Value) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    write(value, &mut out, Limits::default().max_depth)?;
    Ok(out)
}

/// Decodes canonical bytes into `T`, refusing anything non-canonical, too large or too deep.
pub fn from_slice<T: DeserializeOwned>(
    bytes: &[u8],
    limits: Limits,
    expected: &'static str,
) -> Result<T, DecodeError> {
    check(bytes, limits)?;
    decode_checked(bytes, expected)
}

/// Typed decode of bytes that already passed [`check`], with the zero-copy deserializer of
/// [`de`]; the whole input must be one value.
pub(crate) fn decode_checked<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    expected: &'static str,
) -> Result<T, DecodeError> {
    let invalid = |e: de::Error| DecodeError::Invalid { expected, reason: e.0 };
    let mut de = de::Deserializer::new(bytes);
    let value = T::deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    Ok(value)
}

/// Checks that `bytes` are exactly one canonical CBOR value within `limits`.
pub fn check(bytes: &[u8], limits: Limits) -> Result<(), DecodeError> {
    if bytes.len() > limits.max_size {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: limits.max_size });
    }
    let mut walker = Walker { bytes, pos: 0, max_depth: limits.max_depth };
    walker.item(0)?;
    if walker.pos != bytes.len() {
        return Err(DecodeError::Malformed("bytes after the end of the value"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writer

pub(crate) fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Writes an integer in -2^64 ..= 2^64-1.
pub(crate) fn int(out: &mut Vec<u8>, n: i128) {
    if n >= 0 {
        head(out, 0, n as u64);
    } else {
        head(out, 1, (-1 - n) as u64);
    }
}

/// `Some(n)` when `f` is integral and fits a 64-bit integer, signed or unsigned: -2^63 ..
/// 2^64 (RFC 8949 §4.2.2 numeric reduction). The range is the JSON data model's, so every
/// reduced number decodes back into JSON; integral floats outside it stay floats.
pub(crate) fn reduce(f: f64) -> Option<i128> {
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-TWO_63..TWO_64).contains(&f)).then_some(f as i128)
}

fn write(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), EncodeError> {
    match value {
        Value::Integer(i) => int(out, i128::from(*i)),
        Value::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Text(s) => {
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Null => out.push(0xf6),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(EncodeError::NotCanonical(NonCanonical::NonFiniteFloat));
            }
            match reduce(*f) {
                Some(n) => int(out, n),
                None => {
                    out.push(0xfb);
                    out.extend_from_slice(&f.to_bits().to_be_bytes());
                }
            }
        }
        Value::Array(items) => {
            let depth = depth.checked_sub(1).ok_or(EncodeError::TooDeep { max: 64 })?;
            head(out, 4, items.len() as u64);
            for item in items {
                write(item, out, depth)?;
            }
        }
        Value::Map(entries) => {
            let depth = depth.checked_sub(1).ok_or(EncodeError::TooDeep { max: 64 })?;
            let mut sorted = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let Value::Text(k) = k else {
                    return Err(EncodeError::NotCanonical(NonCanonical::NonTextKey));
                };
                sorted.push((k.as_bytes(), v));
            }
            sorted.sort_unstable_by(|a, b| key_order(a.0, b.0));
            if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(EncodeError::NotCanonical(NonCanonical::DuplicateKey));
            }
            head(out, 5, sorted.len() as u64);
            for (k, v) in sorted {
                head(out, 3, k.len() as u64);
                out.extend_from_slice(k);
                write(v, out, depth)?;
            }
        }
        Value::Tag(CID_TAG, inner) => match inner.as_ref() {
            // A tag is a nesting level for the decoder, so it is one here too.
            Value::Bytes(b) if cid_from_link(b).is_ok() && depth > 0 => {
                head(out, 6, CID_TAG);
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Bytes(_) if depth == 0 => return Err(EncodeError::TooDeep { max: 64 }),
            _ => return Err(EncodeError::Serialize("tag 42 must hold a CID link".into())),
        },
        Value::Tag(t, _) => {
            return Err(EncodeError::NotCanonical(NonCanonical::UnsupportedTag(*t)));
        }
        _ => return Err(EncodeError::Serialize("unsupported CBOR value".into())),
    }
    Ok(())
}

/// DAG-CBOR key order: shorter keys first, then bytewise.
pub(crate) fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

// ---------------------------------------------------------------------------------------------
// Strict checker

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated)?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn non_canonical(&self, at: usize, rule: NonCanonical) -> DecodeError {
        DecodeError::NonCanonical { offset: at, rule }
    }

    /// Reads a head; returns (major, info, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), DecodeError> {
        let at = self.pos;
        let ib = self.take(1)?[0];
        let (major, info) = (ib >> 5, ib & 0x1f);
        if major == 7 {
            // Simple values and floats carry no length argument to shorten.
            return Ok((major, info, 0));
        }
        let (arg, min) = match info {
            0..=23 => (u64::from(info), 0),
            24 => (u64::from(self.take(1)?[0]), 24),
            25 => (u64::from(u16::from_be_bytes(self.array()?)), 0x100),
            26 => (u64::from(u32::from_be_bytes(self.array()?)), 0x1_0000),
            27 => (u64::from_be_bytes(self.array()?), 0x1_0000_0000),
            31 if (2..=5).contains(&major) => {
                return Err(self.non_canonical(at, NonCanonical::IndefiniteLength));
            }
            _ => return Err(DecodeError::Malformed("reserved additional information")),
        };
        if arg < min {
            return Err(self.non_canonical(at, NonCanonical::NonShortestInteger));
        }
        Ok((major, info, arg))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    /// Length argument as usize, refusing lengths that cannot fit in what is left.
    fn len(&self, arg: u64, min_item: usize) -> Result<usize, DecodeError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if arg.saturating_mul(min_item as u64) > left {
            return Err(DecodeError::Truncated);
        }
        Ok(arg as usize)
    }

    fn item(&mut self, depth: usize) -> Result<(), DecodeError> {
        let at = self.pos;
        let (major, info, arg) = self.head()?;
        match major {
            0 | 1 => {}
            2 => {
                let n = self.len(arg, 1)?;
                self.take(n)?;
            }
            3 => {
                let n = self.len(arg, 1)?;
                let text = self.take(n)?;
                std::str::from_utf8(text).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
            }
            4 => {
                let depth = self.nest(depth)?;
                for _ in 0..self.len(arg, 1)? {
                    self.item(depth)?;
                }
            }
            5 => {
                let depth = self.nest(depth)?;
                let mut prev: Option<&[u8]> = None;
                for _ in 0..self.len(arg, 2)? {
                    let key_at = self.pos;
                    let (kmajor, _, klen) = self.head()?;
                    if kmajor != 3 {
                        return Err(self.non_canonical(key_at, NonCanonical::NonTextKey));
                    }
                    let n = self.len(klen, 1)?;
                    let bytes = self.bytes;
                    let key = &bytes[self.pos..self.pos + n];
                    self.take(n)?;
                    std::str::from_utf8(key)
                        .map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
                    if let Some(prev) = prev {
                        match key_order(prev, key) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => {
                                return Err(self.non_canonical(key_at, NonCanonical::DuplicateKey));
                            }
                            std::cmp::Ordering::Greater => {
                                return Err(self.non_canonical(key_at, NonCanonical::UnsortedKeys));
                            }
                        }
                    }
                    prev = Some(key);
                    self.item(depth)?;
                }
            }
            6 => {
                if arg != CID_TAG {
                    return Err(self.non_canonical(at, NonCanonical::UnsupportedTag(arg)));
                }
                self.nest(depth)?;
                let link_at = self.pos;
                let (lmajor, _, llen) = self.head()?;
                if lmajor != 2 {
                    return Err(DecodeError::BadLink {
                        offset: link_at,
                        reason: "tag 42 must hold a byte string".into(),
                    });
                }
                let n = self.len(llen, 1)?;
                let link = self.take(n)?;
                cid_from_link(link)
                    .map_err(|reason| DecodeError::BadLink { offset: link_at, reason })?;
            }
            _ => match info {
                20..=22 => {}
                25 | 26 => {
                    self.take(if info == 25 { 2 } else { 4 })?;
                    return Err(self.non_canonical(at, NonCanonical::ShortFloat));
                }
                27 => {
                    let f = f64::from_bits(u64::from_be_bytes(self.array()?));
                    if !f.is_finite() {
                        return Err(self.non_canonical(at, NonCanonical::NonFiniteFloat));
                    }
                    if reduce(f).is_some() {
                        return Err(self.non_canonical(at, NonCanonical::UnreducedFloat));
                    }
                }
                24 => {
                    let simple = self.take(1)?[0];
                    return Err(self.non_canonical(at, NonCanonical::UnsupportedSimple(simple)));
                }
                31 => return Err(DecodeError::Malformed("unexpected break")),
                28..=30 => return Err(DecodeError::Malformed("reserved additional information")),
                simple => {
                    return Err(self.non_canonical(at, NonCanonical::UnsupportedSimple(simple)));
                }
            },
        }
        Ok(())
    }

    fn nest(&self, depth: usize) -> Result<usize, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TooDeep { max: self.max_depth });
        }
        Ok(depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    fn rule(bytes: &[u8]) -> NonCanonical {
        match check(bytes, Limits::default()) {
            Err(DecodeError::NonCanonical { rule, .. }) => rule,
            other => panic!("expected NonCanonical, got {other:?}"),
        }
    }

    #[test]
    fn numbers_follow_numeric_reduction() {
        let json: serde_json::Value = serde_json::from_str("[1.0, 1, -1.0, 0.5, 1e300]").unwrap();
        let bytes = to_vec(&json).unwrap();
        let mut expected = hex("850101202020");
        expected.truncate(4);
        expected.push(0xfb);
        expected.extend_from_slice(&0.5f64.to_bits().to_be_bytes());
        // 1e300 is integral but does not fit 64 bits: it stays a float.
        expected.push(0xfb);
        expected.extend_from_slice(&1e300f64.to_bits().to_be_bytes());
        assert_eq!(bytes, expected);
        check(&bytes, Limits::default()).unwrap();
        assert!(to_vec(&f64::NAN).is_err());
        assert!(to_vec(&f64::INFINITY).is_err());
        // 2^64 and -2^63-2048 do not fit 64-bit integers: they stay floats. -2^63 fits.
        assert_eq!(to_vec(&18_446_744_073_709_551_616.0f64).unwrap()[0], 0xfb);
        assert_eq!(to_vec(&-9_223_372_036_854_777_856.0f64).unwrap()[0], 0xfb);
        assert_eq!(to_vec(&-9_223_372_036_854_775_808.0f64).unwrap(), hex("3b7fffffffffffffff"));
    }

    #[test]
    fn map_keys_are_sorted_length_first() {
        let json: serde_json::Value = serde_json::from_str(r#"{"bb":1,"a":2,"c":3}"#).unwrap();
        assert_eq!(to_vec(&json).unwrap(), hex("a361610261630362626201"));
    }

    #[test]
    fn a_byte_string_is_never_text() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            a: String,
        }
        let limits = Limits::default();
        assert_eq!(from_slice::<String>(&hex("6161"), limits, "text").unwrap(), "a");
        // "a" as a byte string, as a value and as a field name.
        assert!(from_slice::<String>(&hex("4161"), limits, "text").is_err());
        assert!(from_slice::<S>(&hex("a161614162"), limits, "S").is_err());
        assert!(from_slice::<S>(&hex("a141616161"), limits, "S").is_err());
        assert!(from_slice::<S>(&hex("a161616161"), limits, "S").is_ok());
    }

    #[test]
    fn every_non_canonical_form_is_refused_by_name() {
        assert_eq!(rule(&hex("1817")), NonCanonical::NonShortestInteger);
        assert_eq!(rule(&hex("190017")), NonCanonical::NonShortestInteger);
        assert_eq!(rule(&hex("5f40ff")), NonCanonical::IndefiniteLength);
        assert_eq!(rule(&hex("9f01ff")), NonCanonical::IndefiniteLength);
        assert_eq!(rule(&hex("f93c00")), NonCanonical::ShortFloat);
        assert_eq!(rule(&hex("fa3f800000")), NonCanonical::ShortFloat);
        assert_eq!(rule(&hex("fb3ff0000000000000")), NonCanonical::UnreducedFloat);
        assert_eq!(rule(&hex("fb7ff8000000000000")), NonCanonical::NonFiniteFloat);
        assert_eq!(rule(&hex("a2616201616102")), NonCanonical::UnsortedKeys);
        assert_eq!(rule(&hex("a262616101616202")), NonCanonical::UnsortedKeys);
        assert_eq!(rule(&hex("a2616101616102")), NonCanonical::DuplicateKey);
        assert_eq!(rule(&hex("a10101")), NonCanonical::NonTextKey);
        assert_eq!(rule(&hex("c074")), NonCanonical::UnsupportedTag(0));
        assert_eq!(rule(&hex("f7")), NonCanonical::UnsupportedSimple(23));
    }

    #[test]
    fn limits_and_malformations() {
        // Encoder and decoder agree on depth: 63 arrays around a link is 64 levels, 64 is too deep.
        let link = Value::Tag(
            42,
            Box::new(Value::Bytes(
                [&[0u8][..], &capmesh_types::Cid::of(capmesh_types::Codec::Raw, b"").to_bytes()]
                    .concat(),
            )),
        );
        let nest = |n| (0..n).fold(link.clone(), |v, _| Value::Array(vec![v]));
        check(&value_to_vec(&nest(63)).unwrap(), Limits::default()).unwrap();
        assert!(matches!(value_to_vec(&nest(64)), Err(EncodeError::TooDeep { .. })));
        assert_eq!(Limits::default().with_max_depth(10_000).max_depth, Limits::MAX_DEPTH);
        let deep = [vec![0x81; 65], vec![0x00]].concat();
        assert_eq!(check(&deep, Limits::default()), Err(DecodeError::TooDeep { max: 64 }));
        let ok = [vec![0x81; 64], vec![0x00]].concat();
        check(&ok, Limits::default()).unwrap();
        assert_eq!(
            check(&[0; 10], Limits::default().with_max_size(4)),
            Err(DecodeError::TooLarge { size: 10, max: 4 })
        );
        assert_eq!(
            check(&hex("0000"), Limits::default()),
            Err(DecodeError::Malformed("bytes after the end of the value"))
        );
        assert_eq!(check(&hex("43aa"), Limits::default()), Err(DecodeError::Truncated));
        // An array claiming 2^32 items in 5 bytes is refused before any work.
        assert_eq!(
            check(&hex("9b0000000100000000"), Limits::default()),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            check(&hex("62ff00"), Limits::default()),
            Err(DecodeError::Malformed("invalid UTF-8"))
        );
        assert!(matches!(
            check(&hex("d82a4101"), Limits::default()),
            Err(DecodeError::BadLink { .. })
        ));
    }
}
