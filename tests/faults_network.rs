//! Network cuts between pglock and PostgreSQL, through an in-test TCP proxy,
//! on a cluster of this test binary's own.

mod support;

use std::time::Duration;

use pglock::{Error, Locks};
use sqlx::postgres::PgPoolOptions;
use support::cluster::Cluster;
use support::proxy::Proxy;

struct Setup {
    _cluster: &'static Cluster,
    direct: sqlx::PgPool,
    proxy: Proxy,
    schema: String,
}

fn cluster() -> &'static Cluster {
    static C: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    C.get_or_init(Cluster::start_tcp)
}

async fn setup() -> Setup {
    let cluster = cluster();
    let direct = PgPoolOptions::new()
        .max_connections(5)
        .connect(&cluster.tcp_url())
        .await
        .unwrap();
    let schema = format!("n_{}", uuid::Uuid::new_v4().simple());
    Locks::builder(direct.clone())
        .schema(schema.clone())
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let proxy = Proxy::start(cluster.port.unwrap()).await;
    Setup {
        _cluster: cluster,
        direct,
        proxy,
        schema,
    }
}

impl Setup {
    /// A `Locks` whose every connection goes through the proxy.
    async fn cut_locks(&self, holder: &str) -> Locks {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&self.proxy.url())
            .unwrap();
        Locks::builder(pool)
            .schema(self.schema.clone())
            .holder(holder)
            .build()
            .unwrap()
    }

    fn direct_locks(&self, holder: &str) -> Locks {
        Locks::builder(self.direct.clone())
            .schema(self.schema.clone())
            .holder(holder)
            .build()
            .unwrap()
    }

    async fn seconds_left_by_server(&self, name: &str) -> f64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 FROM \"{}\".leases WHERE name = $1",
            self.schema
        )))
        .bind(name)
        .fetch_one(&self.direct)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_cut_holder_learns_it_lost_the_lease_before_the_server_expires_it() {
    let s = setup().await;
    let name = "cut-lease";
    let cut = s.cut_locks("cut").await;
    let ttl = Duration::from_millis(1500);
    let lease = cut
        .lease(name)
        .ttl(ttl)
        .acquire()
        .await
        .unwrap()
        .keep_alive();
    // Renewals go through while the network is fine.
    tokio::time::sleep(ttl).await;
    assert!(lease.remaining() > Duration::ZERO);

    s.proxy.cut();
    tokio::time::timeout(ttl * 4, lease.lost())
        .await
        .expect("lost() resolves during the cut");
    // The server still counts the lease as held: the holder knew first.
    let left = s.seconds_left_by_server(name).await;
    assert!(
        left > 0.0,
        "the server had expired the lease {left:.3}s before the holder noticed"
    );

    // After the server-side expiry another worker takes over...
    let next = s
        .direct_locks("next")
        .lease(name)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    assert!(next.token() > lease.token());
    // ...and the cut holder's fenced write is refused even once the network heals.
    s.proxy.heal();
    let mut tx = s.direct.begin().await.unwrap();
    let err = lease.fence(&mut tx).await.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(matches!(lease.renew().await, Err(Error::LeaseLost { .. })));
    next.release().await.unwrap();
}

#[tokio::test]
async fn renewals_survive_reset_connections() {
    let s = setup().await;
    let cut = s.cut_locks("reset").await;
    let ttl = Duration::from_millis(1200);
    let lease = cut
        .lease("reset-lease")
        .ttl(ttl)
        .acquire()
        .await
        .unwrap()
        .keep_alive();
    for _ in 0..4 {
        s.proxy.reset();
        tokio::time::sleep(ttl / 2).await;
    }
    // Every reset killed the renewal connection; new ones took over in time.
    assert!(lease.remaining() > Duration::ZERO);
    lease.renew().await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test]
async fn an_advisory_guard_cut_off_reports_lost() {
    let s = setup().await;
    let cut = s.cut_locks("cut").await;
    let guard = cut.advisory("cut-key").lock().await.unwrap();
    s.proxy.cut();
    tokio::time::timeout(Duration::from_secs(15), guard.lost())
        .await
        .expect("lost() resolves");
    s.proxy.heal();
    s.proxy.reset();
    drop(guard);
}
