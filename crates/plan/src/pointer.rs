//! JSON Pointers (RFC 6901) and the references of a plan built on them.

use std::fmt;

use serde_json::Value;

/// A JSON Pointer (RFC 6901), parsed once into its reference tokens (unescaped). The empty
/// pointer (`""`) names the whole value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pointer(Vec<String>);

/// Why text is not a JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PointerError {
    #[error("a JSON Pointer is empty or starts with '/'")]
    NoSlash,
    #[error("'~' must be followed by '0' or '1' in a JSON Pointer (write ~0 for '~', ~1 for '/')")]
    BadEscape,
}

impl Pointer {
    /// The empty pointer: the whole value.
    pub const fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses RFC 6901 text: `""`, or `/`-separated tokens with `~1` for `/` and `~0` for `~`.
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        if text.is_empty() {
            return Ok(Self::root());
        }
        let rest = text.strip_prefix('/').ok_or(PointerError::NoSlash)?;
        rest.split('/').map(unescape).collect::<Result<_, _>>().map(Self)
    }

    /// A pointer from tokens (unescaped).
    pub fn from_tokens<I: IntoIterator<Item = S>, S: Into<String>>(tokens: I) -> Self {
        Self(tokens.into_iter().map(Into::into).collect())
    }

    pub fn tokens(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This pointer with one more token.
    pub fn child(&self, token: impl Into<String>) -> Self {
        let mut out = self.clone();
        out.0.push(token.into());
        out
    }

    /// Whether `prefix`'s tokens begin this pointer's (every pointer starts with the root).
    pub fn starts_with(&self, prefix: &Pointer) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The value this pointer names in `value`, if any (an array member only by a canonical
    /// index: digits, no leading zero).
    pub fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(value, |v, token| match v {
            Value::Object(map) => map.get(token),
            Value::Array(items) => index(token).and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

/// An array index token: `0`, or digits without a leading zero.
pub fn index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical { token.parse().ok() } else { None }
}

fn unescape(token: &str) -> Result<String, PointerError> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(PointerError::BadEscape),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Escapes one reference token (`~` → `~0`, `/` → `~1`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.0 {
            write!(f, "/{}", escape(token))?;
        }
        Ok(())
    }
}

/// What a reference starts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    /// `/inputs/<name>`: one of the plan's inputs.
    Input(String),
    /// `/steps/<name>`: the output of an earlier step.
    Step(String),
    /// `/item`: the list item a `map` or `reduce` step is at.
    Item,
    /// `/index`: the position of that item in its list (a `map` step only), from 0.
    Index,
    /// `/acc`: the accumulated value of a `reduce` step.
    Acc,
}

/// A reference to a value: a [`Root`] and a path (a JSON Pointer) inside it. Its text form is
/// one JSON Pointer into the document `{"inputs": …, "steps": …, "item": …, "index": …,
/// "acc": …}`, e.g. `/steps/fetch/0/title`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub root: Root,
    pub path: Pointer,
}

impl Source {
    /// Parses a reference. The reason names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let pointer = Pointer::parse(text).map_err(|e| e.to_string())?;
        let tokens = pointer.tokens();
        let (root, rest) = match tokens.first().map(String::as_str) {
            Some("inputs" | "steps") => {
                let Some(name) = tokens.get(1) else {
                    return Err(format!("{text:?} names no {}", &tokens[0]));
                };
                if !crate::is_name(name) {
                    return Err(format!("{name:?} is not a name ({})", crate::NAME_RULE));
                }
                let root = if tokens[0] == "inputs" {
                    Root::Input(name.clone())
                } else {
                    Root::Step(name.clone())
                };
                (root, &tokens[2..])
            }
            Some("item") => (Root::Item, &tokens[1..]),
            Some("acc") => (Root::Acc, &tokens[1..]),
            Some("index") if tokens.len() == 1 => (Root::Index, &tokens[1..]),
            Some("index") => return Err("`/index` is a number: nothing is below it".into()),
            _ => {
                return Err(format!(
                    "{text:?} starts with none of /inputs/<name>, /steps/<name>, /item, /index, /acc"
                ));
            }
        };
        Ok(Self { root, path: Pointer::from_tokens(rest.iter().cloned()) })
    }

    /// The name of the step this reference reads, if it reads one.
    pub fn step(&self) -> Option<&str> {
        match &self.root {
            Root::Step(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Input(name) => write!(f, "/inputs/{name}")?,
            Root::Step(name) => write!(f, "/steps/{name}")?,
            Root::Item => f.write_str("/item")?,
            Root::Index => f.write_str("/index")?,
            Root::Acc => f.write_str("/acc")?,
        }
        write!(f, "{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = json!({"a/b": {"m~n": [10, 20]}, "": 1});
        let p = Pointer::parse("/a~1b/m~0n/1").expect("valid");
        assert_eq!(p.tokens(), ["a/b", "m~n", "1"]);
        assert_eq!(p.get(&doc), Some(&json!(20)));
        assert_eq!(p.to_string(), "/a~1b/m~0n/1");
        assert_eq!(Pointer::parse("/").expect("valid").get(&doc), Some(&json!(1)));
        assert_eq!(Pointer::parse("").expect("valid").get(&doc), Some(&doc));
        assert_eq!(Pointer::parse("/a~1b/m~0n/01").expect("valid").get(&doc), None);
        assert_eq!(Pointer::parse("a"), Err(PointerError::NoSlash));
        assert_eq!(Pointer::parse("/a~2"), Err(PointerError::BadEscape));
        assert_eq!(Pointer::parse("/a~"), Err(PointerError::BadEscape));
    }

    #[test]
    fn sources_are_typed() {
        let s = Source::parse("/steps/fetch/0/title").expect("valid");
        assert_eq!(s.root, Root::Step("fetch".into()));
        assert_eq!(s.path.tokens(), ["0", "title"]);
        assert_eq!(s.to_string(), "/steps/fetch/0/title");
        assert_eq!(Source::parse("/item").expect("valid").root, Root::Item);
        assert_eq!(Source::parse("/index").expect("valid").root, Root::Index);
        assert!(Source::parse("/index/0").is_err());
        assert!(Source::parse("/inputs").is_err());
        assert!(Source::parse("/outputs/x").is_err());
        assert!(Source::parse("/steps/bad name").is_err());
        assert!(Source::parse("").is_err());
    }
}
