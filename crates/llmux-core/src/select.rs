//! Selection: the order in which a model pool's targets are tried. Pure: the caller passes the
//! targets' live figures and a random source; the first target that admits the request wins,
//! the rest are failover.

use crate::config::{Objective, Strategy};
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
    /// What the request is estimated to cost here, in micro-USD (`cost`, `objective`);
    /// `None`: the target has no price.
    pub cost: Option<f64>,
}

/// The order to try `cands` in. `turn` is a per-pool counter for round-robin and ties;
/// `objective` weighs the `objective` strategy.
///
/// `cost`: cheapest estimated cost first (unpriced targets last), ties by priority.
/// `objective`: each target's cost, unreliability (1 − success EWMA), latency EWMA and
/// requests in flight are each divided by the largest among the candidates (so each lies in
/// 0..=1; an unpriced target's cost counts 1), and targets go by the weighted sum
/// `cost·c + reliability·r + latency·l + fairness·f`, lowest first, ties in rotation.
pub fn order<R: Rng + ?Sized>(
    strategy: Strategy,
    cands: &[Candidate],
    turn: u64,
    rng: &mut R,
    objective: &Objective,
) -> Vec<usize> {
    let n = cands.len();
    if n == 0 {
        return Vec::new();
    }
    let start = (turn % n as u64) as usize;
    let rotated: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    match strategy {
        Strategy::RoundRobin => rotated,
        Strategy::Priority => {
            let mut v: Vec<usize> = (0..n).collect();
            v.sort_by_key(|&i| cands[i].priority);
            v
        }
        Strategy::Cost => {
            let mut v: Vec<usize> = (0..n).collect();
            let cost = |i: usize| cands[i].cost.unwrap_or(f64::INFINITY);
            v.sort_by(|&a, &b| {
                cost(a)
                    .total_cmp(&cost(b))
                    .then(cands[a].priority.cmp(&cands[b].priority))
            });
            v
        }
        Strategy::Objective => {
            let max = |f: &dyn Fn(&Candidate) -> f64| cands.iter().map(f).fold(0.0f64, f64::max);
            let cost_of = |c: &Candidate| c.cost.unwrap_or(0.0);
            let (max_cost, max_lat) = (max(&cost_of), max(&|c| c.latency_us));
            let max_busy = max(&|c| c.in_flight as f64);
            let norm = |v: f64, m: f64| if m > 0.0 { v / m } else { 0.0 };
            let value = |c: &Candidate| {
                let cost = match c.cost {
                    Some(x) => norm(x, max_cost),
                    None => 1.0,
                };
                objective.cost * cost
                    + objective.reliability * (1.0 - c.score).clamp(0.0, 1.0)
                    + objective.latency * norm(c.latency_us, max_lat)
                    + objective.fairness * norm(c.in_flight as f64, max_busy)
            };
            let mut v = rotated;
            v.sort_by(|&a, &b| value(&cands[a]).total_cmp(&value(&cands[b])));
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
            .filter(|_| {
                order(
                    Strategy::Weighted,
                    &cands,
                    0,
                    &mut rng,
                    &Objective::default(),
                )[0] == 1
            })
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
            let o = order(
                Strategy::Latency,
                &cands,
                t,
                &mut rng,
                &Objective::default(),
            );
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
        assert_eq!(
            order(
                Strategy::Latency,
                &cands,
                0,
                &mut rng,
                &Objective::default()
            )[0],
            1
        );
    }

    #[test]
    fn priority_round_robin_least_busy() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cands = [c(1, 2, 5), c(1, 0, 1), c(1, 1, 0)];
        assert_eq!(
            order(
                Strategy::Priority,
                &cands,
                9,
                &mut rng,
                &Objective::default()
            ),
            vec![1, 2, 0]
        );
        assert_eq!(
            order(
                Strategy::RoundRobin,
                &cands,
                4,
                &mut rng,
                &Objective::default()
            ),
            vec![1, 2, 0]
        );
        assert_eq!(
            order(
                Strategy::LeastBusy,
                &cands,
                0,
                &mut rng,
                &Objective::default()
            ),
            vec![2, 1, 0]
        );
    }

    #[test]
    fn cost_goes_cheapest_first_and_objective_weighs_the_figures() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let priced = |cost: Option<f64>, score: f64, latency_us: f64| Candidate {
            cost,
            score,
            latency_us,
            ..c(1, 0, 0)
        };
        let cands = [
            priced(Some(300.0), 1.0, 100.0),
            priced(None, 1.0, 100.0),
            priced(Some(100.0), 0.5, 900.0),
        ];
        let d = Objective::default();
        assert_eq!(
            order(Strategy::Cost, &cands, 0, &mut rng, &d),
            vec![2, 0, 1]
        );
        // Only cost counts: as `cost`.
        let only_cost = Objective {
            cost: 1.0,
            reliability: 0.0,
            latency: 0.0,
            fairness: 0.0,
        };
        assert_eq!(
            order(Strategy::Objective, &cands, 0, &mut rng, &only_cost),
            vec![2, 0, 1]
        );
        // Reliability and latency outweigh cost: the cheap but failing, slow target goes last.
        let careful = Objective {
            cost: 0.2,
            reliability: 0.5,
            latency: 0.3,
            fairness: 0.0,
        };
        // values: 0 → 0.2·1 + 0 + 0.3·(1/9) ≈ 0.233; 1 → 0.2·1 + 0.033 ≈ 0.233 (tie, by
        // rotation); 2 → 0.2·(1/3) + 0.25 + 0.3 ≈ 0.617.
        let o = order(Strategy::Objective, &cands, 0, &mut rng, &careful);
        assert_eq!(o[2], 2, "{o:?}");
    }
}
