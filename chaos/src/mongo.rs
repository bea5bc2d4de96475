//! The MongoDB side: a SecantusDB server started for the scenario (or the real server named
//! by `FIELDGATE_TEST_MONGODB_URI`), always reached by the gateway through a [`Proxy`] that
//! sees its inserts in flight. An outage kills the server with SIGKILL and closes the proxy
//! (the gateway's connections fail as they do when a server dies); an external server cannot
//! be killed, so there the outage is the proxy alone, severing every connection.

use crate::check::Doc;
use crate::proxy::{Inserts, Proxy};
use crate::rig::Ctx;
use bson::{doc, Document};
use fieldgate_bench::secantus::Secantus;
use futures_util::TryStreamExt;
use mongodb::options::ClientOptions;
use std::sync::Arc;
use std::time::Duration;

/// A MongoDB server for one scenario.
pub struct Mongo {
    local: Option<Secantus>,
    /// The server's own URI (for the checks, not through the proxy).
    direct: String,
    proxy: Proxy,
    /// The gateway's inserts passing through the proxy.
    pub inserts: Arc<Inserts>,
    client: mongodb::Client,
    rt: tokio::runtime::Handle,
}

impl Mongo {
    /// Start a server (or use the external one) with a proxy in front.
    pub fn start(ctx: &Ctx) -> anyhow::Result<Mongo> {
        let (local, direct, target) = match &ctx.env.mongo_uri {
            Some(uri) => (None, uri.clone(), single_host(uri)?),
            None => {
                let exe = Secantus::launcher(ctx.env.secantusd.clone())?;
                let s = Secantus::start(&exe, &ctx.path("mongo"))?;
                let target = format!("127.0.0.1:{}", s.port());
                (Some(s), s_uri(&target), target)
            }
        };
        let inserts = Arc::new(Inserts::default());
        let proxy = Proxy::start(ctx.rt.handle(), &target, Some(inserts.inspector()))?;
        let client = ctx.rt.block_on(async {
            let mut o = ClientOptions::parse(&direct).await?;
            o.server_selection_timeout = Some(Duration::from_secs(5));
            o.connect_timeout = Some(Duration::from_secs(5));
            anyhow::Ok(mongodb::Client::with_options(o)?)
        })?;
        let m = Mongo {
            local,
            direct,
            proxy,
            inserts,
            client,
            rt: ctx.rt.handle().clone(),
        };
        m.wait_ready(Duration::from_secs(60))?;
        Ok(m)
    }

    /// The URI the gateway uses (through the proxy).
    pub fn uri(&self) -> String {
        via(&self.direct, self.proxy.port())
    }

    /// Whether this is a SecantusDB process the scenario can kill.
    pub fn killable(&self) -> bool {
        self.local.is_some()
    }

    /// The outage: SIGKILL the server (when local) and sever every connection.
    pub fn kill(&mut self) {
        if let Some(s) = self.local.as_mut() {
            s.kill();
        }
        self.proxy.sever();
    }

    /// End the outage: start the server on the same data, then let connections through.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.local.as_mut() {
            s.restart()?;
        }
        self.proxy.resume()
    }

    /// Wait until the server answers a ping.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        crate::rig::until(limit, "MongoDB to answer a ping", || {
            Ok(self
                .rt
                .block_on(async {
                    self.client
                        .database("admin")
                        .run_command(doc! {"ping": 1})
                        .await
                })
                .ok())
        })
        .map(|_| ())
    }

    /// Every document of gateway `gateway` in `db.frames`: (seq, h).
    pub fn docs(&self, db: &str, gateway: &str) -> anyhow::Result<Vec<Doc>> {
        self.rt.block_on(async {
            let cur = self
                .client
                .database(db)
                .collection::<Document>("frames")
                .find(doc! {"gateway": gateway})
                .projection(doc! {"seq": 1, "h": 1})
                .await?;
            let docs: Vec<Document> = cur.try_collect().await?;
            docs.iter()
                .map(|d| {
                    Ok(Doc {
                        seq: u64::try_from(d.get_i64("seq")?)?,
                        hash: d.get_i64("h")?,
                    })
                })
                .collect()
        })
    }

    /// Drop a scenario's database (external servers keep nothing of ours).
    pub fn drop_db(&self, db: &str) {
        let _ = self
            .rt
            .block_on(async { self.client.database(db).drop().await });
    }
}

/// `direct` (credentials and options kept) dialled at `127.0.0.1:port` instead, directly.
fn via(direct: &str, port: u16) -> String {
    let rest = direct.strip_prefix("mongodb://").unwrap_or(direct);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let auth = authority
        .rsplit_once('@')
        .map_or(String::new(), |(a, _)| format!("{a}@"));
    let tail = if tail.is_empty() { "/" } else { tail };
    let option = if tail.contains("directConnection") {
        ""
    } else if tail.contains('?') {
        "&directConnection=true"
    } else {
        "?directConnection=true"
    };
    format!("mongodb://{auth}127.0.0.1:{port}{tail}{option}")
}

/// `mongodb://host:port/?directConnection=true`.
fn s_uri(host_port: &str) -> String {
    format!("mongodb://{host_port}/?directConnection=true")
}

/// The `host:port` of a single-host `mongodb://` URI (an SRV or multi-host URI cannot be
/// put behind one proxy).
fn single_host(uri: &str) -> anyhow::Result<String> {
    let rest = uri.strip_prefix("mongodb://").ok_or_else(|| {
        anyhow::anyhow!(
            "FIELDGATE_TEST_MONGODB_URI must be a single-host mongodb:// URI, got {uri}"
        )
    })?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    anyhow::ensure!(
        !host.contains(','),
        "FIELDGATE_TEST_MONGODB_URI must name a single host, got {uri}"
    );
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:27017")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_external_uri_is_reached_through_one_host() {
        assert_eq!(
            super::single_host("mongodb://u:p@db.lan/?tls=true").expect("host"),
            "db.lan:27017"
        );
        assert!(super::single_host("mongodb://a:1,b:2/").is_err());
        assert!(super::single_host("mongodb+srv://x/").is_err());
        assert_eq!(
            super::via("mongodb://u:p@db.lan/?tls=true", 9),
            "mongodb://u:p@127.0.0.1:9/?tls=true&directConnection=true"
        );
        assert_eq!(
            super::via("mongodb://127.0.0.1:5/?directConnection=true", 9),
            "mongodb://127.0.0.1:9/?directConnection=true"
        );
        assert_eq!(
            super::via("mongodb://h", 9),
            "mongodb://127.0.0.1:9/?directConnection=true"
        );
    }
}
