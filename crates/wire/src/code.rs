//! Protocol codes (specs/protocol.md §11) as one type, parsed once where a code enters (a
//! peer's `ErrorBody`, a local error) and matched as a variant everywhere after.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A protocol code: the verification codes (§11.1), the application codes (§11.2), the
        /// caller's own, or a code this node does not know ([`Code::Unknown`], kept as text so it
        /// can be shown and passed on).
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[$doc])* $name,)*
            /// A code from a peer that is none of the above (a newer protocol, another
            /// implementation), kept as it came so that what decodes re-encodes to the same
            /// bytes (the frame bounds its length).
            Unknown(Box<str>),
        }

        impl Code {
            /// Every known code, in the order of protocol.md §11.1, §11.2, then the caller's own.
            pub const KNOWN: &'static [Code] = &[$(Code::$name),*];

            /// The code named `s`; anything unknown is [`Code::Unknown`].
            pub fn parse(s: &str) -> Code {
                match s {
                    $(stringify!($name) => Code::$name,)*
                    other => Code::Unknown(other.into()),
                }
            }

            /// The name of a known code; `None` for [`Code::Unknown`].
            pub fn known_name(&self) -> Option<&'static str> {
                match self {
                    $(Code::$name => Some(stringify!($name)),)*
                    Code::Unknown(_) => None,
                }
            }
        }
    };
}

codes! {
    // §11.1: decoding and verification.
    TooLarge,
    TooDeep,
    Malformed,
    NonCanonical,
    BadLink,
    InvalidObject,
    UnsupportedVersion,
    BadKey,
    BadSignature,
    CidMismatch,
    FutureDated,
    Expired,
    TtlTooLong,
    UnknownSchema,
    Misaddressed,
    Replay,
    ReplayCacheFull,
    // §11.2: application.
    PolicyDenied,
    RateLimited,
    Busy,
    NotFound,
    InvalidArgs,
    OutputInvalid,
    OfferExpired,
    PriceTooHigh,
    Timeout,
    Cancelled,
    Failed,
    Internal,
    // The caller's own, never sent: a receipt that does not hold up, a provider that could not
    // be reached, every provider tried, a provider that declined to offer (`Negotiate`
    // `Reject`).
    BadReceipt,
    Unreachable,
    Exhausted,
    Declined,
}

impl Code {
    /// Whether the spec calls a refusal with this code retryable (§11.1: only
    /// `ReplayCacheFull`; §11.2: `RateLimited`, `Busy`, `Timeout`, `Internal`). A peer's
    /// `ErrorBody.retryable` says so for its own answer.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Code::ReplayCacheFull | Code::RateLimited | Code::Busy | Code::Timeout | Code::Internal
        )
    }

    /// The label a metric counts this code under: its name, or `Other` for an unknown code, so
    /// that a peer cannot grow a metric's label set.
    pub fn metric_label(&self) -> &'static str {
        self.known_name().unwrap_or("Other")
    }

    /// The name as it is on the wire (`"PolicyDenied"`).
    pub fn as_str(&self) -> &str {
        match self {
            Code::Unknown(s) => s,
            known => known.known_name().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Code {
    fn from(s: &str) -> Self {
        Code::parse(s)
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Code::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_parses_to_itself_and_unknown_ones_are_kept_as_they_came() {
        for c in Code::KNOWN {
            assert_eq!(&Code::parse(c.as_str()), c);
            assert_eq!(c.metric_label(), c.as_str());
        }
        assert_eq!(Code::KNOWN.len(), 17 + 12 + 4);
        let odd = Code::parse("FromTheFuture");
        assert_eq!(odd, Code::Unknown("FromTheFuture".into()));
        assert_eq!(odd.as_str(), "FromTheFuture");
        assert_eq!(odd.metric_label(), "Other");
    }

    #[test]
    fn retryable_is_the_spec_table() {
        let retryable: Vec<&str> =
            Code::KNOWN.iter().filter(|c| c.retryable()).map(Code::as_str).collect();
        assert_eq!(retryable, ["ReplayCacheFull", "RateLimited", "Busy", "Timeout", "Internal"]);
    }

    #[test]
    fn a_code_is_text_on_the_wire() {
        let json = serde_json::to_string(&Code::PolicyDenied).unwrap_or_default();
        assert_eq!(json, "\"PolicyDenied\"");
        let back: Code = serde_json::from_str("\"Whatever\"").unwrap_or(Code::Internal);
        assert_eq!(back, Code::Unknown("Whatever".into()));
    }
}
