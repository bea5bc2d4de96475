//! The pipeline most scenarios fault: a broker with a publisher, the gateway's MQTT
//! connection through a proxy that records its PUBACKs, optionally MongoDB; and the end
//! checks they share: everything acknowledged is in the journal, and MongoDB holds exactly
//! the journal.

use crate::broker::Broker;
use crate::check::{self, Seen};
use crate::gateway::{num, Gateway, Spec};
use crate::load::{Load, Published};
use crate::mongo::Mongo;
use crate::proxy::{Acks, Proxy};
use crate::report::Outcome;
use crate::rig::{until, Ctx};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Broker, PUBACK-recording proxy, and MongoDB (when asked for).
pub struct Stack {
    /// The broker.
    pub broker: Broker,
    /// The gateway's PUBACKs, by message.
    pub acks: Arc<Acks>,
    proxy: Proxy,
    /// MongoDB.
    pub mongo: Option<Mongo>,
    /// The scenario's database.
    pub db: String,
}

impl Stack {
    /// Start the broker, the proxy and (with `mongo`) a MongoDB server.
    pub fn start(ctx: &Ctx, tag: &str, mongo: bool) -> anyhow::Result<Stack> {
        let broker = Broker::start(ctx)?;
        let acks = Arc::new(Acks::default());
        let proxy = Proxy::start(ctx.rt.handle(), &broker.address(), Some(acks.inspector()))?;
        let mongo = if mongo {
            Some(Mongo::start(ctx)?)
        } else {
            None
        };
        Ok(Stack {
            broker,
            acks,
            proxy,
            mongo,
            db: super::database(tag),
        })
    }

    /// A gateway config: MQTT through the proxy as client `id`, MongoDB if there is one.
    pub fn spec(&self, id: &str, journal: &Path) -> Spec {
        let mut s = Spec::new(id, journal);
        s.mqtt = Some((
            format!("mqtt://127.0.0.1:{}", self.proxy.port()),
            id.to_string(),
        ));
        s.mongo = self.mongo.as_ref().map(|m| (m.uri(), self.db.clone()));
        s
    }

    /// Start `gw` and wait until its MQTT source has subscribed (so the broker keeps its
    /// session from then on).
    pub fn start_subscribed(&self, ctx: &Ctx, gw: &mut Gateway) -> anyhow::Result<()> {
        gw.start(ctx)?;
        gw.status_until(
            Duration::from_secs(30),
            "the MQTT source to subscribe",
            |s| s["sources"]["broker"]["state"] == "running",
        )?;
        Ok(())
    }

    /// Start publishing `rate` messages/s.
    pub fn load(&self, rate: u64) -> anyhow::Result<Load> {
        Load::start(self.broker.port, rate, 150)
    }

    /// After the load stopped: wait until the gateway has acknowledged every message the
    /// broker acknowledged to the publisher, then until MongoDB (if any) has every
    /// journaled frame.
    pub fn drain(
        &self,
        gw: &Gateway,
        published: &Published,
        limit: Duration,
    ) -> anyhow::Result<()> {
        until(limit, "the gateway to acknowledge every message", || {
            let have = self.acks.acked();
            Ok(published
                .acked_ns()
                .all(|n| have.contains(&n))
                .then_some(()))
        })?;
        if self.mongo.is_some() {
            gw.status_until(limit, "MongoDB to hold every journaled frame", |s| {
                let durable = num(s, "journal/durable_seq");
                num(s, "sinks/mongo/acked_seq") >= durable
                    && num(s, "journal/last_seq") == durable
                    && num(s, "sinks/mongo/lag") == 0
            })?;
        }
        Ok(())
    }
}

/// The end checks: every message the broker acknowledged to the publisher and every one
/// the gateway acknowledged to the broker is in the journal; duplicates and (with
/// `ordered`) per-device order; and MongoDB holds exactly the journal's frames, each with
/// its own content. Returns the frames read.
pub fn verify(
    stack: &Stack,
    gateway: &str,
    journal: &Path,
    published: &Published,
    ordered: bool,
    out: &mut Outcome,
) -> anyhow::Result<Vec<Seen>> {
    let (frames, _) = check::read_journal(journal, 1)?;
    let copies = check::copies(&frames);
    let fg_acked = stack.acks.acked();
    let (lost, first) = check::missing(published.acked_ns(), &copies);
    let (fg_lost, fg_first) = check::missing(fg_acked.iter().copied(), &copies);
    let dups = check::duplicates(&copies);
    out.figure("published", published.published);
    out.figure("acked", published.acked_count());
    out.figure("gateway_acked", fg_acked.len());
    out.figure("journaled", frames.len());
    let lost_any = published
        .acked_ns()
        .chain(fg_acked.iter().copied())
        .filter(|n| !copies.contains_key(n))
        .collect::<std::collections::HashSet<u64>>()
        .len();
    out.figure("lost", lost_any);
    out.figure("duplicates", dups);
    out.check(published.in_order, || {
        "the broker acknowledged out of order: the acked ranges are not exact".into()
    });
    out.check(lost == 0, || {
        format!("{lost} messages the broker acknowledged are not in the journal, e.g. {first:?}")
    });
    out.check(fg_lost == 0, || {
        format!(
            "{fg_lost} messages the gateway acknowledged are not in the journal, e.g. {fg_first:?}"
        )
    });
    if ordered {
        let (inversions, first) = check::order_inversions(&frames);
        out.figure("order_inversions", inversions);
        out.check(inversions == 0, || {
            format!("per-device order broken: {first:?}")
        });
    }
    if let Some(m) = &stack.mongo {
        let docs = m.docs(&stack.db, gateway)?;
        let sync = check::compare(&frames, &docs);
        out.figure("mongo_docs", docs.len());
        out.figure("mongo_missing", sync.missing);
        out.figure("mongo_extra", sync.extra);
        out.figure("mongo_mismatched", sync.mismatched);
        out.check(sync.exact(), || {
            format!(
                "MongoDB does not hold exactly the journal: {:?}",
                sync.first
            )
        });
    }
    Ok(frames)
}

/// The last check of a MongoDB scenario: no `_id` collision reported (the most any run
/// reported), then drop the scenario's database.
pub fn no_collisions(stack: &Stack, collisions: u64, out: &mut Outcome) {
    out.figure("collisions", collisions);
    out.check(collisions == 0, || {
        format!("{collisions} _id collisions reported")
    });
    if let Some(m) = &stack.mongo {
        m.drop_db(&stack.db);
    }
}
