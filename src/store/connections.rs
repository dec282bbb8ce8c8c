//! Connections: the tenants of one deployment. A connection is a name and
//! the values of the variables the active source and target profiles
//! declare (`GHL_LOCATION_ID`, `GHL_API_TOKEN`, `STICKYCARDS_API_KEY`, …),
//! plus, for a GHL OAuth install, its access and refresh tokens.
//!
//! Values are sealed with [`SecretKey`] before they are written (names,
//! `enabled` and the location id are not: see the migration
//! `0010_connections.sql`), so this module never holds a plaintext value in
//! a row. Opening needs the key: [`Connection::vars`], [`Connection::tokens`].
//!
//! OAuth refresh tokens are single-use and rotate, so a rotation is stored
//! by compare-and-set on `token_version` ([`Store::store_tokens`]) after a
//! short lease ([`Store::claim_token_refresh`]) that keeps the other
//! replicas from spending the same refresh token.

use super::{Store, StoreError, now_ms};
use crate::secrets::{SecretError, SecretKey};
use sqlx::Row;
use std::collections::BTreeMap;

/// The variable whose value identifies a connection's GHL location; no two
/// connections may hold the same one.
pub const LOCATION_VARIABLE: &str = "GHL_LOCATION_ID";

/// A stored connection, its values still sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// Its name (letters, digits, `-`, `_`; used in URLs and labels).
    pub name: String,
    /// Whether its events are delivered.
    pub enabled: bool,
    /// Why it was disabled (by an operator, or a refused OAuth refresh).
    pub disabled_reason: Option<String>,
    /// Its `GHL_LOCATION_ID`, in clear.
    pub location_id: Option<String>,
    /// Variable name → sealed value.
    pub sealed_vars: BTreeMap<String, String>,
    /// The sealed OAuth access token, its expiry (epoch ms) and the sealed
    /// refresh token, when the connection was installed through OAuth.
    pub sealed_tokens: Option<SealedTokens>,
    /// Grows by one with every stored token rotation (compare-and-set).
    pub token_version: i64,
    /// When a replica's refresh lease ends (epoch ms), if one holds it.
    pub refresh_lease_until: Option<i64>,
    /// Created (epoch ms).
    pub created_at: i64,
    /// Last changed (epoch ms).
    pub updated_at: i64,
}

/// OAuth tokens as stored: sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedTokens {
    /// Sealed access token.
    pub access_token: String,
    /// When the access token expires (epoch ms).
    pub access_expires_at: i64,
    /// Sealed refresh token.
    pub refresh_token: String,
}

/// OAuth tokens in clear, as GHL's `/oauth/token` answers them.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthTokens {
    /// The bearer for API calls.
    pub access_token: String,
    /// When it expires (epoch ms).
    pub access_expires_at: i64,
    /// The single-use token that gets the next pair.
    pub refresh_token: String,
}

impl std::fmt::Debug for OAuthTokens {
    // Tokens never reach a log through a debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &"***")
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &"***")
            .finish()
    }
}

/// Why a change to the connections was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The name cannot be used.
    #[error(
        "`{0}` is not a connection name: use 1 to 64 letters, digits, `-` or `_` (it appears in webhook URLs)"
    )]
    BadName(String),
    /// A connection of that name exists already.
    #[error(
        "a connection named `{0}` exists already: change it with `mapper connection set {0} VAR=VALUE`, or choose another name"
    )]
    Exists(String),
    /// No connection has that name.
    #[error("no connection is named `{0}` (`mapper connection list` shows them)")]
    NotFound(String),
    /// Another connection holds the location already.
    #[error(
        "GHL_LOCATION_ID `{location}` belongs to the connection `{other}` already: one location is one connection (change that one with `mapper connection set {other} …`, or remove it first)"
    )]
    DuplicateLocation {
        /// The location id.
        location: String,
        /// The connection that has it.
        other: String,
    },
    /// A value must be sealed and no key was given.
    #[error(
        "cannot store {variable}: values are stored encrypted and MAPPER_SECRET_KEY is not set; set it to 32 random bytes as 64 hex characters (e.g. `openssl rand -hex 32`)"
    )]
    NoKey {
        /// The first variable that could not be stored.
        variable: String,
    },
    /// A sealed value did not open.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ConnectionError {
    fn from(e: sqlx::Error) -> ConnectionError {
        ConnectionError::Store(StoreError::Query(e))
    }
}

/// Whether `name` can name a connection: 1 to 64 ASCII letters, digits,
/// `-` or `_`, so that it fits a URL path segment and a metric label as is.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a sealed value of a connection is bound to: a value copied into
/// another connection's row, or under another variable, does not open.
fn var_context(connection: &str, variable: &str) -> String {
    format!("connection/{connection}/var/{variable}")
}

fn token_context(connection: &str, which: &str) -> String {
    format!("connection/{connection}/oauth/{which}")
}

impl Connection {
    /// The names of its variables (readable without the key).
    pub fn var_names(&self) -> impl Iterator<Item = &str> {
        self.sealed_vars.keys().map(String::as_str)
    }

    /// Its variables, opened with `key`.
    pub fn vars(&self, key: &SecretKey) -> Result<BTreeMap<String, String>, SecretError> {
        self.sealed_vars
            .iter()
            .map(|(name, sealed)| {
                key.open_string_for(&var_context(&self.name, name), sealed)
                    .map(|v| (name.clone(), v))
            })
            .collect()
    }

    /// Its OAuth tokens, opened with `key` (`None` when it has none).
    pub fn tokens(&self, key: &SecretKey) -> Result<Option<OAuthTokens>, SecretError> {
        let Some(t) = &self.sealed_tokens else {
            return Ok(None);
        };
        Ok(Some(OAuthTokens {
            access_token: key
                .open_string_for(&token_context(&self.name, "access_token"), &t.access_token)?,
            access_expires_at: t.access_expires_at,
            refresh_token: key.open_string_for(
                &token_context(&self.name, "refresh_token"),
                &t.refresh_token,
            )?,
        }))
    }
}

const COLUMNS: &str = "name, enabled, disabled_reason, location_id, vars, access_token, \
     access_expires_at, refresh_token, token_version, refresh_lease_until, created_at, updated_at";

fn read_row(r: &sqlx::any::AnyRow) -> Result<Connection, sqlx::Error> {
    let vars: String = r.try_get(4)?;
    let sealed_vars: BTreeMap<String, String> =
        serde_json::from_str(&vars).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let access: Option<String> = r.try_get(5)?;
    let expires: Option<i64> = r.try_get(6)?;
    let refresh: Option<String> = r.try_get(7)?;
    let enabled: i64 = r.try_get(1)?;
    Ok(Connection {
        name: r.try_get(0)?,
        enabled: enabled != 0,
        disabled_reason: r.try_get(2)?,
        location_id: r.try_get(3)?,
        sealed_vars,
        sealed_tokens: match (access, refresh) {
            (Some(access_token), Some(refresh_token)) => Some(SealedTokens {
                access_token,
                access_expires_at: expires.unwrap_or(0),
                refresh_token,
            }),
            _ => None,
        },
        token_version: r.try_get(8)?,
        refresh_lease_until: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

/// Seals `vars` for the connection `name`; refuses without a key.
fn seal_vars(
    name: &str,
    vars: &BTreeMap<String, String>,
    key: Option<&SecretKey>,
) -> Result<BTreeMap<String, String>, ConnectionError> {
    let Some(key) = key else {
        return match vars.keys().next() {
            Some(variable) => Err(ConnectionError::NoKey {
                variable: variable.clone(),
            }),
            None => Ok(BTreeMap::new()),
        };
    };
    Ok(vars
        .iter()
        .map(|(var, value)| {
            (
                var.clone(),
                key.seal_for(&var_context(name, var), value.as_bytes()),
            )
        })
        .collect())
}

/// The `vars` column: a JSON object of sealed values.
fn vars_json(sealed: &BTreeMap<String, String>) -> String {
    // A map of strings to strings has no value JSON cannot hold.
    serde_json::Value::from_iter(
        sealed
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))),
    )
    .to_string()
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Adds the connection `name`, enabled, with `vars` sealed by `key`.
    /// Refuses a name in use, a `GHL_LOCATION_ID` another connection holds,
    /// and any variable when there is no key.
    pub async fn add_connection(
        &self,
        name: &str,
        vars: &BTreeMap<String, String>,
        key: Option<&SecretKey>,
    ) -> Result<Connection, ConnectionError> {
        if !valid_name(name) {
            return Err(ConnectionError::BadName(name.to_string()));
        }
        let sealed = seal_vars(name, vars, key)?;
        let location = vars.get(LOCATION_VARIABLE).cloned();
        let _turn = self.write_gate(super::Writer::Other).await;
        if self.connection(name).await?.is_some() {
            return Err(ConnectionError::Exists(name.to_string()));
        }
        if let Some(location) = &location {
            self.refuse_duplicate_location(name, location).await?;
        }
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO connections (name, enabled, location_id, vars, created_at, updated_at) \
             VALUES ($1, 1, $2, $3, $4, $4)",
        )
        .bind(name)
        .bind(location.clone())
        .bind(vars_json(&sealed))
        .bind(now)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => {}
            // Another process added one between the checks and the insert.
            Err(e) if is_unique_violation(&e) => {
                if self.connection(name).await?.is_some() {
                    return Err(ConnectionError::Exists(name.to_string()));
                }
                return Err(self.duplicate_location(name, location.as_deref()).await);
            }
            Err(e) => return Err(e.into()),
        }
        self.connection(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_string()))
    }

    /// Sets (adds or replaces) some variables of the connection `name`,
    /// keeping the others; a new `GHL_LOCATION_ID` is held to the same
    /// uniqueness as in [`Store::add_connection`].
    pub async fn set_connection_vars(
        &self,
        name: &str,
        vars: &BTreeMap<String, String>,
        key: Option<&SecretKey>,
    ) -> Result<Connection, ConnectionError> {
        let sealed = seal_vars(name, vars, key)?;
        let _turn = self.write_gate(super::Writer::Other).await;
        let Some(current) = self.connection(name).await? else {
            return Err(ConnectionError::NotFound(name.to_string()));
        };
        let location = match vars.get(LOCATION_VARIABLE) {
            Some(l) => {
                self.refuse_duplicate_location(name, l).await?;
                Some(l.clone())
            }
            None => current.location_id.clone(),
        };
        let mut merged = current.sealed_vars;
        merged.extend(sealed);
        let updated = sqlx::query(
            "UPDATE connections SET vars = $1, location_id = $2, updated_at = $3 WHERE name = $4",
        )
        .bind(vars_json(&merged))
        .bind(location.clone())
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await;
        match updated {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(self.duplicate_location(name, location.as_deref()).await);
            }
            Err(e) => return Err(e.into()),
        }
        self.connection(name)
            .await?
            .ok_or_else(|| ConnectionError::NotFound(name.to_string()))
    }

    async fn refuse_duplicate_location(
        &self,
        name: &str,
        location: &str,
    ) -> Result<(), ConnectionError> {
        match self.connection_for_location(location).await? {
            Some(other) if other.name != name => Err(ConnectionError::DuplicateLocation {
                location: location.to_string(),
                other: other.name,
            }),
            _ => Ok(()),
        }
    }

    /// The error for a location the unique index refused.
    async fn duplicate_location(&self, name: &str, location: Option<&str>) -> ConnectionError {
        let location = location.unwrap_or_default().to_string();
        let other = match self.connection_for_location(&location).await {
            Ok(Some(c)) if c.name != name => c.name,
            _ => "another one".to_string(),
        };
        ConnectionError::DuplicateLocation { location, other }
    }

    /// The connection `name`, if there is one.
    pub async fn connection(&self, name: &str) -> Result<Option<Connection>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM connections WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(read_row).transpose()?)
    }

    /// Every connection, by name.
    pub async fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM connections ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(read_row).collect::<Result<Vec<_>, _>>()?)
    }

    /// The connection whose `GHL_LOCATION_ID` is `location_id`, if any: how
    /// a GHL webhook finds its tenant.
    pub async fn connection_for_location(
        &self,
        location_id: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM connections WHERE location_id = $1"
        )))
        .bind(location_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(read_row).transpose()?)
    }

    /// Enables the connection `name` (its reason is cleared); false when
    /// there is no such connection.
    pub async fn enable_connection(&self, name: &str) -> Result<bool, StoreError> {
        let _turn = self.write_gate(super::Writer::Other).await;
        let done = sqlx::query(
            "UPDATE connections SET enabled = 1, disabled_reason = NULL, updated_at = $1 \
             WHERE name = $2",
        )
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Disables the connection `name` with `reason` (shown by `connection
    /// list` and `status`): its events are kept, not delivered. False when
    /// there is no such connection.
    pub async fn disable_connection(&self, name: &str, reason: &str) -> Result<bool, StoreError> {
        let _turn = self.write_gate(super::Writer::Other).await;
        let done = sqlx::query(
            "UPDATE connections SET enabled = 0, disabled_reason = $1, updated_at = $2 \
             WHERE name = $3",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the connection `name` and its secrets (its events and logs
    /// stay); false when there is no such connection.
    pub async fn remove_connection(&self, name: &str) -> Result<bool, StoreError> {
        let _turn = self.write_gate(super::Writer::Other).await;
        let done = sqlx::query("DELETE FROM connections WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether any connection holds a sealed value (a variable or a token):
    /// `serve` refuses to start then without `MAPPER_SECRET_KEY`.
    pub async fn has_sealed_secrets(&self) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM connections \
             WHERE vars <> '{}' OR access_token IS NOT NULL OR refresh_token IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get(0)?;
        Ok(n > 0)
    }

    /// Takes the refresh lease of the connection `name` for `lease_ms`, if
    /// its tokens are still at `expected_version` and no other replica holds
    /// an unexpired lease. True: this caller refreshes, then stores the
    /// result with [`Store::store_tokens`]. False: another replica is
    /// refreshing or has refreshed; read the connection again (after a
    /// moment) for the new tokens.
    pub async fn claim_token_refresh(
        &self,
        name: &str,
        expected_version: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_gate(super::Writer::Other).await;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE connections SET refresh_lease_until = $1 \
             WHERE name = $2 AND token_version = $3 \
             AND (refresh_lease_until IS NULL OR refresh_lease_until <= $4)",
        )
        .bind(now.saturating_add(lease_ms))
        .bind(name)
        .bind(expected_version)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores new OAuth tokens for the connection `name` if its tokens are
    /// still at `expected_version` (compare-and-set): true when this write
    /// won (the version is then `expected_version + 1` and any refresh lease
    /// is released), false when another rotation was stored first or the
    /// connection is gone. Sealed with `key`.
    pub async fn store_tokens(
        &self,
        name: &str,
        expected_version: i64,
        tokens: &OAuthTokens,
        key: &SecretKey,
    ) -> Result<bool, StoreError> {
        let access = key.seal_for(
            &token_context(name, "access_token"),
            tokens.access_token.as_bytes(),
        );
        let refresh = key.seal_for(
            &token_context(name, "refresh_token"),
            tokens.refresh_token.as_bytes(),
        );
        let _turn = self.write_gate(super::Writer::Other).await;
        let done = sqlx::query(
            "UPDATE connections SET access_token = $1, access_expires_at = $2, \
             refresh_token = $3, token_version = token_version + 1, refresh_lease_until = NULL, \
             updated_at = $4 WHERE name = $5 AND token_version = $6",
        )
        .bind(access)
        .bind(tokens.access_expires_at)
        .bind(refresh)
        .bind(now_ms())
        .bind(name)
        .bind(expected_version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// What one call to the provider's token endpoint with a refresh token
/// gave (the caller makes the call: the store never talks HTTP).
#[derive(Debug)]
pub enum RefreshOutcome {
    /// A new pair: stored at once, before the new access token is used.
    Refreshed(OAuthTokens),
    /// The provider refused the refresh token for good (GHL's 400
    /// `invalid_grant`): the connection is disabled with this reason.
    Refused(String),
    /// No answer, or one that may go away (5xx, 429, a timeout): the lease
    /// is released and the caller tries again later.
    Failed(String),
}

/// How [`Store::access_token`] keeps a connection's access token fresh.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// Refresh when the access token expires within this many ms.
    pub refresh_before_ms: i64,
    /// How long a replica's refresh lease lasts: longer than one call to
    /// the token endpoint with its timeout.
    pub lease_ms: i64,
    /// How often a replica that lost the lease reads the connection again.
    pub poll: std::time::Duration,
    /// How long it waits for the other replica's result before giving up.
    pub wait: std::time::Duration,
}

impl Default for TokenPolicy {
    fn default() -> TokenPolicy {
        TokenPolicy {
            refresh_before_ms: 5 * 60 * 1000,
            lease_ms: 30_000,
            poll: std::time::Duration::from_millis(100),
            wait: std::time::Duration::from_secs(35),
        }
    }
}

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No connection has that name.
    #[error("no connection is named `{0}`")]
    NotFound(String),
    /// The connection is disabled.
    #[error("the connection `{name}` is disabled: {reason}")]
    Disabled {
        /// The connection.
        name: String,
        /// Why.
        reason: String,
    },
    /// The connection holds no OAuth tokens (it uses a PIT, or was never installed).
    #[error("the connection `{0}` has no OAuth tokens")]
    NoTokens(String),
    /// The provider refused the refresh token; the connection is now disabled.
    #[error("the connection `{name}` was disabled: {reason}")]
    Refused {
        /// The connection.
        name: String,
        /// The reason stored with it.
        reason: String,
    },
    /// The refresh failed for now.
    #[error("cannot refresh the access token of `{name}` now: {reason}")]
    Failed {
        /// The connection.
        name: String,
        /// What happened.
        reason: String,
    },
    /// Another replica held the lease longer than [`TokenPolicy::wait`].
    #[error("another replica is refreshing the access token of `{0}`; try again shortly")]
    Busy(String),
    /// A stored token did not open.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Releases this caller's refresh lease (after a failed refresh), so
    /// another attempt need not wait for it to run out.
    pub async fn release_token_refresh(
        &self,
        name: &str,
        expected_version: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_gate(super::Writer::Other).await;
        sqlx::query(
            "UPDATE connections SET refresh_lease_until = NULL \
             WHERE name = $1 AND token_version = $2",
        )
        .bind(name)
        .bind(expected_version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A usable access token of the connection `name`, refreshed first when
    /// it expires within [`TokenPolicy::refresh_before_ms`], or when it is
    /// `rejected` (the token a call just got a 401 with). Across every
    /// process on this database one caller refreshes, through `refresh`
    /// (given the refresh token, it calls the token endpoint once); the
    /// others wait for the pair it stores. The new pair is committed before
    /// its access token is returned. One window stays, which no client of a
    /// rotating provider can close: a crash between the provider's answer
    /// and the commit loses the new pair (GHL retires the old refresh token
    /// on use); the next refresh is then refused, and the connection is
    /// disabled with that reason rather than retried forever.
    pub async fn access_token<F, Fut>(
        &self,
        name: &str,
        key: &SecretKey,
        policy: TokenPolicy,
        rejected: Option<&str>,
        refresh: F,
    ) -> Result<String, TokenError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = RefreshOutcome>,
    {
        let started = std::time::Instant::now();
        let mut refresh = Some(refresh);
        loop {
            let Some(c) = self.connection(name).await? else {
                return Err(TokenError::NotFound(name.to_string()));
            };
            if !c.enabled {
                return Err(TokenError::Disabled {
                    name: name.to_string(),
                    reason: c.disabled_reason.unwrap_or_default(),
                });
            }
            let Some(tokens) = c.tokens(key)? else {
                return Err(TokenError::NoTokens(name.to_string()));
            };
            let stale = rejected == Some(tokens.access_token.as_str())
                || tokens.access_expires_at - now_ms() < policy.refresh_before_ms;
            if !stale {
                return Ok(tokens.access_token);
            }
            if self
                .claim_token_refresh(name, c.token_version, policy.lease_ms)
                .await?
                && let Some(refresh) = refresh.take()
            {
                return match refresh(tokens.refresh_token).await {
                    RefreshOutcome::Refreshed(new) => {
                        // Losing the compare-and-set means a replica whose
                        // lease had run out stored a pair first; ours is
                        // still a valid access token for its lifetime.
                        self.store_tokens(name, c.token_version, &new, key).await?;
                        Ok(new.access_token)
                    }
                    RefreshOutcome::Refused(why) => {
                        let reason = format!(
                            "the OAuth refresh was refused ({why}): install the app for this location again"
                        );
                        self.disable_connection(name, &reason).await?;
                        Err(TokenError::Refused {
                            name: name.to_string(),
                            reason,
                        })
                    }
                    RefreshOutcome::Failed(reason) => {
                        self.release_token_refresh(name, c.token_version).await?;
                        Err(TokenError::Failed {
                            name: name.to_string(),
                            reason,
                        })
                    }
                };
            }
            if started.elapsed() >= policy.wait {
                return Err(TokenError::Busy(name.to_string()));
            }
            tokio::time::sleep(policy.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_fit_a_url_segment() {
        for ok in ["default", "acme-dental", "loc_42", "A"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65), "a?b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
