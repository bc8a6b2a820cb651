//! A small deterministic generator (xorshift64*): a scenario or a simulation with the same seed
//! picks the same nodes, keys and wiring.

#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `k` distinct numbers below `n`.
    pub(crate) fn choose_below(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..n).collect();
        let mut out = Vec::with_capacity(k.min(n));
        while out.len() < k && !pool.is_empty() {
            out.push(pool.swap_remove(self.below(pool.len())));
        }
        out
    }

    /// `k` distinct items of `items`.
    pub(crate) fn choose(&mut self, items: &[usize], k: usize) -> Vec<usize> {
        self.choose_below(items.len(), k).into_iter().map(|i| items[i]).collect()
    }
}
