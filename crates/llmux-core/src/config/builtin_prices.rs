//! List prices of well-known models (USD per 1M tokens), used for a target whose model has
//! no `price` and no `[prices]` entry. They are the vendors' public list prices when this
//! table was written and will go stale: `[prices."MODEL"]` overrides any of them.

use super::Price;

/// `(model name prefix, input, output, cache_read, cache_write)`. A model matches the longest
/// prefix that ends at a `-` or the end of its name (`gpt-4o-mini-2024-07-18` →
/// `gpt-4o-mini`); a `vendor/` in front (OpenRouter) is ignored.
const TABLE: &[(&str, f64, f64, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00, 1.25, 2.50),
    ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
    ("gpt-4.1", 2.00, 8.00, 0.50, 2.00),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10, 0.40),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025, 0.10),
    ("gpt-4-turbo", 10.00, 30.00, 10.00, 10.00),
    ("gpt-3.5-turbo", 0.50, 1.50, 0.50, 0.50),
    ("gpt-5", 1.25, 10.00, 0.125, 1.25),
    ("gpt-5-mini", 0.25, 2.00, 0.025, 0.25),
    ("gpt-5-nano", 0.05, 0.40, 0.005, 0.05),
    ("gpt-5-pro", 15.00, 120.00, 15.00, 15.00),
    ("o1", 15.00, 60.00, 7.50, 15.00),
    ("o1-mini", 1.10, 4.40, 0.55, 1.10),
    ("o1-pro", 150.00, 600.00, 150.00, 150.00),
    ("o3", 2.00, 8.00, 0.50, 2.00),
    ("o3-mini", 1.10, 4.40, 0.55, 1.10),
    ("o3-pro", 20.00, 80.00, 20.00, 20.00),
    ("o3-deep-research", 10.00, 40.00, 2.50, 10.00),
    ("o4-mini", 1.10, 4.40, 0.275, 1.10),
    ("o4-mini-deep-research", 2.00, 8.00, 0.50, 2.00),
    ("text-embedding-3-small", 0.02, 0.0, 0.02, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13, 0.13),
    ("claude-3-haiku", 0.25, 1.25, 0.03, 0.30),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08, 1.00),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30, 3.75),
    ("claude-sonnet-4", 3.00, 15.00, 0.30, 3.75),
    ("claude-sonnet-4-5", 3.00, 15.00, 0.30, 3.75),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10, 1.25),
    ("claude-opus-4", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4-1", 15.00, 75.00, 1.50, 18.75),
    ("claude-opus-4-5", 5.00, 25.00, 0.50, 6.25),
    ("claude-3-opus", 15.00, 75.00, 1.50, 18.75),
];

/// The built-in list price of `model`, if the table knows it.
pub fn builtin_price(model: &str) -> Option<Price> {
    let name = model.rsplit('/').next().unwrap_or(model);
    TABLE
        .iter()
        .filter(|(prefix, ..)| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        })
        .max_by_key(|(prefix, ..)| prefix.len())
        .map(|&(_, input, output, cache_read, cache_write)| Price {
            input,
            output,
            cache_read,
            cache_write,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_at_a_dash_wins() {
        assert_eq!(builtin_price("gpt-4o-mini").map(|p| p.input), Some(0.15));
        assert_eq!(
            builtin_price("gpt-4o-mini-2024-07-18").map(|p| p.output),
            Some(0.60)
        );
        assert_eq!(builtin_price("gpt-4o").map(|p| p.input), Some(2.50));
        assert_eq!(builtin_price("openai/gpt-4o").map(|p| p.input), Some(2.50));
        assert_eq!(
            builtin_price("claude-sonnet-4-20250514").map(|p| p.cache_write),
            Some(3.75)
        );
        // A longer name of the table is its own row, not its prefix's: `o3-pro` is not `o3`.
        assert_eq!(builtin_price("o3-pro").map(|p| p.input), Some(20.00));
        assert_eq!(
            builtin_price("o1-pro-2025-03-19").map(|p| p.output),
            Some(600.00)
        );
        assert_eq!(
            builtin_price("claude-opus-4-5-20251101").map(|p| p.input),
            Some(5.00)
        );
        // `o1` must not price `o1x`, and unknown models have none.
        assert_eq!(builtin_price("o1x"), None);
        assert_eq!(builtin_price("my-local-llama"), None);
    }

    #[test]
    fn every_row_prices_its_own_name_and_its_dated_snapshots() {
        for &(name, input, output, cache_read, cache_write) in TABLE {
            let want = Some(Price {
                input,
                output,
                cache_read,
                cache_write,
            });
            assert_eq!(builtin_price(name), want, "{name}");
            assert_eq!(builtin_price(&format!("{name}-2025-01-01")), want, "{name}");
            assert_eq!(builtin_price(&format!("vendor/{name}")), want, "{name}");
        }
    }
}
