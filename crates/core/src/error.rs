//! Errors shown to people. Berth's error types say what failed in their message and keep the
//! cause as their `source`, never both (a chain walked by `anyhow`'s `{:#}` would print the
//! cause twice). Where no one walks the chain for us (an Event, a status message, a log
//! field), [`Chain`] prints the error and each cause.

use std::fmt;

/// An error and its causes, joined by ": ".
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the config failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Chain(&e).to_string(),
            "reading the config failed: disk on fire"
        );
    }
}
