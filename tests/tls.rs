//! HTTPS and WSS on the technician port with a certificate from `fieldgate tls self-signed`:
//! REST over TLS with the pinned fingerprint, `fieldgate tail` trusting the pin or the
//! certificate as a CA file, and a wrong pin refused before the key is sent.

mod common;

use common::{free_port, run_cli, Gateway};
use fieldgate::tls::{client_config, parse_pin, Trust};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over TLS trusting `trust`; returns the raw response or the TLS error.
async fn https_get(port: u16, path: &str, key: &str, trust: &Trust) -> Result<String, String> {
    let config = client_config(trust).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn tail(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .arg("tail")
        .args(args)
        .output()
        .expect("run tail")
}

#[test]
fn https_and_wss_with_a_self_signed_certificate_and_a_pinned_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (cert, key_file) = (dir.path().join("board.crt"), dir.path().join("board.key"));
    let config = dir.path().join("fieldgate.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-tls\"\n[journal]\npath = {:?}\n[listen]\naddress = \"127.0.0.1:{port}\"\n\
             tls_cert = {cert:?}\ntls_key = {key_file:?}\n[[sources.sim]]\nname = \"sim\"\ninterval_ms = 50\n",
            dir.path().join("journal")
        ),
    )
    .expect("config");
    let cfg = config.to_string_lossy().to_string();
    let (code, out, err) = run_cli(&[
        "tls",
        "self-signed",
        "--host",
        "127.0.0.1",
        "--config",
        &cfg,
    ]);
    assert_eq!(code, 0, "{err}");
    let fingerprint = out.trim().to_string();
    assert!(err.contains("fingerprint"), "{err}");
    let pin = parse_pin(&fingerprint).expect("the printed fingerprint parses as a pin");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode(&key_file), 0o640, "the key is not world-readable");
    assert_eq!(mode(&cert), 0o644);
    let (code, _, err) = run_cli(&[
        "tls",
        "self-signed",
        "--host",
        "127.0.0.1",
        "--config",
        &cfg,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "existing files are kept: {err}");
    // `fieldgate doctor` checks the pair the config names (judged for the user running it).
    let (code, out, err) = run_cli(&["doctor", "--config", &cfg, "--only", "tls", "--user"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("tls") && l.contains("valid for")),
        "{out}"
    );
    let (code, key, err) = run_cli(&["keys", "add", "tech", "--scopes", "read", "--config", &cfg]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();

    let gw = Gateway::run_tls(&config, port, &key, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let ok = https_get(port, "/api/status", &key, &Trust::Pinned(pin))
            .await
            .expect("https with the pin");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("\"gateway\":\"gw-tls\""));
        let ok = https_get(port, "/", &key, &Trust::CaFile(cert.clone()))
            .await
            .expect("https with the certificate as CA");
        assert!(ok.contains("content-security-policy"), "{ok}");
        let wrong = https_get(port, "/api/status", &key, &Trust::Pinned([7; 32])).await;
        assert!(wrong.is_err_and(|e| e.contains("certificate")));
        // Plain HTTP on the TLS port gets no HTTP answer.
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp");
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            plain.read_to_end(&mut buf),
        )
        .await;
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    });

    // `fieldgate tail` over WSS, trusting the pin, then the certificate file.
    let url = format!("wss://127.0.0.1:{port}/ws");
    for trust in [
        ["--pin", fingerprint.as_str()],
        ["--ca", cert.to_str().expect("path")],
    ] {
        let out = tail(&[
            "--url", &url, "--key", &key, "--count", "3", "--json", trust[0], trust[1],
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{trust:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let frames: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(frames.len(), 3, "{stdout}");
        assert!(frames.iter().all(|f| f["gateway"] == "gw-tls"));
    }
    // A wrong pin: tail stops with the reason, and the (wrong) key never reached the
    // gateway, which would have logged it as unknown.
    let other = "AB:".repeat(31) + "AB";
    let out = tail(&[
        "--url",
        &url,
        "--key",
        "fg_wrong_key_0123456789",
        "--pin",
        &other,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate is not the one trusted"), "{err}");
    assert!(!gw.log().contains("unknown API key"), "{}", gw.log());
    // --ca / --pin on ws:// is a mistake, not a silent downgrade.
    let out = tail(&[
        "--url",
        &format!("ws://127.0.0.1:{port}/ws"),
        "--key",
        &key,
        "--pin",
        &fingerprint,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wss://"));
    assert!(gw.stop().success());
}
