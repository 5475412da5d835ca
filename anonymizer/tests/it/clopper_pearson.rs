//! One-sided Clopper–Pearson (exact binomial) bounds, shared by the DP unit
//! tests (`src/dp.rs` includes this file by path) and the DP audit here.

use statrs::function::beta::beta_reg;

/// Largest p with `P[Bin(n, p) ≥ k] ≤ alpha`: `P[bound > p] ≤ alpha`.
pub fn cp_lower(k: u64, n: u64, alpha: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    // P[X ≥ k | p] = I_p(k, n − k + 1), increasing in p.
    let (mut low, mut high) = (0.0, k as f64 / n as f64);
    for _ in 0..200 {
        let middle = (low + high) / 2.0;
        if beta_reg(k as f64, (n - k + 1) as f64, middle) <= alpha {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

/// Smallest p with `P[Bin(n, p) ≤ k] ≤ alpha`: `P[bound < p] ≤ alpha`.
pub fn cp_upper(k: u64, n: u64, alpha: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    // P[X ≤ k | p] = I_{1−p}(n − k, k + 1), decreasing in p.
    let (mut low, mut high) = (k as f64 / n as f64, 1.0);
    for _ in 0..200 {
        let middle = (low + high) / 2.0;
        if beta_reg((n - k) as f64, (k + 1) as f64, 1.0 - middle) <= alpha {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}
