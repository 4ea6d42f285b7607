//! Throughput cases at 1, 8 and 32 tasks: lease acquire+release, renew,
//! pool claim+complete, semaphore acquire+release, advisory lock+unlock,
//! each beside the same statements sent raw on dedicated connections.
//! Advisory and lease cases also run pglock from as many OS threads
//! ([`THREADS`]), the thread model of a Python caller.

use std::sync::Arc;
use std::time::Duration;

use pglock::Locks;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::stats::{Record, Runner, alternate, on_tasks, on_threads};
use crate::{Ctx, exec, q};

/// The impl label of pglock called from OS threads ([`run_threads`]).
pub const THREADS: &str = "pglock, OS threads";

pub const TASKS: [usize; 3] = [1, 8, 32];

type Conns = Arc<Vec<Mutex<PgConnection>>>;

async fn conns(ctx: &Ctx, n: usize) -> Conns {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Mutex::new(ctx.raw_connection().await));
    }
    Arc::new(v)
}

/// A `Locks` on `schema` with as many statement connections and sessions as
/// the raw floor has connections, so both sides get the same parallelism.
pub fn locks_for(ctx: &Ctx, schema: &str, tasks: usize) -> Locks {
    Locks::builder(ctx.pool.clone())
        .schema(schema)
        .holder("bench")
        .statement_connections(tasks.max(8) as u32)
        .max_sessions(tasks.max(16) as u32 + 8)
        .build()
        .unwrap()
}

pub async fn all(ctx: &mut Ctx) {
    let schema = "bench_ops";
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    )
    .await;
    locks_for(ctx, schema, 1).migrate().await.unwrap();
    for tasks in TASKS {
        let locks = locks_for(ctx, schema, tasks);
        if ctx.wants("lease") {
            lease(ctx, &locks, tasks).await;
        }
        if ctx.wants("renew") {
            renew(ctx, &locks, tasks).await;
        }
        if ctx.wants("claim") {
            claim(ctx, &locks, tasks).await;
        }
        if ctx.wants("semaphore") {
            semaphore(ctx, &locks, tasks).await;
        }
        if ctx.wants("advisory") {
            advisory(ctx, &locks, tasks).await;
        }
    }
}

/// The raw lease acquire statement; (acquired, token).
pub async fn raw_acquire<'e>(
    c: impl sqlx::PgExecutor<'e>,
    sql: &str,
    name: &str,
    owner: Uuid,
    ttl_ms: i64,
) -> (bool, i64) {
    let row: PgRow = q(sql)
        .bind(name)
        .bind(owner)
        .bind("bench")
        .bind(ttl_ms)
        .bind(None::<serde_json::Value>)
        .bind(None::<i64>) // no lock-delay
        .fetch_one(c)
        .await
        .unwrap();
    (row.get("acquired"), row.get("token"))
}

/// The raw lease release statement (with its NOTIFY).
pub async fn raw_release<'e>(
    c: impl sqlx::PgExecutor<'e>,
    sql: &str,
    schema: &str,
    name: &str,
    token: i64,
    owner: Uuid,
) {
    q(sql)
        .bind("")
        .bind(name)
        .bind(token)
        .bind(owner)
        .bind(format!("{schema}:{name}"))
        .fetch_optional(c)
        .await
        .unwrap();
}

/// Pushes the records of `sides` (impl label, runner), run in turns.
async fn compare(ctx: &mut Ctx, case: &str, tasks: usize, sides: Vec<(&str, Runner)>) {
    let (labels, runners): (Vec<&str>, Vec<Runner>) = sides.into_iter().unzip();
    let out = alternate(ctx.secs, &runners).await;
    for (imp, (lat, el)) in labels.into_iter().zip(out) {
        ctx.push(Record::from_lat(case, imp, tasks, lat, el));
    }
}

async fn lease(ctx: &mut Ctx, locks: &Locks, tasks: usize) {
    let c = conns(ctx, tasks).await;
    let (acq, rel) = (
        locks.__statements().lease_acquire.clone(),
        locks.__statements().lease_release.clone(),
    );
    let schema = locks.schema().to_owned();
    let raw = move |t: usize, _| {
        let (c, acq, rel, schema) = (c.clone(), acq.clone(), rel.clone(), schema.clone());
        async move {
            let mut c = c[t].lock().await;
            let name = format!("raw-{t}");
            let owner = Uuid::new_v4();
            let (ok, token) = raw_acquire(&mut *c, &acq, &name, owner, 30_000).await;
            assert!(ok, "raw lease {name} was held");
            raw_release(&mut *c, &rel, &schema, &name, token, owner).await;
        }
    };
    let l = locks.clone();
    let ours = move |t: usize, _| {
        let l = l.clone();
        async move {
            let lease = l
                .lease(format!("ours-{t}"))
                .try_acquire()
                .await
                .unwrap()
                .expect("lease held");
            lease.release().await.unwrap();
        }
    };
    let sides = vec![
        ("raw", on_tasks(tasks, raw)),
        ("pglock", on_tasks(tasks, ours.clone())),
        (THREADS, on_threads(tasks, ours)),
    ];
    compare(ctx, "lease acquire+release", tasks, sides).await;
}

async fn renew(ctx: &mut Ctx, locks: &Locks, tasks: usize) {
    let sql = locks.__statements();
    let c = conns(ctx, tasks).await;
    // Raw: leases taken with the raw statement, renewed with the raw one.
    let mut raw = Vec::new();
    for t in 0..tasks {
        let name = format!("renew-raw-{t}");
        let owner = Uuid::new_v4();
        let (ok, token) = raw_acquire(
            &mut *c[t].lock().await,
            &sql.lease_acquire,
            &name,
            owner,
            600_000,
        )
        .await;
        assert!(ok);
        raw.push((name, token, owner));
    }
    let raw = Arc::new(raw);
    let renew_sql = sql.lease_renew.clone();
    let raw_op = {
        let raw = raw.clone();
        move |t: usize, _| {
            let (c, sql, raw) = (c.clone(), renew_sql.clone(), raw.clone());
            async move {
                let mut c = c[t].lock().await;
                let (name, token, owner) = &raw[t];
                let rows = q(&sql)
                    .bind(vec![""])
                    .bind(vec![name.clone()])
                    .bind(vec![*token])
                    .bind(vec![*owner])
                    .bind(vec![600_000i64])
                    .fetch_all(&mut *c)
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1, "raw renew lost {name}");
            }
        }
    };
    let mut ours = Vec::new();
    for t in 0..tasks {
        ours.push(
            locks
                .lease(format!("renew-ours-{t}"))
                .ttl(Duration::from_secs(600))
                .try_acquire()
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let handles: Arc<Vec<_>> = Arc::new(ours.iter().map(|l| l.handle()).collect());
    let our_op = move |t: usize, _| {
        let h = handles[t].clone();
        async move { h.renew().await.unwrap() }
    };
    let sides = vec![
        ("raw", on_tasks(tasks, raw_op)),
        ("pglock", on_tasks(tasks, our_op)),
    ];
    compare(ctx, "lease renew", tasks, sides).await;
    for l in ours {
        l.release().await.unwrap();
    }
    let mut c0 = ctx.raw_connection().await;
    for (name, token, owner) in raw.iter() {
        raw_release(
            &mut c0,
            &sql.lease_release,
            locks.schema(),
            name,
            *token,
            *owner,
        )
        .await;
    }
}

/// Pool claim+complete over a pool big enough not to drain, with pglock's
/// claim and complete statements sent raw as the floor (both sides claim
/// from the same pool, in turns).
async fn claim(ctx: &mut Ctx, locks: &Locks, tasks: usize) {
    let pool_name = format!("ops-{tasks}");
    let pool = locks.lease_pool(&pool_name);
    // Enough for both sides at 15k claims/s each.
    let items = (ctx.secs.as_secs_f64() * 30_000.0).max(50_000.0) as usize;
    for start in (0..items).step_by(50_000) {
        let batch: Vec<String> = (start..(start + 50_000).min(items))
            .map(|i| format!("item-{i:07}"))
            .collect();
        pool.add(batch).await.unwrap();
    }
    exec(
        &ctx.pool,
        &format!("VACUUM ANALYZE {}.leases", locks.schema()),
    )
    .await;
    let sql = locks.__statements();
    let c = conns(ctx, tasks).await;
    // The claim pglock sends while its label has nothing to resume (nearly
    // always, for a worker that completes what it claims).
    let (claim_sql, complete_sql) = (sql.pool_claim_plain.clone(), sql.item_complete.clone());
    let raise_sql = sql.pool_raise.clone();
    let name = pool_name.clone();
    let raw = move |t: usize, _| {
        let (c, claim_sql, complete_sql, raise_sql, pool) = (
            c.clone(),
            claim_sql.clone(),
            complete_sql.clone(),
            raise_sql.clone(),
            name.clone(),
        );
        async move {
            let mut c = c[t].lock().await;
            let owner = Uuid::new_v4();
            let row: PgRow = q(&claim_sql)
                .bind(&pool)
                .bind(owner)
                .bind(format!("raw-{t}"))
                .bind(60_000i64)
                .bind(None::<i32>)
                .bind(None::<i64>) // no lock-delay
                .fetch_optional(&mut *c)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("pool {pool} drained"));
            if row.get::<Option<bool>, _>("raise") == Some(true) {
                // pglock sends it in the background; the floor, inline.
                q(&raise_sql).bind(&pool).execute(&mut *c).await.unwrap();
            }
            let item: String = row.get("name");
            let token: i64 = row.get("token");
            q(&complete_sql)
                .bind(&pool)
                .bind(&item)
                .bind(token)
                .bind(owner)
                .fetch_optional(&mut *c)
                .await
                .unwrap();
        }
    };
    let l = locks.clone();
    let ours = move |t: usize, _| {
        let (l, pool) = (l.clone(), pool_name.clone());
        async move {
            let item = l
                .lease_pool(&pool)
                .claim()
                .holder(format!("ours-{t}"))
                .ttl(Duration::from_secs(60))
                .try_acquire()
                .await
                .unwrap()
                .expect("pool drained");
            item.complete().await.unwrap();
        }
    };
    let sides = vec![
        ("raw", on_tasks(tasks, raw)),
        ("pglock", on_tasks(tasks, ours)),
    ];
    compare(ctx, "pool claim+complete", tasks, sides).await;
}

/// Semaphore of 64 permits (never all taken): acquire+release. The floor
/// sends pglock's claim (limited to the permits) and item release raw.
async fn semaphore(ctx: &mut Ctx, locks: &Locks, tasks: usize) {
    let permits = 64u32;
    let (raw_name, our_name) = (format!("sem-raw-{tasks}"), format!("sem-ours-{tasks}"));
    // Creates the permits of both semaphores.
    for n in [&raw_name, &our_name] {
        let p = locks
            .semaphore(n.as_str(), permits)
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        p.release().await.unwrap();
    }
    let sql = locks.__statements();
    let c = conns(ctx, tasks).await;
    let (claim_sql, release_sql) = (sql.pool_claim_plain.clone(), sql.item_release.clone());
    let raise_sql = sql.pool_raise.clone();
    let schema = locks.schema().to_owned();
    let raw = move |t: usize, _| {
        let (c, claim_sql, release_sql, raise_sql, sem, schema) = (
            c.clone(),
            claim_sql.clone(),
            release_sql.clone(),
            raise_sql.clone(),
            raw_name.clone(),
            schema.clone(),
        );
        async move {
            let mut c = c[t].lock().await;
            let owner = Uuid::new_v4();
            let row: PgRow = q(&claim_sql)
                .bind(&sem)
                .bind(owner)
                .bind("bench")
                .bind(30_000i64)
                .bind(Some(permits as i32))
                .bind(None::<i64>) // no lock-delay
                .fetch_optional(&mut *c)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no permit of {sem}"));
            if row.get::<Option<bool>, _>("raise") == Some(true) {
                q(&raise_sql).bind(&sem).execute(&mut *c).await.unwrap();
            }
            let item: String = row.get("name");
            let token: i64 = row.get("token");
            q(&release_sql)
                .bind(&sem)
                .bind(&item)
                .bind(token)
                .bind(owner)
                .bind(format!("{schema}:{sem}"))
                .fetch_optional(&mut *c)
                .await
                .unwrap();
        }
    };
    let l = locks.clone();
    let ours = move |_, _| {
        let (l, sem) = (l.clone(), our_name.clone());
        async move {
            let p = l
                .semaphore(&sem, permits)
                .try_acquire()
                .await
                .unwrap()
                .expect("no permit");
            p.release().await.unwrap();
        }
    };
    let sides = vec![
        ("raw", on_tasks(tasks, raw)),
        ("pglock", on_tasks(tasks, ours)),
    ];
    compare(ctx, "semaphore acquire+release", tasks, sides).await;
}

/// Advisory lock+unlock on distinct keys per task.
async fn advisory(ctx: &mut Ctx, locks: &Locks, tasks: usize) {
    let c = conns(ctx, tasks).await;
    let raw = move |t: usize, _| {
        let c = c.clone();
        async move {
            let mut c = c[t].lock().await;
            q("SELECT pg_advisory_lock($1)")
                .bind(t as i64)
                .execute(&mut *c)
                .await
                .unwrap();
            q("SELECT pg_advisory_unlock($1)")
                .bind(t as i64)
                .execute(&mut *c)
                .await
                .unwrap();
        }
    };
    let l = locks.clone();
    let ours = move |t: usize, _| {
        let l = l.clone();
        async move {
            let g = l.advisory(1000 + t as i64).lock().await.unwrap();
            g.release().await.unwrap();
        }
    };
    let sides = vec![
        ("raw", on_tasks(tasks, raw)),
        ("pglock", on_tasks(tasks, ours.clone())),
        (THREADS, on_threads(tasks, ours)),
    ];
    compare(ctx, "advisory lock+unlock", tasks, sides).await;
}
