//! How the peer ended its side of a connection, as the verdict's evidence names it.

/// One way the peer ended its side, as the events showed it; named in `evidence.peer_ended`
/// (`docs/output.md`) by `as_str`.
///
/// The variants are declared in the order of their names: where two ends were seen at the same
/// stream offset, the one that sorts first is the one reported (as when they were strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerEnd {
    /// A Unix stream's server read end of stream: the peer shut down or closed its socket.
    Eof,
    /// Its FIN arrived: the TCP connection went to CLOSE_WAIT.
    Fin,
    /// Sends failed with EPIPE or ECONNRESET: the peer was gone, however it went.
    Gone,
    /// Its reset arrived (TCP).
    Reset,
}

impl PeerEnd {
    /// Its name in the output: `eof`, `fin`, `gone` or `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerEnd::Eof => "eof",
            PeerEnd::Fin => "fin",
            PeerEnd::Gone => "gone",
            PeerEnd::Reset => "reset",
        }
    }
}

/// Serialised as its name (`as_str`), the one source of it.
impl serde::Serialize for PeerEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in the JSON output are those `docs/output.md` lists, and the variants sort
    /// as their names do (which decides ties, as when the ends were strings).
    #[test]
    fn names_and_order_as_when_they_were_strings() {
        let all = [PeerEnd::Eof, PeerEnd::Fin, PeerEnd::Gone, PeerEnd::Reset];
        let json: Vec<String> = all
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        assert_eq!(json, [r#""eof""#, r#""fin""#, r#""gone""#, r#""reset""#]);
        for pair in all.windows(2) {
            assert!(pair[0] < pair[1] && pair[0].as_str() < pair[1].as_str());
        }
    }
}
