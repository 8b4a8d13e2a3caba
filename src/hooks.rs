//! Extension points for programs that embed wsgate (docs/embedding.md).
//!
//! A [`PublishHook`] sees every publish before it is encoded and fanned out (from clients, from the
//! admin API and from the host program) and may accept it, reject it, or replace its `data`. It runs on
//! the core that accepted the publish, inline, so it must be quick and must not block.

use serde_json::value::RawValue;

/// Where a publish came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishSource {
    /// A client session on the pub/sub route.
    Client,
    /// `POST /api/publish` on the admin listener.
    Api,
    /// `Gateway::publish` from the embedding program.
    Host,
}

/// A publish about to be fanned out.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    pub topic: &'a str,
    /// The publisher's JSON, exactly as sent.
    pub data: &'a RawValue,
    /// The session's JWT `sub`, for authenticated client sessions.
    pub user: Option<&'a str>,
    pub source: PublishSource,
}

/// What to do with a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishDecision {
    /// Fan it out unchanged.
    Accept,
    /// Drop it; a client gets `{"type":"error","code":<code>,"message":<message>}`, the admin API a 403.
    Reject { code: String, message: String },
    /// Fan out this JSON text as `data` instead (it must be valid JSON, or the publish is rejected).
    Replace(String),
}

/// Called for every publish before fan-out; implemented for closures.
pub trait PublishHook: Send + Sync + 'static {
    fn on_publish(&self, publish: &PublishRequest<'_>) -> PublishDecision;
}

impl<F> PublishHook for F
where
    F: Fn(&PublishRequest<'_>) -> PublishDecision + Send + Sync + 'static,
{
    fn on_publish(&self, publish: &PublishRequest<'_>) -> PublishDecision {
        self(publish)
    }
}

/// The outcome of running the hook: the `data` to send, or a rejection.
pub(crate) enum Verdict {
    Send(Option<Box<RawValue>>),
    Reject { code: String, message: String },
}

/// Run `hook` (if any) over a publish.
pub(crate) fn apply(hook: Option<&dyn PublishHook>, req: &PublishRequest<'_>) -> Verdict {
    let Some(hook) = hook else {
        return Verdict::Send(None);
    };
    match hook.on_publish(req) {
        PublishDecision::Accept => Verdict::Send(None),
        PublishDecision::Reject { code, message } => Verdict::Reject { code, message },
        PublishDecision::Replace(json) => match RawValue::from_string(json) {
            Ok(raw) => Verdict::Send(Some(raw)),
            Err(e) => Verdict::Reject {
                code: "internal_error".into(),
                message: format!("publish hook produced invalid JSON: {e}"),
            },
        },
    }
}
