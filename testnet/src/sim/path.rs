//! The path of a lookup, rebuilt from the answers its responders gave (see the module doc of
//! `sim` for the method and its approximation).

use std::collections::HashMap;

use libp2p::PeerId;

use super::node::Asked;

/// Where a lookup's first provider record was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Path {
    /// Peers on the path to the first responder that held a provider record (that responder
    /// included); 0 when the querier held one itself; `None` when no responder held one, or the
    /// first that did cannot be placed.
    pub(crate) hops: Option<u32>,
    /// Responders that were neither first candidates nor named by an earlier answer (the
    /// recomputed answers missed them).
    pub(crate) unplaced: u32,
}

/// Depth of each responder: 1 for the querier's first candidates, else 1 + the least depth of
/// an earlier responder whose answer named it. `answers` must be in the order they were given.
pub(crate) fn reconstruct(initial: &[PeerId], answers: &[Asked], held_record: bool) -> Path {
    let mut depth: HashMap<PeerId, u32> = initial.iter().map(|p| (*p, 1)).collect();
    let mut first_holder = None;
    let mut unplaced = 0;
    for answer in answers {
        let Some(&d) = depth.get(&answer.responder) else {
            unplaced += 1;
            if answer.has_record && first_holder.is_none() {
                first_holder = Some(None);
            }
            continue;
        };
        if answer.has_record && first_holder.is_none() {
            first_holder = Some(Some(d));
        }
        for peer in &answer.learned {
            let e = depth.entry(*peer).or_insert(d + 1);
            *e = (*e).min(d + 1);
        }
    }
    let hops = if held_record { Some(0) } else { first_holder.flatten() };
    Path { hops, unplaced }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn asked(responder: PeerId, learned: &[PeerId], has_record: bool) -> Asked {
        Asked { lookup: 0, at: Instant::now(), responder, learned: learned.to_vec(), has_record }
    }

    #[test]
    fn depth_follows_the_shortest_chain_of_earlier_answers() {
        let p = peers(6);
        // p0, p1 first candidates; p0 names p2, p2 names p3 and p4, p1 names p4 too.
        let answers = [
            asked(p[0], &[p[2]], false),
            asked(p[1], &[p[4]], false),
            asked(p[2], &[p[3], p[4]], false),
            asked(p[3], &[], false),
            asked(p[4], &[], true),
        ];
        let path = reconstruct(&p[..2], &answers, false);
        assert_eq!(path, Path { hops: Some(2), unplaced: 0 });
        // The record met at a first candidate: one peer on the path.
        let answers = [asked(p[0], &[p[2]], true), asked(p[2], &[], true)];
        assert_eq!(reconstruct(&p[..2], &answers, false).hops, Some(1));
    }

    #[test]
    fn held_none_found_and_unplaced() {
        let p = peers(4);
        let answers = [asked(p[0], &[p[1]], true)];
        assert_eq!(reconstruct(&p[..1], &answers, true).hops, Some(0));
        let answers = [asked(p[0], &[p[1]], false), asked(p[1], &[], false)];
        assert_eq!(reconstruct(&p[..1], &answers, false), Path { hops: None, unplaced: 0 });
        // p3 answers though no one named it: it cannot be placed, nor can its record.
        let answers = [asked(p[0], &[p[1]], false), asked(p[3], &[], true), asked(p[1], &[], true)];
        assert_eq!(reconstruct(&p[..1], &answers, false), Path { hops: None, unplaced: 1 });
    }
}
