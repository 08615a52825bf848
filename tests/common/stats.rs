//! Statistics for the benchmarks' side-by-side rounds (tests/bench/). Kept
//! here, in the helpers both test binaries share, so that `cargo test`
//! (which runs the integration binary, not the benchmarks) tests them.

/// The geometric mean of ratios with its 95 % confidence interval, from
/// Student's t on their logarithms: rounds are independent samples of the
/// same ratio under the machine's noise, and ratios multiply, so their logs
/// are what averages. `None` with fewer than two.
pub fn geometric_mean_ci(ratios: &[f64]) -> Option<(f64, f64, f64)> {
    // Two-sided 95 % quantiles of Student's t for 1 to 30 degrees of freedom.
    const T95: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let n = ratios.len();
    if n < 2 {
        return None;
    }
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let mean = logs.iter().sum::<f64>() / n as f64;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = T95
        .get(n - 2)
        .copied()
        .unwrap_or_else(|| t95_large((n - 1) as f64));
    let half = t * (var / n as f64).sqrt();
    Some((mean.exp(), (mean - half).exp(), (mean + half).exp()))
}

/// The two-sided 95 % quantile of Student's t for `df` degrees of freedom
/// past the table (more than 30): the normal quantile with the first two
/// terms of its expansion in 1/df (Abramowitz and Stegun 26.7.5), within
/// 0.001 of the exact value there. The normal quantile alone (1.96) would
/// make the interval of 40 rounds 3 % too narrow.
pub fn t95_large(df: f64) -> f64 {
    let z: f64 = 1.959_964;
    z + (z.powi(3) + z) / (4.0 * df)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * df * df)
}

#[test]
fn geometric_mean_ci_of_ratios() {
    assert_eq!(geometric_mean_ci(&[0.9]), None);
    let (m, lo, hi) = geometric_mean_ci(&[0.8, 1.25]).unwrap();
    assert!((m - 1.0).abs() < 1e-12, "{m}");
    // log-sd = ln 1.25 · √2, half-width t(1) · sd / √2 = 12.706 · ln 1.25.
    assert!((hi.ln() - 12.706 * 1.25f64.ln()).abs() < 1e-9, "{hi}");
    assert!((lo * hi - 1.0).abs() < 1e-9, "{lo} {hi}");
    // Past the table: t(39) = 2.0227, t(120) = 1.9799.
    assert!((t95_large(39.0) - 2.0227).abs() < 0.001);
    assert!((t95_large(120.0) - 1.9799).abs() < 0.001);
    assert!((t95_large(31.0) - 2.0395).abs() < 0.001);
    // 40 rounds use it: log-sd = ln 1.25 · √(40/39), half-width t(39) · sd / √40.
    let forty: Vec<f64> = (0..40)
        .map(|i| if i % 2 == 0 { 0.8 } else { 1.25 })
        .collect();
    let (_, _, hi) = geometric_mean_ci(&forty).unwrap();
    let want = t95_large(39.0) * 1.25f64.ln() * (40.0f64 / 39.0).sqrt() / 40.0f64.sqrt();
    assert!((hi.ln() - want).abs() < 1e-9, "{hi}");
    let (m, lo, hi) = geometric_mean_ci(&[0.9; 5]).unwrap();
    assert!((m - 0.9).abs() < 1e-12 && (lo - 0.9).abs() < 1e-12 && (hi - 0.9).abs() < 1e-12);
}
