//! What the correlator hands its verdict builders: a response judged (`Judged`, for `emit`) and
//! a response whose stream ended (`Ended`, for `ended`), one value each instead of a row of
//! arguments.
use crate::judge::http_head::Body;
use crate::judge::response::{Response, StreamEnd};
use crate::judge::verdict::{End, Kind, ResponseFacts};

/// One verdict decided about a response, before `emit` adds the connection's evidence (and
/// turns a shortfall on a stream seen only in part into `observer_loss`).
pub(super) struct Judged {
    /// The response judged.
    pub(super) resp: Response,
    /// What it became.
    pub(super) kind: Kind,
    /// How that was decided (`evidence.end`).
    pub(super) how: End,
    /// Bytes of it handed over (`sent_bytes`; on the client side, read).
    pub(super) sent: u64,
    /// Bytes of it the peer gets (`delivered_bytes`).
    pub(super) delivered: u64,
    /// Kernel monotonic time of the deciding event (`Verdict::ts_ns`).
    pub(super) ts_ns: u64,
}

impl Judged {
    /// A response whose `n` promised bytes were all handed over and reach the peer: `complete`,
    /// decided at `ts_ns`.
    pub(super) fn complete(resp: Response, n: u64, ts_ns: u64) -> Judged {
        Judged {
            resp,
            kind: Kind::Complete,
            how: End::Reached,
            sent: n,
            delivered: n,
            ts_ns,
        }
    }

    /// The verdict's facts about the response: what its head promised, and the bytes handed
    /// over and delivered.
    pub(super) fn facts(&self) -> ResponseFacts {
        let resp = &self.resp;
        ResponseFacts {
            status: resp.head.status,
            content_length: match resp.head.body {
                Body::Length(n) => Some(n),
                _ => None,
            },
            chunked: resp.head.body == Body::Chunked,
            expected_bytes: resp.end().map(|e| e - resp.start),
            sent_bytes: self.sent,
            delivered_bytes: self.delivered,
        }
    }
}

/// A response not judged yet when its connection's stream ended: what `ended` judges.
pub(super) struct Ended {
    /// The response.
    pub(super) resp: Response,
    /// When every promised byte of it had been handed over (kernel monotonic time), if they
    /// had: a response settling, its delivery not settled yet.
    pub(super) reached_ns: Option<u64>,
    /// How the stream ended.
    pub(super) ending: StreamEnd,
    /// Kernel monotonic time of the event that ended it.
    pub(super) ts_ns: u64,
}
