use super::*;

const GOOD: &str = r#"
[gateway]
id = "van-07"
[journal]
path = "/tmp/j"
max_bytes = "512MiB"
flush_ms = 20
retention = "7d"
[listen]
address = "0.0.0.0:3004"
[mongo]
uri = "mongodb://central.example:27017"
[[sources.obd]]
name = "obd"
path = "/dev/fieldgate/obd"
pids = ["0C", "0D"]
[[sources.mqtt]]
name = "broker"
url = "mqtt://127.0.0.1:1883"
client_id = "fieldgate-van-07"
subscriptions = [{ topic = "fleet/{vehicle}/{device}/{kind}", qos = 1 }]
[[sources.sim]]
name = "sim"
"#;

fn err(text: &str) -> String {
    Config::parse(text)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn good_config_parses() {
    let cfg = Config::parse(GOOD).expect("good config");
    assert_eq!(cfg.gateway.id, "van-07");
    assert_eq!(cfg.journal.max_bytes.0, 512 << 20);
    assert_eq!(cfg.journal.retention.0.as_secs(), 7 * 86_400);
    assert_eq!(cfg.sources.names().len(), 3);
}

#[test]
fn bad_configs_name_the_key() {
    let cases: Vec<(String, &str)> = vec![
        (
            GOOD.replace("pids = [\"0C\", \"0D\"]", "pids = [\"0C\", \"zz\"]"),
            "sources.obd[0].pids[1]: expected a two-digit hex PID",
        ),
        (
            GOOD.replace("flush_ms = 20", "flush_ms = \"fast\""),
            "journal.flush_ms: expected a positive integer, got string \"fast\"",
        ),
        (
            GOOD.replace("flush_ms = 20", "flush_ms = 0"),
            "journal.flush_ms: expected a positive integer, got integer `0`",
        ),
        (
            GOOD.replace("retention = \"7d\"", "retention = \"a week\""),
            "journal.retention: expected a duration",
        ),
        (
            GOOD.replace("max_bytes = \"512MiB\"", "max_bytes = \"huge\""),
            "journal.max_bytes: expected a byte size",
        ),
        (
            GOOD.replace(
                "flush_ms = 20",
                "flush_ms = 20\npending_max_bytes = \"4KiB\"",
            ),
            "journal.pending_max_bytes: expected at least 64KiB",
        ),
        (
            GOOD.replace("flush_ms = 20", "flush_ms = 20\nfsync = true"),
            "journal.fsync: unknown field `fsync`, expected one of",
        ),
        (
            GOOD.replace("id = \"van-07\"", "id = \"van 07!\""),
            "gateway.id: expected 1-64 characters",
        ),
        (
            GOOD.replace("0.0.0.0:3004", "everywhere"),
            "listen.address: ",
        ),
        (
            GOOD.replace("mongodb://central", "http://central"),
            "mongo.uri: expected a mongodb:// or mongodb+srv:// URI",
        ),
        (
            GOOD.replace("qos = 1", "qos = 2"),
            "sources.mqtt[0].subscriptions[0].qos: expected 0 or 1, got 2",
        ),
        (
            GOOD.replace("name = \"sim\"", "name = \"obd\""),
            "sources.sim[0].name: source name \"obd\" is used twice",
        ),
        (
            GOOD.replace("[gateway]\nid = \"van-07\"", ""),
            "missing field `gateway`",
        ),
        (GOOD.replace("[journal]", "[journal"), "not valid TOML"),
    ];
    for (text, want) in &cases {
        let got = err(text);
        assert!(got.contains(want), "want {want:?} in {got:?}");
    }
    // Without the `srv` feature an SRV URI is refused at config time, saying what to do.
    let srv = GOOD.replace("mongodb://central", "mongodb+srv://cluster0.example.net");
    if cfg!(feature = "srv") {
        assert!(Config::parse(&srv).is_ok());
    } else {
        let got = err(&srv);
        assert!(
            got.contains("mongo.uri: this build has no DNS SRV support"),
            "{got}"
        );
    }
}

#[test]
fn env_overrides() {
    let mut cfg = Config::parse(GOOD).expect("good config");
    let env = |k: &str| match k {
        "FIELDGATE_GATEWAY_ID" => Some("van-99".to_string()),
        "FIELDGATE_MONGO_URI" => Some("mongodb://127.0.0.1:27999".to_string()),
        "FIELDGATE_LISTEN" => Some("127.0.0.1:4000".to_string()),
        _ => None,
    };
    cfg.apply_env(env).expect("overrides");
    assert_eq!(cfg.gateway.id, "van-99");
    assert_eq!(cfg.mongo.expect("mongo").uri, "mongodb://127.0.0.1:27999");
    assert_eq!(cfg.listen.address.port(), 4000);
    let mut cfg = Config::parse(GOOD).expect("good config");
    let bad = cfg
        .apply_env(|k| (k == "FIELDGATE_LISTEN").then(|| "nope".to_string()))
        .expect_err("bad listen override");
    assert!(bad
        .to_string()
        .starts_with("FIELDGATE_LISTEN: expected an address"));
}
