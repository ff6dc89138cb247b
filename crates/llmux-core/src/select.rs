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
            // Untried targets (0) go first so every target gets measured.
            let mut v = rotated;
            v.sort_by(|&a, &b| cands[a].latency_us.total_cmp(&cands[b].latency_us));
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
