//! The MQTT source task: one task drives rumqttc's `EventLoop::poll`, turns publishes into
//! frames and appends them (a burst at a time, bounded in count and bytes), and hands the
//! PUBACKs it owes to the ack task. Disconnects are a state (`waiting`), retried with
//! exponential backoff, logged once per outage and once on recovery. A full journal write
//! queue is a state too (`paused`, see `pause`).

use super::ack::{self, AckBatch, Generation};
use super::topic::{decode_payload, Reject, TopicPattern};
use super::{parse_url, tls, MqttConfig};
use super::{pause, sys};
use crate::frame::Frame;
use crate::journal::{Journal, JournalError};
use crate::source::{SourceCtx, SourceSlot};
use rumqttc::mqttbytes::Error as PacketError;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, PubAck, Publish,
    QoS, Request, StateError, Subscribe, SubscribeFilter, SubscribeReasonCode, Transport,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// First reconnect delay; doubles per failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest reconnect delay: a broker back after any outage is used again within about
/// 3 s (the promise is under 5 s, docs/reliability.md `ingest-faults`).
const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Capacity of rumqttc's request channel (our PUBACKs and SUBSCRIBEs).
const REQUEST_CAP: usize = 4096;
/// Most publishes appended together.
const BATCH_MAX: usize = 512;
/// Most payload bytes appended together (a parsed JSON payload can be many times its
/// text: a batch is held as `Value` trees until it is appended).
const BATCH_BYTES: usize = 256 << 10;
/// Bytes of MQTT framing allowed on top of `max_frame` (topic, header).
const PACKET_OVERHEAD: u64 = 64 << 10;
/// At most one log line per reject reason per this interval.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for owed acks to be written.
const DRAIN: Duration = Duration::from_secs(3);

/// Run one MQTT source until shutdown.
pub async fn run(cfg: MqttConfig, ctx: SourceCtx) {
    let span = tracing::info_span!("mqtt", source = %cfg.name, url = %cfg.url);
    async move {
        match Source::new(cfg, &ctx) {
            Ok(source) => source.run(ctx).await,
            Err(e) => {
                tracing::error!(error = %e, "MQTT source cannot start");
                ctx.slot.set_state("stopped", Some(e));
            }
        }
    }
    .instrument(span)
    .await
}

/// The parsed topic patterns of a config's subscriptions.
pub(crate) fn patterns(cfg: &MqttConfig) -> Result<Vec<TopicPattern>, String> {
    cfg.subscriptions
        .iter()
        .map(|s| TopicPattern::parse(&s.topic).map_err(|e| format!("{}: {e}", s.topic)))
        .collect()
}

/// The connection options a config asks for: persistent session under its client id,
/// manual acks, keep-alive, packet limits, credentials, TLS.
pub(crate) fn options(cfg: &MqttConfig) -> Result<MqttOptions, String> {
    let addr = parse_url(&cfg.url)?;
    if cfg.client_id.is_empty() {
        return Err("client_id must not be empty".into());
    }
    let mut o = MqttOptions::new(cfg.client_id.clone(), addr.host.clone(), addr.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.0.max(1)));
    let incoming = cfg
        .max_packet
        .0
        .max(cfg.max_frame.0.saturating_add(PACKET_OVERHEAD));
    o.set_max_packet_size(usize::try_from(incoming).unwrap_or(usize::MAX), 64 << 10);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if addr.tls {
        let tls = tls::client_config(cfg.ca_file.as_deref()).map_err(|e| e.to_string())?;
        o.set_transport(Transport::tls_with_config(tls));
    }
    Ok(o)
}

/// The SUBSCRIBE filters for `patterns` (from [`patterns`]) at each subscription's QoS.
pub(crate) fn filters(cfg: &MqttConfig, patterns: &[TopicPattern]) -> Vec<SubscribeFilter> {
    cfg.subscriptions
        .iter()
        .zip(patterns)
        .map(|(s, p)| {
            let qos = if s.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            SubscribeFilter::new(p.filter(), qos)
        })
        .collect()
}

/// Make `command`s for the frame's device publish to its command topic on this broker.
fn route_commands(
    pattern: &str,
    f: &Frame,
    client: &AsyncClient,
    commands: &crate::relay::hub::CommandRoutes,
) {
    let topic = pattern
        .replace("{device}", &f.device)
        .replace("{vehicle}", f.vehicle.as_deref().unwrap_or("_"))
        .replace("{kind}", "cmd");
    let (tx, mut rx) = mpsc::channel::<serde_json::Value>(16);
    commands.register(&f.device, tx);
    let client = client.clone();
    let device = f.device.clone();
    tokio::spawn(
        async move {
            while let Some(cmd) = rx.recv().await {
                let body = match cmd {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                match client.publish(&topic, QoS::AtLeastOnce, false, body).await {
                    Ok(()) => tracing::info!(%device, %topic, "command published"),
                    Err(e) => tracing::warn!(%device, error = %e, "command not published"),
                }
            }
        }
        .in_current_span(),
    );
}

/// Rate-limited log state for one reject reason.
#[derive(Default)]
struct RejectLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// Publishes received since the last append.
#[derive(Default)]
struct Pending {
    frames: Vec<Frame>,
    /// QoS1 packet ids, accepted or rejected, in arrival order.
    pkids: Vec<u16>,
    /// Payload bytes of `frames`.
    bytes: usize,
}

impl Pending {
    /// Whether the batch should be appended now.
    fn full(&self) -> bool {
        self.frames.len() >= BATCH_MAX || self.bytes >= BATCH_BYTES
    }
}

struct Source {
    cfg: MqttConfig,
    patterns: Vec<TopicPattern>,
    options: MqttOptions,
    reject_logs: BTreeMap<Reject, RejectLog>,
}

impl Source {
    fn new(cfg: MqttConfig, ctx: &SourceCtx) -> Result<Source, String> {
        let patterns = patterns(&cfg)?;
        let o = options(&cfg)?;
        tracing::info!(
            gateway = %ctx.gateway,
            client_id = %cfg.client_id,
            filters = ?patterns.iter().map(TopicPattern::filter).collect::<Vec<_>>(),
            "MQTT source starting"
        );
        Ok(Source {
            cfg,
            patterns,
            options: o,
            reject_logs: BTreeMap::new(),
        })
    }

    /// The SUBSCRIBE for every configured pattern, then (QoS0) the broker's counters.
    fn subscribe_request(&self) -> Request {
        let stats = sys::filters()
            .filter(|_| self.cfg.broker_stats)
            .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce));
        let filters = filters(&self.cfg, &self.patterns).into_iter();
        Request::Subscribe(Subscribe::new_many(filters.chain(stats)))
    }

    async fn run(mut self, ctx: SourceCtx) {
        let SourceCtx {
            gateway,
            journal,
            slot,
            shutdown,
            commands,
        } = ctx;
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CAP);
        // Acks and commands are tiny packets: without TCP_NODELAY, Nagle holds a PUBACK back
        // until the broker ACKs the previous segment, which stalls its in-flight window.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let mut routed = std::collections::HashSet::new();
        let generation = Generation::default();
        // Unbounded on purpose: the ack task needs this loop to keep polling (the event loop
        // is what drains rumqttc's request channel), so this loop must never wait for it.
        // What is queued is bounded anyway: one 2-byte packet id per publish the broker has
        // in flight to us, at most 65,535 by the protocol.
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<AckBatch>();
        let ack_stop = CancellationToken::new();
        let mut ack_task = tokio::spawn(
            ack::run(
                ack_rx,
                journal.clone(),
                client.clone(),
                generation.clone(),
                ack_stop.clone(),
            )
            .in_current_span(),
        );
        let mut current_gen = *generation.lock();
        let commit_at = usize::try_from(self.cfg.broker_inflight.0).unwrap_or(usize::MAX);
        let mut backoff = BACKOFF_MIN;
        let mut outage: Option<Instant> = None;
        let mut subscribed = false;
        let mut pending = Pending::default();
        // `poll` is not cancel-safe (a PUBACK taken from the request channel can be lost
        // mid-write), so no timer races it; the loop beats as it turns, and it turns at
        // least once per keep-alive (PINGREQ/PINGRESP) or backoff.
        let keep_alive = self.options.keep_alive();
        slot.set_wedged_after(crate::source::SOURCE_WEDGED_AFTER.max(keep_alive * 2 + BACKOFF_MAX));
        let mut last_beat = Instant::now();
        loop {
            if last_beat.elapsed() >= crate::source::BEAT_EVERY {
                last_beat = Instant::now();
                slot.beat();
            }
            let ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_publish(p, &gateway, &slot, &mut pending);
                    if let (Some(pattern), Some(f)) =
                        (&self.cfg.command_topic, pending.frames.last())
                    {
                        if routed.insert(f.device.clone()) {
                            route_commands(pattern, f, &client, &commands);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    backoff = BACKOFF_MIN;
                    match outage.take() {
                        Some(t0) => tracing::info!(
                            down_ms = t0.elapsed().as_millis() as u64,
                            session_present = c.session_present,
                            "MQTT broker connection restored"
                        ),
                        None => tracing::info!(
                            session_present = c.session_present,
                            "MQTT broker connected"
                        ),
                    }
                    // Subscribe when the broker has no session for us, and once per run
                    // in any case: the config may have changed since the session was made.
                    if !c.session_present || !subscribed {
                        eventloop.pending.push_back(self.subscribe_request());
                        subscribed = true;
                    }
                    slot.set_state("running", None);
                }
                Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                    write_acks_after(&mut eventloop, &generation, pkid).await;
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let (ours, stats) = s
                        .return_codes
                        .split_at(self.patterns.len().min(s.return_codes.len()));
                    if ours.contains(&SubscribeReasonCode::Failure) {
                        tracing::error!(codes = ?s.return_codes, "MQTT broker refused a subscription");
                        slot.set_state("running", Some("broker refused a subscription".into()));
                    }
                    if stats.contains(&SubscribeReasonCode::Failure) {
                        tracing::info!("the MQTT broker does not share its $SYS counters with us");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Journal what this connection delivered (its acks will be stale and
                    // dropped: the broker redelivers), then start a new generation.
                    match append(
                        &journal,
                        &slot,
                        &ack_tx,
                        &generation,
                        current_gen,
                        commit_at,
                        &mut pending,
                    ) {
                        Ok(()) => {}
                        // Never acked: the broker sends it all again.
                        Err(JournalError::Full { .. }) => pending = Pending::default(),
                        Err(je) => {
                            tracing::warn!(error = %je, "journal closed; MQTT source stopping");
                            break;
                        }
                    }
                    current_gen = generation.bump(|| reset(&mut eventloop));
                    self.on_disconnect(&e, &slot, &mut outage);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            if eventloop.state.events.is_empty() || pending.full() {
                let appended = loop {
                    match append(
                        &journal,
                        &slot,
                        &ack_tx,
                        &generation,
                        current_gen,
                        commit_at,
                        &mut pending,
                    ) {
                        // Hold the batch and stop reading until the journal can take it.
                        Err(JournalError::Full { needed, frames, .. }) => {
                            if let Err(e) = pause::until_room(
                                &mut eventloop,
                                &journal,
                                (frames, needed),
                                &shutdown,
                                &slot,
                            )
                            .await
                            {
                                break Err(e);
                            }
                        }
                        other => break other,
                    }
                };
                match appended {
                    Ok(()) => {}
                    Err(JournalError::Closed) => break,
                    Err(e) => {
                        // Not journaled, not acked: drop the connection so the broker
                        // redelivers once we reconnect.
                        tracing::error!(error = %e, "journal append failed; reconnecting to get the messages again");
                        current_gen = generation.bump(|| reset(&mut eventloop));
                        slot.set_state("waiting", Some(format!("journal append failed: {e}")));
                        outage.get_or_insert_with(Instant::now);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
        // Shutdown: what was received but not appended is left unacked (the broker
        // redelivers it); acks owed for journaled frames are written if that is quick.
        drop(ack_tx);
        let deadline = tokio::time::sleep(DRAIN);
        tokio::pin!(deadline);
        let mut ack_done = false;
        let mut totals = None;
        while !ack_done {
            tokio::select! {
                t = &mut ack_task => {
                    totals = t.ok();
                    ack_done = true;
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                        write_acks_after(&mut eventloop, &generation, pkid).await;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                _ = &mut deadline => break,
            }
        }
        ack_stop.cancel();
        if ack_done && client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    // The last acks' heads are ahead of the DISCONNECT in rumqttc's queue.
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                            write_acks_after(&mut eventloop, &generation, pkid).await;
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        if !ack_done {
            totals = ack_task.await.ok();
        }
        if let Some(totals) = totals {
            tracing::info!(
                acked = totals.acked,
                stale = totals.stale,
                "MQTT source stopped"
            );
        }
        slot.set_state("stopped", None);
    }

    /// Log (once per outage) and record a failed poll.
    fn on_disconnect(&self, e: &ConnectionError, slot: &SourceSlot, outage: &mut Option<Instant>) {
        let msg = e.to_string();
        if let ConnectionError::MqttState(StateError::Deserialization(
            PacketError::PayloadSizeLimitExceeded(n),
        )) = e
        {
            tracing::error!(
                packet_bytes = n,
                max_packet = self.options.max_packet_size(),
                "the broker sent a packet larger than max_packet; raise max_packet or set the broker's message_size_limit below it"
            );
        }
        if outage.is_none() {
            *outage = Some(Instant::now());
            tracing::warn!(error = %msg, "MQTT broker unreachable; retrying with backoff");
        }
        slot.set_state("waiting", Some(msg));
    }

    /// Turn one publish into a frame (or a counted rejection) and note the ack it is owed.
    fn on_publish(&mut self, p: Publish, gateway: &str, slot: &SourceSlot, pending: &mut Pending) {
        if p.qos != QoS::AtMostOnce {
            pending.pkids.push(p.pkid);
        }
        if self.cfg.broker_stats && sys::take(&p.topic, &p.payload, slot) {
            return;
        }
        let Some(ids) = self
            .patterns
            .iter()
            .find_map(|pat| pat.match_topic(&p.topic))
        else {
            self.reject(Reject::WrongTopic, &p, slot);
            return;
        };
        let (payload, default_kind) = match decode_payload(&p.payload, self.max_frame()) {
            Ok(v) => v,
            Err(r) => {
                self.reject(r, &p, slot);
                return;
            }
        };
        let device = ids.device.unwrap_or_else(|| self.cfg.name.clone());
        let kind = ids.kind.unwrap_or_else(|| default_kind.to_string());
        let mut frame = Frame::new(
            gateway,
            &format!("mqtt:{}", p.topic),
            &device,
            &kind,
            payload,
        );
        frame.vehicle = ids.vehicle.or_else(|| self.cfg.vehicle.clone());
        pending.bytes += p.payload.len();
        pending.frames.push(frame);
    }

    fn max_frame(&self) -> usize {
        usize::try_from(self.cfg.max_frame.0).unwrap_or(usize::MAX)
    }

    /// Count a rejected message and log it, at most once per reason per interval.
    fn reject(&mut self, r: Reject, p: &Publish, slot: &SourceSlot) {
        slot.add_invalid_reason(r.reason(), 1);
        let log = self.reject_logs.entry(r).or_default();
        if log.last.is_some_and(|t| t.elapsed() < REJECT_LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        tracing::warn!(
            reason = r.reason(),
            topic = %p.topic,
            bytes = p.payload.len(),
            max_frame = self.cfg.max_frame.0,
            suppressed_since_last = log.suppressed,
            "MQTT message rejected (acknowledged and dropped)"
        );
        log.last = Some(Instant::now());
        log.suppressed = 0;
    }
}

/// Drop the connection's state: rumqttc's own (it drops queued PUBACK requests) and any
/// PUBACK-sent event still buffered, which must not release acks of the next connection.
fn reset(eventloop: &mut EventLoop) {
    eventloop.clean();
    eventloop
        .state
        .events
        .retain(|e| !matches!(e, Event::Outgoing(Outgoing::PubAck(_))));
}

/// rumqttc has sent the PUBACK for `pkid`: write the acks cleared behind it straight to the
/// connection, with one flush (see `ack.rs`). A failed write means the connection is
/// going down; the next `poll` reports it and the broker redelivers what was not acked.
async fn write_acks_after(eventloop: &mut EventLoop, generation: &Generation, pkid: u16) {
    let Some(rest) = generation.acks_after(pkid) else {
        return;
    };
    let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    let Some(net) = eventloop.network.as_mut() else {
        return;
    };
    for &p in &rest {
        if let Err(e) = net.write(Packet::PubAck(PubAck::new(p))).await {
            tracing::debug!(error = %e, "PUBACK write failed");
            return;
        }
    }
    match tokio::time::timeout(timeout, net.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "PUBACK flush failed"),
        Err(_) => tracing::debug!("PUBACK flush timed out"),
    }
}

/// Append the pending frames and queue the acks they (and any rejected publishes) owe;
/// ask for a commit at once when the acks owed reach `commit_at` (the broker's in-flight
/// window). On [`JournalError::Full`] `pending` is kept whole for another try.
fn append(
    journal: &Journal,
    slot: &SourceSlot,
    ack_tx: &mpsc::UnboundedSender<AckBatch>,
    owed: &Generation,
    generation: u64,
    commit_at: usize,
    pending: &mut Pending,
) -> Result<(), JournalError> {
    let mut durable_seq = 0;
    if !pending.frames.is_empty() {
        let n = pending.frames.len() as u64;
        match journal.try_append_many(&mut pending.frames) {
            Ok(seqs) => durable_seq = *seqs.end(),
            Err(e @ JournalError::Full { .. }) => return Err(e),
            Err(e) => {
                *pending = Pending::default();
                return Err(e);
            }
        }
        pending.bytes = 0;
        slot.add_frames(n);
    }
    if !pending.pkids.is_empty() {
        let batch = AckBatch {
            generation,
            durable_seq,
            pkids: std::mem::take(&mut pending.pkids),
        };
        if owed.owe(batch.pkids.len()) >= commit_at && durable_seq > 0 {
            journal.commit_now();
        }
        // The ack task only ends after this task drops the sender.
        let _ = ack_tx.send(batch);
    }
    Ok(())
}
