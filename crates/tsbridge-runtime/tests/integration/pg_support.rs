//! A real PostgreSQL for the store tests: each test gets a database of its
//! own (created on the server `TSBRIDGE_TEST_PG_URL` names, dropped when the
//! test ends), so tests run in parallel and notifications never cross.
//!
//! Without `TSBRIDGE_TEST_PG_URL`, a test is skipped with a message, except
//! under CI (`CI` set), where that is a failure: `.ci/run` sets the server up.

#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// The variable that names the test server (any database on it; the role
/// needs CREATEDB).
pub const URL_VAR: &str = "TSBRIDGE_TEST_PG_URL";

/// A database of one test; dropped (with its connections) on drop.
#[derive(Debug)]
pub struct PgDb {
    /// The URL of this test's database.
    pub url: String,
    server: String,
    name: String,
}

/// The server's URL, or `None` (after saying so) when the tests may skip.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{URL_VAR} is not set under CI: PostgreSQL store tests must run there \
             (.ci/run sets the server up)"
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: {URL_VAR} is not set (no PostgreSQL server; \
                 `.ci/postgres` sets one up and prints its URL)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

async fn admin(server: &str) -> PgConnection {
    PgConnectOptions::from_str(server)
        .expect("TSBRIDGE_TEST_PG_URL is a PostgreSQL URL")
        .connect()
        .await
        .expect("connect to the test PostgreSQL server")
}

impl PgDb {
    /// A fresh, empty database, or `None` when the test is skipped.
    pub async fn create(test: &str) -> Option<PgDb> {
        let server = server_url(test)?;
        let name = format!(
            "tsbridge_test_{}",
            uuid::Uuid::now_v7().simple().to_string().to_lowercase()
        );
        let mut conn = admin(&server).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database (the role needs CREATEDB)");
        let _ = conn.close().await;
        Some(PgDb {
            url: with_database(&server, &name),
            server,
            name,
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime: drop the database from a thread
        // with its own.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut conn = admin(&server).await;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                {
                    eprintln!("cannot drop test database {name}: {e}");
                }
            });
        });
        let _ = done.join();
    }
}

#[test]
fn database_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/tsbridge", "t1"),
        "postgres://u:p@h:5432/t1"
    );
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "t1"),
        "postgres://h/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
}
