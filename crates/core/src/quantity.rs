//! Resource quantities (`500m`, `2`, `128Mi`, `1G`, `1.5Gi`) as Kubernetes writes them.

/// CPU in millicores: `500m` -> 500, `2` -> 2000, `0.5` -> 500.
pub fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    let v: f64 = q.parse().ok()?;
    (v >= 0.0).then(|| (v * 1000.0).round() as u64)
}

/// CPU in nanocores, as the metrics API writes it: `12345n`, `250u`, `500m`, `2`.
pub fn cpu_nanos(q: &str) -> Option<u64> {
    let q = q.trim();
    let (n, mult) = match q.as_bytes().last()? {
        b'n' => (&q[..q.len() - 1], 1.0),
        b'u' => (&q[..q.len() - 1], 1e3),
        b'm' => (&q[..q.len() - 1], 1e6),
        _ => (q, 1e9),
    };
    let v: f64 = n.parse().ok()?;
    (v >= 0.0).then(|| (v * mult).round() as u64)
}

/// Bytes: binary (`Ki`, `Mi`, `Gi`, `Ti`), decimal (`k`, `M`, `G`, `T`) or plain.
pub fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    const UNITS: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            let v: f64 = n.parse().ok()?;
            return (v >= 0.0).then(|| (v * mult).round() as u64);
        }
    }
    let v: f64 = q.parse().ok()?;
    (v >= 0.0).then(|| v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.25"), Some(250));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(cpu_nanos("12345n"), Some(12345));
        assert_eq!(cpu_nanos("250m"), Some(250_000_000));
        assert_eq!(cpu_nanos("1"), Some(1_000_000_000));
        assert_eq!(cpu_nanos("n"), None);
        assert_eq!(bytes("128Mi"), Some(134217728));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(1610612736));
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("-1Mi"), None);
    }
}
