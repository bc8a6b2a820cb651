//! A serde serializer writing canonical CBOR directly (no intermediate value tree).
//!
//! Maps and structs are written to a scratch buffer entry by entry, then sorted by key
//! (length-first, then bytewise) and copied out, so field declaration order never matters.
//! ciborium's tag protocol (`tag::Required`, a tuple variant named `@@TAG@@`) is understood, so
//! CID links written through it come out as tag 42 — and only tag 42 over a valid link.

use serde::ser::{self, Serialize};

use super::{EncodeError, Limits, NonCanonical, head, int, key_order, reduce};
use crate::repr::{CID_TAG, cid_from_link};

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError::Serialize(msg.to_string())
    }
}

/// Writes `value`'s canonical encoding to `out`.
pub(crate) fn write<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    value.serialize(Ser { out, depth: Limits::default().max_depth })
}

pub(crate) struct Ser<'a> {
    out: &'a mut Vec<u8>,
    /// Nesting levels still allowed (arrays, maps and tags each take one).
    depth: usize,
}

impl<'a> Ser<'a> {
    fn nest(&self) -> Result<usize, EncodeError> {
        self.depth.checked_sub(1).ok_or(EncodeError::TooDeep { max: Limits::default().max_depth })
    }

    fn text(self, s: &str) {
        head(self.out, 3, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = TupleVariant<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = Map<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        int(self.out, i128::from(v));
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        if !(-(1i128 << 64)..(1i128 << 64)).contains(&v) {
            return Err(EncodeError::Serialize("integer out of CBOR's range".into()));
        }
        int(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        head(self.out, 0, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        let v =
            i128::try_from(v).map_err(|_| EncodeError::Serialize("integer too large".into()))?;
        self.serialize_i128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        if !v.is_finite() {
            return Err(EncodeError::NotCanonical(NonCanonical::NonFiniteFloat));
        }
        match reduce(v) {
            Some(n) => int(self.out, n),
            None => {
                self.out.push(0xfb);
                self.out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.text(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.text(v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        head(self.out, 2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.text(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    /// `{variant: value}`, a map of one entry.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        let depth = self.nest()?;
        self.out.push(0xa1);
        Ser { out: self.out, depth }.text(variant);
        value.serialize(Ser { out: self.out, depth })
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a>, EncodeError> {
        let depth = self.nest()?;
        Ok(Seq::new(self.out, depth, len))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, EncodeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<TupleVariant<'a>, EncodeError> {
        let depth = self.nest()?;
        if (name, variant, len) == ("@@TAG@@", "@@TAGGED@@", 2) {
            return Ok(TupleVariant::Tag { out: self.out, depth, tag: None, at: 0 });
        }
        self.out.push(0xa1);
        Ser { out: self.out, depth }.text(variant);
        let depth = depth.checked_sub(1).ok_or(EncodeError::TooDeep { max: 64 })?;
        Ok(TupleVariant::Seq(Seq::new(self.out, depth, Some(len))))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Map<'a>, EncodeError> {
        let depth = self.nest()?;
        Ok(Map::new(self.out, depth))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Map<'a>, EncodeError> {
        self.serialize_map(None)
    }
    /// `{variant: {fields…}}`.
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Map<'a>, EncodeError> {
        let depth = self.nest()?;
        self.out.push(0xa1);
        Ser { out: self.out, depth }.text(variant);
        let depth = depth.checked_sub(1).ok_or(EncodeError::TooDeep { max: 64 })?;
        Ok(Map::new(self.out, depth))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// An array: written in place when its length is known, else buffered and counted.
pub(crate) struct Seq<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
    expected: Option<usize>,
    count: usize,
    buf: Vec<u8>,
}

impl<'a> Seq<'a> {
    fn new(out: &'a mut Vec<u8>, depth: usize, len: Option<usize>) -> Self {
        if let Some(len) = len {
            head(out, 4, len as u64);
        }
        Self { out, depth, expected: len, count: 0, buf: Vec::new() }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.count += 1;
        let out = if self.expected.is_some() { &mut *self.out } else { &mut self.buf };
        value.serialize(Ser { out, depth: self.depth })
    }

    fn finish(self) -> Result<(), EncodeError> {
        match self.expected {
            Some(n) if n != self.count => {
                Err(EncodeError::Serialize(format!("{n} elements announced, {} given", self.count)))
            }
            Some(_) => Ok(()),
            None => {
                head(self.out, 4, self.count as u64);
                self.out.extend_from_slice(&self.buf);
                Ok(())
            }
        }
    }
}

/// The three sequence traits share one body.
macro_rules! seq_impl {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
                self.element(value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.finish()
            }
        }
    )*};
}
seq_impl!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

/// A tuple variant: ciborium's tag protocol, or `{variant: [fields…]}`.
pub(crate) enum TupleVariant<'a> {
    Tag { out: &'a mut Vec<u8>, depth: usize, tag: Option<u64>, at: usize },
    Seq(Seq<'a>),
}

impl ser::SerializeTupleVariant for TupleVariant<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        match self {
            TupleVariant::Seq(seq) => seq.element(value),
            TupleVariant::Tag { out, depth, tag: tag @ None, at } => {
                // First field: the tag number, captured by encoding it and reading it back.
                let mut n = Vec::with_capacity(9);
                value.serialize(Ser { out: &mut n, depth: *depth })?;
                let t = match n.as_slice() {
                    [b] if *b < 24 => u64::from(*b),
                    [0x18, b] => u64::from(*b),
                    [0x19, rest @ ..] => rest.iter().fold(0, |a, &b| a << 8 | u64::from(b)),
                    _ => {
                        return Err(EncodeError::Serialize("tag number must be an integer".into()));
                    }
                };
                if t != CID_TAG {
                    return Err(EncodeError::NotCanonical(NonCanonical::UnsupportedTag(t)));
                }
                *tag = Some(t);
                head(out, 6, t);
                *at = out.len();
                Ok(())
            }
            TupleVariant::Tag { out, depth, at, .. } => {
                value.serialize(Ser { out, depth: *depth })?;
                // The content must be a byte string holding a valid link.
                let content = &out[*at..];
                let link = match content.first() {
                    Some(b) if b >> 5 == 2 => skip_head(content),
                    _ => None,
                };
                match link.map(cid_from_link) {
                    Some(Ok(_)) => Ok(()),
                    _ => Err(EncodeError::Serialize("tag 42 must hold a CID link".into())),
                }
            }
        }
    }

    fn end(self) -> Result<(), EncodeError> {
        match self {
            TupleVariant::Seq(seq) => seq.finish(),
            TupleVariant::Tag { tag: Some(_), .. } => Ok(()),
            TupleVariant::Tag { .. } => Err(EncodeError::Serialize("empty tag".into())),
        }
    }
}

/// The content after a byte-string head (which this writer made, so it is well-formed).
fn skip_head(bytes: &[u8]) -> Option<&[u8]> {
    let skip = match bytes.first()? & 0x1f {
        0..=23 => 1,
        24 => 2,
        25 => 3,
        26 => 5,
        27 => 9,
        _ => return None,
    };
    bytes.get(skip..)
}

/// A map or struct: entries buffered, then sorted by encoded key.
pub(crate) struct Map<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
    buf: Vec<u8>,
    /// (key start, value start, end) in `buf`.
    entries: Vec<(usize, usize, usize)>,
    key: Option<(usize, usize)>,
}

impl<'a> Map<'a> {
    fn new(out: &'a mut Vec<u8>, depth: usize) -> Self {
        Self { out, depth, buf: Vec::with_capacity(256), entries: Vec::new(), key: None }
    }

    fn finish(self) -> Result<(), EncodeError> {
        let Map { out, buf, mut entries, .. } = self;
        entries.sort_unstable_by(|a, b| key_order(&buf[a.0..a.1], &buf[b.0..b.1]));
        if entries.windows(2).any(|w| buf[w[0].0..w[0].1] == buf[w[1].0..w[1].1]) {
            return Err(EncodeError::NotCanonical(NonCanonical::DuplicateKey));
        }
        head(out, 5, entries.len() as u64);
        for (k, _, end) in entries {
            out.extend_from_slice(&buf[k..end]);
        }
        Ok(())
    }
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        let start = self.buf.len();
        key.serialize(Ser { out: &mut self.buf, depth: self.depth })?;
        if self.buf.get(start).map(|b| b >> 5) != Some(3) {
            return Err(EncodeError::NotCanonical(NonCanonical::NonTextKey));
        }
        self.key = Some((start, self.buf.len()));
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        let (start, value_at) =
            self.key.take().ok_or_else(|| EncodeError::Serialize("value without a key".into()))?;
        value.serialize(Ser { out: &mut self.buf, depth: self.depth })?;
        self.entries.push((start, value_at, self.buf.len()));
        Ok(())
    }

    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

/// Structs and struct variants are maps whose keys are the field names.
macro_rules! struct_impl {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Map<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), EncodeError> {
                ser::SerializeMap::serialize_entry(self, key, value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.finish()
            }
        }
    )*};
}
struct_impl!(SerializeStruct, SerializeStructVariant);
