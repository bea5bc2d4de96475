//! Commands go where they are meant, against a real `fieldgate run` with a serial device
//! (a pty) and a real mosquitto: an MQTT publisher that uses the serial device's name can
//! neither take over its command route nor pose as it in the journal; MQTT devices take
//! commands only when the config's allow-list names them; refusals are clear and audited.

mod common;

use common::mqtt::{presubscribe, publish_all, Mosquitto};
use common::serial::Device;
use common::{free_port, run_cli, Gateway};
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn an_mqtt_device_named_like_a_serial_device_cannot_hijack_its_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path(), 100);
    let link = dir.path().join("dev/pump");
    let journal = dir.path().join("journal");
    let port = free_port();
    let config = dir.path().join("fieldgate.toml");
    let text = format!(
        "[gateway]\nid = \"depot-1\"\n[journal]\npath = {journal:?}\nflush_ms = 5\n\
         [listen]\naddress = \"127.0.0.1:{port}\"\n\
         [[sources.serial]]\nname = \"pump-port\"\npath = {link:?}\nbaud = 115200\n\
         framing = \"lines\"\ndevice = \"pump0\"\n\
         [[sources.mqtt]]\nname = \"broker\"\nurl = \"mqtt://127.0.0.1:{mqtt}\"\n\
         client_id = \"fieldgate-cmd-test\"\nkeep_alive_s = 5\n\
         subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n\
         command_topic = \"fleet/{{vehicle}}/{{device}}/cmd\"\n\
         command_devices = [\"pump*\", \"valve-*\"]\n",
        mqtt = broker.port
    );
    std::fs::write(&config, text).expect("config");
    let cfg = config.to_string_lossy().to_string();
    let (code, key, err) = run_cli(&["keys", "add", "tech", "--scopes", "admin", "--config", &cfg]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    // Whatever reaches the MQTT command topics is recorded by the broker for this client.
    presubscribe(broker.port, "cmd-spy", "fleet/+/+/cmd");
    let gw = Gateway::run(&config, port, &key, dir.path());
    gw.status_until(LONG, |s| s["sources"]["broker"]["state"] == "running");

    // The attacker's device appears first (the serial port is not even plugged in yet),
    // under the serial device's name, and a legitimate MQTT valve and sensor too.
    publish_all(
        broker.port,
        "attacker",
        vec![
            (
                "fleet/van-9/pump0/status".into(),
                br#"{"ok": true}"#.to_vec(),
            ),
            (
                "fleet/van-9/valve-1/status".into(),
                br#"{"open": false}"#.to_vec(),
            ),
            ("fleet/van-9/sensor-3/temp".into(), br#"{"c": 4}"#.to_vec()),
        ],
    );
    let st = gw.status_until(LONG, |s| s["sources"]["broker"]["frames"] == 2);
    assert_eq!(
        st["sources"]["broker"]["invalid_by_reason"]["foreign_device"], 1,
        "{st}"
    );
    let mut pump = Device::plug(&link);
    gw.status_until(LONG, |s| s["sources"]["pump-port"]["state"] == "running");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let replies: Vec<Value> = rt.block_on(async {
        let (mut ws, _) = common::ws_connect(port, "/ws", Some(&key), Some("tech"))
            .await
            .expect("ws");
        let mut out = Vec::new();
        for data in [
            json!({"device": "pump0", "payload": "VALVE OPEN"}),
            json!({"device": "valve-1", "payload": {"open": true}}),
            json!({"device": "sensor-3", "payload": "reset"}),
            json!({"device": "pump0", "source": "broker", "payload": "VALVE OPEN"}),
            json!({"device": "<img src=x>", "payload": 1}),
        ] {
            common::ws_send(&mut ws, json!({"type": "command", "data": data})).await;
            loop {
                let m = common::ws_next(&mut ws).await.expect("reply");
                if m["type"] == "command" || m["type"] == "error" {
                    out.push(m);
                    break;
                }
            }
        }
        out
    });
    // The serial device's command goes to its port, from its own source.
    assert_eq!(replies[0]["message"], "sent", "{}", replies[0]);
    assert_eq!(replies[0]["data"]["source"], "pump-port");
    let wrote = pump.read_until(b"VALVE OPEN\r\n", LONG);
    assert!(String::from_utf8_lossy(&wrote).contains("VALVE OPEN\r\n"));
    // An allowed MQTT device takes commands; one the allow-list does not name does not.
    assert_eq!(replies[1]["message"], "sent", "{}", replies[1]);
    assert_eq!(replies[1]["data"]["source"], "broker");
    assert_eq!(replies[2]["type"], "error");
    assert!(
        replies[2]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no command route"),
        "{}",
        replies[2]
    );
    // Naming the MQTT source for the serial device is refused too.
    assert_eq!(replies[3]["type"], "error");
    assert!(
        replies[3]["message"]
            .as_str()
            .unwrap_or("")
            .contains("source \"broker\" has no command route"),
        "{}",
        replies[3]
    );
    // A device id that is no id: refused, nothing journaled under it.
    assert_eq!(replies[4]["type"], "error");
    assert!(replies[4]["data"].is_null(), "{}", replies[4]);

    // Only the valve's command reached the broker.
    let published = rt.block_on(async {
        let mut o = rumqttc::MqttOptions::new("cmd-spy", "127.0.0.1", broker.port);
        o.set_clean_session(false);
        let (_client, mut ev) = rumqttc::AsyncClient::new(o, 10);
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev.poll().await {
                    got.push(p.topic);
                }
            }
        })
        .await;
        got
    });
    assert_eq!(published, vec!["fleet/van-9/valve-1/cmd".to_string()]);
    assert!(gw.stop().success());

    // The journal: no pump0 frame from MQTT; every command audited but the bad id's.
    let j = fieldgate::journal::Journal::open(fieldgate::journal::JournalConfig {
        path: journal,
        ..Default::default()
    })
    .expect("journal");
    let frames = j.range(1, usize::MAX);
    assert!(
        !frames
            .iter()
            .any(|f| f.device == "pump0" && f.source.starts_with("mqtt:")),
        "the impostor's frame was journaled"
    );
    let audits: Vec<_> = frames.iter().filter(|f| f.kind == "command").collect();
    assert_eq!(audits.len(), 4, "{audits:?}");
    assert!(audits.iter().all(|f| f.device != "<img src=x>"));
    assert_eq!(audits[2].payload["routed"], false);
    j.close().expect("close");
}
