//! Connections (tenants) in delivery: the app's executor delivers the
//! `default` connection's events and hands every other connection's to that
//! connection's own executor, or says why they wait.

use super::{Executor, limiter};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A stored connection as delivery sees it.
pub enum Tenant {
    /// Its own executor: its variables, headers, id caches, rate limits and
    /// people's locks; the journal writer is shared.
    Ready(Arc<Executor>),
    /// Disabled (`mapper connection disable`, a refused token): its events
    /// are kept, not delivered, and say why.
    Disabled(String),
}

/// How long an event of a connection that cannot deliver waits before it is
/// looked at again: long enough not to spin, short enough that enabling or
/// adding the connection is soon followed by its deliveries.
pub(super) const TENANT_WAIT: Duration = Duration::from_secs(60);

impl Executor {
    /// This executor, handing the events of the other connections to
    /// `tenants` (each built with [`Executor::sharing_journal_with`] this one).
    pub fn with_tenants(mut self, tenants: HashMap<String, Tenant>) -> Executor {
        self.tenants = Arc::new(tenants);
        self
    }

    /// This executor, writing through `parent`'s journal writer and seeing
    /// its writes in flight (a connection's executor beside the default one).
    pub fn sharing_journal_with(mut self, parent: &Executor) -> Executor {
        self.journal = parent.journal.clone();
        self.in_flight = parent.in_flight.clone();
        self
    }

    /// The rate-limit windows of `connection`'s executor, when it has one
    /// (a reloaded tenant keeps counting in its predecessor's).
    pub fn tenant_limits(&self, connection: &str) -> Option<Arc<limiter::Limiter>> {
        match self.tenants.get(connection) {
            Some(Tenant::Ready(tenant)) => Some(tenant.http.limiter.clone()),
            _ => None,
        }
    }

    /// This executor, counting its requests in `limiter`'s windows.
    pub fn with_limits(mut self, limiter: Arc<limiter::Limiter>) -> Executor {
        self.http.limiter = limiter;
        self
    }

    /// Which executor delivers `connection`'s events, or why none does.
    pub(super) fn for_connection(&self, connection: &str) -> Result<&Executor, String> {
        if connection == crate::store::DEFAULT_CONNECTION {
            return Ok(self);
        }
        // Kept under `VARIABLE=value` by a source's `route:` when no
        // connection had that value: delivered by the one that has it now.
        if let Some((variable, value)) = connection.split_once('=') {
            if self.env.get(variable).is_some_and(|v| v == value) {
                return Ok(self);
            }
            return self
                .tenants
                .values()
                .find_map(|t| match t {
                    Tenant::Ready(tenant)
                        if tenant.env.get(variable).is_some_and(|v| v == value) =>
                    {
                        Some(&**tenant)
                    }
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "no connection has {variable} = {value}; its events are kept: add one with `mapper connection add NAME --set {variable}={value} …`"
                    )
                });
        }
        match self.tenants.get(connection) {
            Some(Tenant::Ready(tenant)) => Ok(tenant),
            Some(Tenant::Disabled(reason)) => Err(format!(
                "connection `{connection}` is disabled ({reason}); its events are kept: `mapper connection enable {connection}` delivers them"
            )),
            None => Err(format!(
                "no connection is named `{connection}`; its events are kept: add it with `mapper connection add {connection} --set …`"
            )),
        }
    }
}
