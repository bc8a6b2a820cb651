//! The steps as a graph: an order to run them in, or the cycles that forbid one.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::Step;

/// Step names in an order where each comes after every step it depends on, ties broken by
/// name (Kahn's algorithm); or, when there is none, every group of steps that depend on each
/// other in a circle (each sorted, the groups by their first name). References to steps that
/// are not in `steps` are ignored (they are reported as unresolved).
pub(crate) fn order(steps: &BTreeMap<String, Step>) -> Result<Vec<String>, Vec<Vec<String>>> {
    let deps: BTreeMap<&str, BTreeSet<&str>> = steps
        .iter()
        .map(|(name, step)| {
            let d = step.dependencies().into_iter().filter(|d| steps.contains_key(*d)).collect();
            (name.as_str(), d)
        })
        .collect();
    let mut waiting: BTreeMap<&str, usize> = deps.iter().map(|(n, d)| (*n, d.len())).collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, d) in &deps {
        for dep in d {
            dependents.entry(dep).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> =
        waiting.iter().filter(|(_, n)| **n == 0).map(|(s, _)| *s).collect();
    let mut out = Vec::with_capacity(steps.len());
    while let Some(next) = ready.pop_first() {
        out.push(next.to_owned());
        for d in dependents.get(next).into_iter().flatten() {
            let n = waiting.get_mut(d).expect("every dependent is a step");
            *n -= 1;
            if *n == 0 {
                ready.insert(d);
            }
        }
    }
    if out.len() == steps.len() {
        return Ok(out);
    }
    Err(cycles(&deps))
}

/// Strongly connected components (Tarjan) that are cycles: more than one step, or one step
/// that depends on itself.
fn cycles(deps: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<Vec<String>> {
    struct Tarjan<'a, 'd> {
        deps: &'d BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a, '_> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in &self.deps[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 || self.deps[v].contains(v) {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut t = Tarjan {
        deps,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &v in deps.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}
