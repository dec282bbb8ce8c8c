//! A fresh PostgreSQL database per test, on the server `MAPPER_TEST_POSTGRES_URL`
//! names (CI sets it); tests skip their PostgreSQL run when it is unset.

use sqlx::Connection;

/// One test's database, dropped (with its sessions) by [`FreshPostgres::drop`].
pub struct FreshPostgres {
    /// Where the test's stores connect.
    pub url: String,
    pub name: String,
    admin: sqlx::AnyConnection,
}

impl FreshPostgres {
    /// Creates `mapper_test_<pid>_<suffix>`, or says why not and returns
    /// `None` when `MAPPER_TEST_POSTGRES_URL` is unset.
    pub async fn create(suffix: &str) -> Option<FreshPostgres> {
        let Ok(admin_url) = std::env::var("MAPPER_TEST_POSTGRES_URL") else {
            eprintln!("MAPPER_TEST_POSTGRES_URL is not set: skipping the PostgreSQL run");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!("mapper_test_{}_{suffix}", std::process::id());
        let mut admin = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        Some(FreshPostgres {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }

    /// Drops the database, closing whatever sessions still use it.
    pub async fn drop(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await
        .unwrap();
    }
}
