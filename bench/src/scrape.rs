//! fieldgate's relay latency histogram, read from its `/metrics` (one request around each
//! bench phase), and its quantiles.

/// fieldgate's relay latency histogram from its `/metrics`: cumulative count per bound (s).
pub async fn relay_histogram(port: u16, key: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .header("x-api-key", key)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let prefix = "fieldgate_relay_latency_seconds_bucket{le=\"";
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (le, n) = l.strip_prefix(prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect();
    anyhow::ensure!(
        !buckets.is_empty(),
        "no relay latency histogram in /metrics"
    );
    Ok(buckets)
}

/// The `q` quantile (ms) of the observations between two scrapes of a cumulative
/// histogram, interpolated inside its bucket (as Prometheus' `histogram_quantile`).
pub fn quantile_ms(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let cum: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|(a, b)| (a.0, a.1.saturating_sub(b.1)))
        .collect();
    let rank = q * cum.last().map_or(0, |b| b.1) as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for (le, n) in cum {
        if n as f64 >= rank && n > below {
            if le.is_infinite() {
                return lo * 1e3;
            }
            return (lo + (le - lo) * (rank - below as f64) / (n - below) as f64) * 1e3;
        }
        (lo, below) = (le, n);
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let before = [(0.001, 10), (0.002, 10), (0.005, 10), (f64::INFINITY, 10)];
        // 100 new observations: 50 ≤ 1 ms, 40 in (1, 2] ms, 9 in (2, 5] ms, 1 past 5 ms.
        let after = [
            (0.001, 60),
            (0.002, 100),
            (0.005, 109),
            (f64::INFINITY, 110),
        ];
        let q = |p| super::quantile_ms(&before, &after, p);
        assert!((q(0.5) - 1.0).abs() < 1e-9, "{}", q(0.5));
        assert!((q(0.7) - 1.5).abs() < 1e-9, "{}", q(0.7));
        assert!((q(0.99) - 5.0).abs() < 1e-9, "{}", q(0.99));
        assert!(
            super::quantile_ms(&before, &before, 0.99).is_nan(),
            "nothing new"
        );
    }
}
