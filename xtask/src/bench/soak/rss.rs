//! The agent's memory over the soak: samples, and the "RSS flat" verdict.
use std::time::Duration;

/// One RSS sample, with the size of the agent's process tree then: RSS follows the number of
/// processes on the machine (other sessions' included), which a soak does not control.
pub struct RssSample {
    pub at: Duration,
    pub bytes: u64,
    /// The anonymous part of `bytes`.
    pub anon: u64,
    pub tree: f64,
}

pub struct RssVerdict {
    pub from: f64,
    pub to: f64,
    pub growth: f64,
    /// Growth of the anonymous part over the same samples.
    pub anon_growth: f64,
    pub slope_per_minute: f64,
    pub max: f64,
    /// Processes in the agent's tree at the first and last sample compared.
    pub tree_from: f64,
    pub tree_to: f64,
}

/// Growth from the first sample at or after `warm_up` to the last, and the least-squares
/// slope over those samples.
pub fn rss_verdict(samples: &[RssSample], warm_up: Duration) -> RssVerdict {
    let kept: Vec<&RssSample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    let after: Vec<(f64, f64)> = kept
        .iter()
        .map(|s| (s.at.as_secs_f64() / 60.0, s.bytes as f64))
        .collect();
    let (from, to, anon_growth, tree_from, tree_to) = match (kept.first(), kept.last()) {
        (Some(f), Some(l)) => (
            f.bytes as f64,
            l.bytes as f64,
            l.anon as f64 - f.anon as f64,
            f.tree,
            l.tree,
        ),
        _ => (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    let n = after.len() as f64;
    let (mx, my) = (
        after.iter().map(|p| p.0).sum::<f64>() / n,
        after.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = after.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = after.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    RssVerdict {
        from,
        to,
        growth: to - from,
        anon_growth,
        slope_per_minute: sxy / sxx,
        max: samples.iter().map(|s| s.bytes as f64).fold(0.0, f64::max),
        tree_from,
        tree_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_growth_after_warm_up() {
        let mib = 1048576;
        let samples: Vec<RssSample> = (0..=6)
            .map(|i| RssSample {
                at: Duration::from_secs(i * 60),
                bytes: [40, 50, 50, 51, 50, 51, 51][i as usize] * mib,
                anon: 10 * mib + i * mib,
                tree: 100.0 + i as f64,
            })
            .collect();
        let v = rss_verdict(&samples, Duration::from_secs(120));
        assert_eq!((v.from, v.to), (50.0 * mib as f64, 51.0 * mib as f64));
        assert_eq!(v.growth, mib as f64);
        assert_eq!(v.max, 51.0 * mib as f64);
        assert_eq!((v.tree_from, v.tree_to), (102.0, 106.0));
        assert_eq!(v.anon_growth, 4.0 * mib as f64);
        assert!(v.slope_per_minute > 0.0 && v.slope_per_minute < mib as f64);
    }
}
