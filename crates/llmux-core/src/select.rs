//! Selection: the order in which a model pool's targets are tried. Pure: the caller passes the
//! targets' live figures and a random source; the first target that admits the request wins,
//! the rest are failover.

use crate::config::Strategy;
use rand::Rng;

/// What a strategy may look at for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Candidate {
    /// Target weight times key weight (>= 1).
    pub weight: u64,
    /// Lower is tried first (`priority`).
    pub priority: i32,
    /// Requests in flight now (`least-busy`).
    pub in_flight: u64,
    /// Higher is better (`score`), in 0..=1.
    pub score: f64,
    /// Latency EWMA in microseconds; 0 = no sample yet (`latency`).
    pub latency_us: f64,
}

/// The order to try `cands` in. `turn` is a per-pool counter for round-robin and ties.
pub fn order<R: Rng + ?Sized>(
    strategy: Strategy,
    cands: &[Candidate],
    turn: u64,
    rng: &mut R,
) -> Vec<usize> {
    let n = cands.len();
    if n == 0 {
        return Vec::new();
    }
    let start = (turn % n as u64) as usize;
    let rotated: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    match strategy {
        Strategy::RoundRobin => rotated,
        Strategy::Priority | Strategy::Cost => {
            let mut v: Vec<usize> = (0..n).collect();
            v.sort_by_key(|&i| cands[i].priority);
            v
        }
        Strategy::LeastBusy => {
            let mut v = rotated;
            v.sort_by_key(|&i| cands[i].in_flight);
            v
        }
        Strategy::Score => {
            let mut v = rotated;
            v.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
            v
        }
        Strategy::Latency => {
            // Power of two choices: of two targets drawn at random, the one with the lower
            // load-weighted latency (EWMA × (in flight + 1); untried ones count 0, so every
            // target gets measured) goes first; failover then goes by latency.
            let cost = |i: usize| cands[i].latency_us * (cands[i].in_flight as f64 + 1.0);
            let mut v = rotated;
            v.sort_by(|&a, &b| cost(a).total_cmp(&cost(b)));
            if n >= 2 {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let first = if cost(b) < cost(a) { b } else { a };
                if let Some(pos) = v.iter().position(|&i| i == first) {
                    let chosen = v.remove(pos);
                    v.insert(0, chosen);
                }
            }
            v
        }
        Strategy::Weighted => {
            // Weighted sampling without replacement (Efraimidis–Spirakis): key = u^(1/w).
            let mut keyed: Vec<(f64, usize)> = (0..n)
                .map(|i| {
                    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    (u.ln() / cands[i].weight.max(1) as f64, i)
                })
                .collect();
            keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
            keyed.into_iter().map(|(_, i)| i).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn c(weight: u64, priority: i32, in_flight: u64) -> Candidate {
        Candidate {
            weight,
            priority,
            in_flight,
            ..Default::default()
        }
    }

    #[test]
    fn weighted_follows_weights() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cands = [c(1, 0, 0), c(3, 0, 0)];
        let firsts = (0..4000)
            .filter(|_| order(Strategy::Weighted, &cands, 0, &mut rng)[0] == 1)
            .count();
        assert!((2800..3200).contains(&firsts), "{firsts}");
    }

    #[test]
    fn latency_picks_the_faster_of_two_and_never_starves_the_slow_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let lat = |us: f64| Candidate {
            latency_us: us,
            ..c(1, 0, 0)
        };
        let cands = [lat(5000.0), lat(1000.0), lat(3000.0)];
        let mut firsts = [0usize; 3];
        for t in 0..3000 {
            let o = order(Strategy::Latency, &cands, t, &mut rng);
            assert_eq!(o.len(), 3);
            firsts[o[0]] += 1;
        }
        // Of the three pairs, the fastest wins two, the middle one one, the slowest none.
        assert!(
            firsts[1] > 1800 && firsts[2] > 800 && firsts[0] == 0,
            "{firsts:?}"
        );
        // An untried target (0) is measured first whenever it is drawn.
        let cands = [lat(5000.0), lat(0.0)];
        assert_eq!(order(Strategy::Latency, &cands, 0, &mut rng)[0], 1);
    }

    #[test]
    fn priority_round_robin_least_busy() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cands = [c(1, 2, 5), c(1, 0, 1), c(1, 1, 0)];
        assert_eq!(
            order(Strategy::Priority, &cands, 9, &mut rng),
            vec![1, 2, 0]
        );
        assert_eq!(
            order(Strategy::RoundRobin, &cands, 4, &mut rng),
            vec![1, 2, 0]
        );
        assert_eq!(
            order(Strategy::LeastBusy, &cands, 0, &mut rng),
            vec![2, 1, 0]
        );
    }
}
