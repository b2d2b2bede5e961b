//! Query parameters as Kubernetes reads them.

/// A boolean query parameter's value, as Kubernetes converts one (`watch`, `follow`,
/// `stdout`, ...): `0`, `f` and `false` in any case are false; any other value, the empty
/// one included, is true. Every form Go's `strconv.ParseBool` takes (`1`, `t`, `T`, `TRUE`,
/// `true`, `True`, and their false twins) reads as it does; the Python client sends
/// `True`.
pub fn flag(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("f") || value.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::flag;

    #[test]
    fn booleans_read_as_go_and_kubernetes_read_them() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(flag(t), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!flag(f), "{f}");
        }
        // Kubernetes' conversion takes what ParseBool would refuse as true.
        assert!(flag(""));
        assert!(flag("yes"));
    }
}
