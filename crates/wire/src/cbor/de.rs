//! A serde deserializer over bytes that already passed [`super::check`].
//!
//! Because the bytes are known canonical, it is a plain walk: zero-copy strings and byte
//! strings, no scratch buffers. It never panics on other input either (it is only ever given
//! checked bytes, but every read is bounds-checked all the same). Two newtype-struct markers
//! let types ask for what serde's data model has no word for: a CID link (tag 42) and the raw
//! encoded bytes of a value (so an envelope's body can be decoded once its kind is known).

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Newtype-struct name asking for the content of a tag-42 link (as borrowed bytes).
pub(crate) const LINK: &str = "$capmesh::cbor::Link";
/// Newtype-struct name asking for the raw encoded bytes of the next value.
pub(crate) const RAW: &str = "$capmesh::cbor::Raw";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Error(pub(crate) String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn eof() -> Error {
    Error("unexpected end of input".into())
}

pub(crate) struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
}

impl<'de> Deserializer<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Self { input, pos: 0 }
    }

    pub(crate) fn end(&self) -> Result<(), Error> {
        if self.pos == self.input.len() { Ok(()) } else { Err(Error("trailing bytes".into())) }
    }

    fn peek(&self) -> Result<u8, Error> {
        self.input.get(self.pos).copied().ok_or_else(eof)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len()).ok_or_else(eof)?;
        let out = &self.input[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads a head: (major type, additional info, argument). For major 7 the argument is the
    /// raw float bits (info 27) or 0.
    fn head(&mut self) -> Result<(u8, u8, u64), Error> {
        let ib = self.take(1)?[0];
        let (major, info) = (ib >> 5, ib & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            _ => return Err(Error("unsupported additional information".into())),
        };
        Ok((major, info, if major == 7 && info < 24 { 0 } else { arg }))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn len(arg: u64) -> Result<usize, Error> {
        usize::try_from(arg).map_err(|_| Error("length does not fit in memory".into()))
    }

    /// Skips one complete value.
    fn skip(&mut self) -> Result<(), Error> {
        let (major, _, arg) = self.head()?;
        match major {
            2 | 3 => {
                self.take(Deserializer::len(arg)?)?;
            }
            4 => (0..arg).try_for_each(|_| self.skip())?,
            5 => (0..arg).try_for_each(|_| self.skip().and_then(|()| self.skip()))?,
            6 => self.skip()?,
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self) -> Result<&'de str, Error> {
        match self.head()? {
            (3, _, len) => std::str::from_utf8(self.take(Deserializer::len(len)?)?)
                .map_err(|_| Error("invalid UTF-8".into())),
            _ => Err(Error("expected text".into())),
        }
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (major, info, arg) = self.head()?;
        match major {
            0 => visitor.visit_u64(arg),
            1 => match i64::try_from(arg) {
                Ok(n) => visitor.visit_i64(-1 - n),
                Err(_) => visitor.visit_i128(-1 - i128::from(arg)),
            },
            2 => visitor.visit_borrowed_bytes(self.take(Deserializer::len(arg)?)?),
            3 => visitor.visit_borrowed_str(
                std::str::from_utf8(self.take(Deserializer::len(arg)?)?)
                    .map_err(|_| Error("invalid UTF-8".into()))?,
            ),
            4 => visitor.visit_seq(Seq { de: self, left: arg }),
            5 => visitor.visit_map(Map { de: self, left: arg }),
            6 => Err(Error("a CID link where a plain value was expected".into())),
            _ => match info {
                20 => visitor.visit_bool(false),
                21 => visitor.visit_bool(true),
                22 => visitor.visit_unit(),
                27 => visitor.visit_f64(f64::from_bits(arg)),
                _ => Err(Error("unsupported simple value".into())),
            },
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek()? == 0xf6 {
            self.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        match name {
            LINK => match self.head()? {
                (6, _, 42) => match self.head()? {
                    (2, _, len) => {
                        visitor.visit_borrowed_bytes(self.take(Deserializer::len(len)?)?)
                    }
                    _ => Err(Error("tag 42 must hold a byte string".into())),
                },
                _ => Err(Error("expected a CID link (tag 42)".into())),
            },
            RAW => {
                let start = self.pos;
                self.skip()?;
                visitor.visit_borrowed_bytes(&self.input[start..self.pos])
            }
            _ => visitor.visit_newtype_struct(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.peek()? >> 5 {
            // A unit variant is its name.
            3 => visitor.visit_enum(self.text()?.into_deserializer()),
            // Any other variant is a map of one entry: {name: content}.
            5 => match self.head()? {
                (5, _, 1) => visitor.visit_enum(Enum { de: self }),
                _ => Err(Error("an enum is a name or a map of exactly one entry".into())),
            },
            _ => Err(Error("expected an enum variant".into())),
        }
    }

    // Text only: serde's string and field-name visitors also take UTF-8 byte strings, which
    // would let a second form of the same value through (found by the `records` fuzz target).
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text()?)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text()?)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct
    }
}

struct Seq<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: u64,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Bounded by what is left of the input, so a hint never reserves more than it.
        usize::try_from(self.left).ok().map(|n| n.min(self.de.input.len() - self.de.pos))
    }
}

struct Map<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: u64,
}

impl<'de> de::MapAccess<'de> for Map<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok().map(|n| n.min(self.de.input.len() - self.de.pos))
    }
}

struct Enum<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for Enum<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let name = self.de.text()?;
        let variant = seed.deserialize(name.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Err(Error("a unit variant is written as its name, not a map".into()))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
}
