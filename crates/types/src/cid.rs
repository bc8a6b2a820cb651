use std::{fmt, str::FromStr};

use crate::Digest;

/// Multihash code of BLAKE3-256.
const MH_BLAKE3: u64 = 0x1e;
const CID_V1: u64 = 1;

/// What a [`Cid`]'s bytes are: canonical CBOR objects or opaque blobs.
///
/// Declared in code order (raw 0x55 before dag-cbor 0x71) so that the derived order of
/// [`Cid`] is the bytewise order of the binary form, which ranges and tie-breaks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Codec {
    /// raw, multicodec 0x55: bytes as they are.
    Raw,
    /// dag-cbor, multicodec 0x71: the canonical CBOR of a capmesh object.
    DagCbor,
}

impl Codec {
    pub const fn code(self) -> u64 {
        match self {
            Codec::DagCbor => 0x71,
            Codec::Raw => 0x55,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            0x71 => Some(Codec::DagCbor),
            0x55 => Some(Codec::Raw),
            _ => None,
        }
    }
}

/// A content id: CIDv1, codec dag-cbor or raw, BLAKE3-256 multihash.
///
/// Binary form `0x01 codec 0x1e 0x20 digest` (36 bytes); text form multibase base32 lower-case
/// (`b…`), as IPFS prints CIDs. Only this profile exists in capmesh, so it is `Copy` and never
/// allocates; anything else is refused with a [`CidError`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cid {
    codec: Codec,
    digest: Digest,
}

/// Why bytes or text are not a capmesh CID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidError {
    #[error("a CID's text form must start with the multibase prefix 'b' (base32 lower-case)")]
    Multibase,
    #[error("invalid base32 in CID text")]
    Base32,
    #[error("truncated or over-long varint in CID")]
    Varint,
    #[error("unsupported CID version {0}: only CIDv1 is used")]
    Version(u64),
    #[error("unsupported CID codec 0x{0:x}: only dag-cbor (0x71) and raw (0x55) are used")]
    Codec(u64),
    #[error("unsupported multihash 0x{0:x}: only BLAKE3-256 (0x1e) is used")]
    Hash(u64),
    #[error("multihash digest length {0} is not 32")]
    DigestLength(u64),
    #[error("{0} bytes after the end of the CID")]
    Trailing(usize),
}

impl Cid {
    /// Length of the binary form.
    pub const BINARY_LEN: usize = 36;

    /// CID of `bytes` under `codec`: BLAKE3-256 over exactly these bytes.
    pub fn of(codec: Codec, bytes: &[u8]) -> Self {
        Self::new(codec, Digest::of(bytes))
    }

    pub const fn new(codec: Codec, digest: Digest) -> Self {
        Self { codec, digest }
    }

    pub const fn codec(&self) -> Codec {
        self.codec
    }

    pub const fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The multihash bytes (`0x1e 0x20 digest`): the Kademlia key of the object.
    pub fn multihash(&self) -> [u8; 34] {
        let mut out = [0u8; 34];
        out[0] = MH_BLAKE3 as u8;
        out[1] = Digest::LEN as u8;
        out[2..].copy_from_slice(self.digest.as_bytes());
        out
    }

    /// The binary form.
    pub fn to_bytes(&self) -> [u8; Self::BINARY_LEN] {
        let mut out = [0u8; Self::BINARY_LEN];
        out[0] = CID_V1 as u8;
        out[1] = self.codec.code() as u8;
        out[2..].copy_from_slice(&self.multihash());
        out
    }

    /// Parses the binary form, refusing trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CidError> {
        let mut rest = bytes;
        let version = read_varint(&mut rest)?;
        if version != CID_V1 {
            return Err(CidError::Version(version));
        }
        let code = read_varint(&mut rest)?;
        let codec = Codec::from_code(code).ok_or(CidError::Codec(code))?;
        let hash = read_varint(&mut rest)?;
        if hash != MH_BLAKE3 {
            return Err(CidError::Hash(hash));
        }
        let len = read_varint(&mut rest)?;
        if len != Digest::LEN as u64 {
            return Err(CidError::DigestLength(len));
        }
        let (digest, trailing) =
            rest.split_first_chunk::<32>().ok_or(CidError::DigestLength(rest.len() as u64))?;
        if !trailing.is_empty() {
            return Err(CidError::Trailing(trailing.len()));
        }
        Ok(Self::new(codec, Digest::from_bytes(*digest)))
    }
}

/// Reads a minimal unsigned LEB128 varint (multiformats unsigned-varint, at most 9 bytes).
fn read_varint(input: &mut &[u8]) -> Result<u64, CidError> {
    let mut value: u64 = 0;
    for i in 0..9 {
        let (&byte, rest) = input.split_first().ok_or(CidError::Varint)?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero group means the encoding was not minimal.
            if byte == 0 && i > 0 {
                return Err(CidError::Varint);
            }
            return Ok(value);
        }
    }
    Err(CidError::Varint)
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("b")?;
        f.write_str(&crate::base32_lower().encode(&self.to_bytes()))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.strip_prefix('b').ok_or(CidError::Multibase)?;
        let bytes = crate::base32_lower().decode(body.as_bytes()).map_err(|_| CidError::Base32)?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn binary_layout() {
        let cid = Cid::of(Codec::DagCbor, b"x");
        let bytes = cid.to_bytes();
        assert_eq!(&bytes[..4], &[0x01, 0x71, 0x1e, 0x20]);
        assert_eq!(&bytes[4..], Digest::of(b"x").as_bytes());
        assert_eq!(&Cid::of(Codec::Raw, b"x").to_bytes()[..2], &[0x01, 0x55]);
    }

    #[test]
    fn text_form_is_base32_lower() {
        let text = Cid::of(Codec::DagCbor, b"").to_string();
        // 0x01 0x71 0x1e 0x20 always starts "bafyr4i" in base32, like IPFS dag-cbor blake3 CIDs.
        assert!(text.starts_with("bafyr4i"), "{text}");
        assert_eq!(text.len(), 1 + 58);
        assert!(text.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
    }

    #[test]
    fn refusals_are_typed() {
        let good = Cid::of(Codec::Raw, b"y").to_bytes();
        assert_eq!("Bafy".parse::<Cid>(), Err(CidError::Multibase));
        assert_eq!("b1".parse::<Cid>(), Err(CidError::Base32));
        let mut v0 = good;
        v0[0] = 0x00;
        assert_eq!(Cid::from_bytes(&v0), Err(CidError::Version(0)));
        let mut codec = good;
        codec[1] = 0x70;
        assert_eq!(Cid::from_bytes(&codec), Err(CidError::Codec(0x70)));
        let mut hash = good;
        hash[2] = 0x12;
        assert_eq!(Cid::from_bytes(&hash), Err(CidError::Hash(0x12)));
        let mut len = good;
        len[3] = 0x10;
        assert_eq!(Cid::from_bytes(&len), Err(CidError::DigestLength(16)));
        assert_eq!(Cid::from_bytes(&good[..20]), Err(CidError::DigestLength(16)));
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Cid::from_bytes(&long), Err(CidError::Trailing(1)));
        // Non-minimal varint for the version (0x81 0x00 = 1).
        let mut padded = vec![0x81, 0x00];
        padded.extend_from_slice(&good[1..]);
        assert_eq!(Cid::from_bytes(&padded), Err(CidError::Varint));
    }

    proptest! {
        #[test]
        fn text_and_binary_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64), raw in any::<bool>()) {
            let codec = if raw { Codec::Raw } else { Codec::DagCbor };
            let cid = Cid::of(codec, &bytes);
            prop_assert_eq!(cid.to_string().parse::<Cid>().unwrap(), cid);
            prop_assert_eq!(Cid::from_bytes(&cid.to_bytes()).unwrap(), cid);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Cid>();
        }

        #[test]
        fn order_is_the_binary_order(a in any::<(bool, u8)>(), b in any::<(bool, u8)>()) {
            let cid = |(raw, n): (bool, u8)| Cid::of(if raw { Codec::Raw } else { Codec::DagCbor }, &[n]);
            let (a, b) = (cid(a), cid(b));
            prop_assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()));
        }
    }
}
