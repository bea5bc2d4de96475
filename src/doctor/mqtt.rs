//! An MQTT broker: reachable, credentials accepted, every subscription granted.
//!
//! doctor connects with the source's own options (address, TLS, credentials) but its own
//! client id and a clean session, so the gateway's persistent session — and the messages
//! the broker keeps in it — are never touched.

use super::running::Service;
use super::{Check, Ctx};
use crate::source::mqtt::{self, MqttConfig};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Outgoing, Packet, SubscribeReasonCode,
};
use std::time::Duration;

/// How long connecting and subscribing may take together.
const WAIT: Duration = Duration::from_secs(8);

/// One broker's line.
pub(super) async fn check(cfg: &MqttConfig, ctx: &Ctx) -> Check {
    let part = format!("mqtt:{}", cfg.name);
    let view = ctx
        .service
        .source(&cfg.name)
        .map(|e| format!("; the service: {}", Service::describe(e)))
        .unwrap_or_default();
    match probe(cfg).await {
        Ok(detail) => Check::ok(part, format!("{detail}{view}")),
        Err((detail, fix)) => Check::fail(part, format!("{detail}{view}"), fix),
    }
}

/// Connect, subscribe, disconnect; the detail on success, (detail, fix) on failure.
async fn probe(cfg: &MqttConfig) -> Result<String, (String, String)> {
    let url = &cfg.url;
    let bad_config = |e: String| {
        (
            format!("{url}: {e}"),
            "fix the [[sources.mqtt]] entry".to_string(),
        )
    };
    let patterns = mqtt::patterns(cfg).map_err(bad_config)?;
    let mut opts = mqtt::options(cfg).map_err(bad_config)?;
    opts.set_client_id(format!("{}-doctor-{}", cfg.client_id, std::process::id()))
        .set_clean_session(true)
        .set_manual_acks(false)
        .set_keep_alive(Duration::from_secs(5));
    let filters = mqtt::filters(cfg, &patterns);
    let wanted: Vec<String> = filters.iter().map(|f| f.path.clone()).collect();
    let (client, mut events) = AsyncClient::new(opts, 16);
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe_many(filters.clone())
                        .await
                        .map_err(|e| (format!("{url}: cannot subscribe: {e}"), String::new()))?;
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => return Ok(s.return_codes),
                Ok(_) => {}
                Err(e) => return Err(connect_error(url, cfg, &e)),
            }
        }
    };
    let codes =
        match tokio::time::timeout(WAIT, run).await {
            Ok(r) => r?,
            Err(_) => return Err((
                format!("{url}: no answer in {} s", WAIT.as_secs()),
                "is the broker up, and the address and port right? A firewall may drop the packets"
                    .into(),
            )),
        };
    // Leave politely; the broker drops the clean session.
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(ev) = events.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    let refused = refused(&wanted, &codes);
    let who = cfg.username.as_deref().unwrap_or("anonymous");
    if !refused.is_empty() {
        return Err((
            format!(
                "{url}: connected as {who}, but the broker refused the subscription(s) {refused:?}"
            ),
            format!(
                "grant {who} read access to those topics in the broker's ACL (mosquitto: acl_file)"
            ),
        ));
    }
    Ok(format!(
        "{url}: connected as {who}, {} subscription(s) granted ({})",
        wanted.len(),
        wanted.join(", ")
    ))
}

/// The filters the broker did not grant: a failure code, or no code at all for it.
fn refused<'a>(wanted: &'a [String], codes: &[SubscribeReasonCode]) -> Vec<&'a String> {
    wanted
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(codes.get(*i), Some(SubscribeReasonCode::Success(_))))
        .map(|(_, w)| w)
        .collect()
}

/// What a failed connection means for the installer.
fn connect_error(url: &str, cfg: &MqttConfig, e: &ConnectionError) -> (String, String) {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => (
            format!(
                "{url}: the broker refused the credentials ({})",
                match &cfg.username {
                    Some(u) => format!("username {u:?}"),
                    None => "none configured".into(),
                }
            ),
            "check username/password in the [[sources.mqtt]] entry against the broker's \
             password file (mosquitto: password_file, mosquitto_passwd)"
                .into(),
        ),
        ConnectionError::ConnectionRefused(code) => (
            format!("{url}: the broker refused the connection ({code:?})"),
            "check the broker's log".into(),
        ),
        ConnectionError::Io(io) => (
            format!("{url}: unreachable: {io}"),
            "is the broker running (systemctl status mosquitto) and the url's host and port \
             right? The gateway keeps retrying meanwhile"
                .into(),
        ),
        ConnectionError::Tls(t) => (
            format!("{url}: TLS failed: {t}"),
            "check ca_file (the CA that signed the broker's certificate) and that the host \
             name in url matches the certificate"
                .into(),
        ),
        other => (format!("{url}: {other}"), "check the broker's log".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn a_subscription_without_a_success_code_is_refused() {
        let wanted = vec!["fleet/+/+/+".to_string(), "ops/#".to_string()];
        let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
        assert!(refused(&wanted, &[ok, ok]).is_empty());
        assert_eq!(
            refused(&wanted, &[ok, SubscribeReasonCode::Failure]),
            [&wanted[1]]
        );
        assert_eq!(
            refused(&wanted, &[ok]),
            [&wanted[1]],
            "no code, not granted"
        );
    }
}
