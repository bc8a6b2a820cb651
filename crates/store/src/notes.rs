//! Ledger notes: what this node knows locally about a receipt in its ledger — the trace id of
//! the call and the agent session it was made or served under (the security context). A note
//! is not signed and not part of the hash chain: it says who asked on this node, which the
//! other party never learns (the wire protocol is unchanged).

use capmesh_types::Cid;

use crate::{Store, StoreError, keys};

/// Longest session id or name kept in a note, in bytes (longer ones are cut at a char boundary).
pub const MAX_NOTE_TEXT: usize = 256;

/// The local context of one receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerNote {
    /// The call's trace id (the `trace` of every envelope of the call).
    pub trace: Option<[u8; 16]>,
    /// The session the call was made (caller side) or served (provider side) under.
    pub session: Option<SessionTag>,
}

/// A session as a note names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTag {
    pub id: String,
    pub name: String,
}

const VERSION: u8 = 1;

impl LedgerNote {
    /// `1 ‖ has trace (1) [‖ trace (16)] ‖ has session (1) [‖ len (2) ‖ id ‖ len (2) ‖ name]`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match &self.trace {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(t);
            }
            None => out.push(0),
        }
        match &self.session {
            Some(s) => {
                out.push(1);
                for text in [&s.id, &s.name] {
                    let text = cut(text);
                    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
            None => out.push(0),
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(1)? != [VERSION] {
            return None;
        }
        let trace = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.take(16)?.try_into().ok()?),
            _ => return None,
        };
        let session = match r.take(1)?[0] {
            0 => None,
            1 => Some(SessionTag { id: r.text()?, name: r.text()? }),
            _ => return None,
        };
        r.0.is_empty().then_some(Self { trace, session })
    }
}

fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_NOTE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn text(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

fn note_key(receipt: &Cid) -> Vec<u8> {
    keys::cat(&[&[keys::LEDGER_NOTE], &receipt.to_bytes()])
}

impl Store {
    /// Keeps `note` for the receipt `receipt` (replacing an earlier one). Durable with the next
    /// ledger flush: write it before the receipt's append that is flushed. Blocking.
    pub fn ledger_annotate(&self, receipt: &Cid, note: &LedgerNote) -> Result<(), StoreError> {
        self.inner.db.insert(note_key(receipt), note.encode())?;
        Ok(())
    }

    /// The note of `receipt`, if one was kept (a note that does not decode is reported as
    /// corrupt). Blocking.
    pub fn ledger_note(&self, receipt: &Cid) -> Result<Option<LedgerNote>, StoreError> {
        match self.inner.db.get(note_key(receipt))? {
            None => Ok(None),
            Some(bytes) => LedgerNote::decode(&bytes)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt("ledger note".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_refuse_garbage() {
        let notes = [
            LedgerNote::default(),
            LedgerNote { trace: Some([7; 16]), session: None },
            LedgerNote {
                trace: Some([1; 16]),
                session: Some(SessionTag { id: "s1".into(), name: "agent é".into() }),
            },
        ];
        for note in notes {
            assert_eq!(LedgerNote::decode(&note.encode()), Some(note.clone()));
            let mut longer = note.encode();
            longer.push(0);
            assert_eq!(LedgerNote::decode(&longer), None, "trailing bytes");
            let bytes = note.encode();
            assert_eq!(LedgerNote::decode(&bytes[..bytes.len() - 1]), None, "cut short");
        }
        assert_eq!(LedgerNote::decode(&[2, 0, 0]), None, "unknown version");
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_NOTE_TEXT);
        let note = LedgerNote {
            trace: None,
            session: Some(SessionTag { id: long.clone(), name: "n".into() }),
        };
        let back = LedgerNote::decode(&note.encode()).unwrap().session.unwrap();
        assert!(back.id.len() <= MAX_NOTE_TEXT && long.starts_with(&back.id));
    }
}
