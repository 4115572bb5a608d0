//! The tenant registry: one Redis hash (`tenants`), field = tenant id, value = the tenant's
//! record as JSON (written and read by [`crate::tenancy::tenants`]).
//!
//! Tenant states live beside it in a second hash (`tenant-states`), field = tenant id, value =
//! the state as JSON (`{"state":"parked",…}`); a tenant without a field is healthy. They are
//! apart from the records because every replica changes them (parking, un-parking, approval)
//! while records are written once, and because tenants from `O365_TENANTS` have no record but
//! can be parked. Every change is a compare-and-set in Lua ([`TenantRegistry::transition`]):
//! two replicas parking the same tenant keep the first `since`, and an approval cannot revive
//! a tenant offboarded meanwhile.

use super::{Store, StoreResult};
use crate::domain::TenantId;
use redis::AsyncCommands;

/// The Lua that reads a tenant's current state kind into `kind`: KEYS[1] the states hash,
/// ARGV[1] the tenant. An unreadable value counts as `healthy` (it can only have been written
/// by us; a broken one must not wedge the tenant).
macro_rules! current_kind {
    () => {
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local kind = 'healthy'
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' and type(v.state) == 'string' then kind = v.state end
end
"#
    };
}

/// KEYS[1] the states hash; ARGV[1] tenant, ARGV[2] new kind, ARGV[3] new JSON, ARGV[4..] the
/// kinds it may change from. Returns {current kind, 1 if changed}.
const TRANSITION: &str = concat!(
    current_kind!(),
    r#"if kind == ARGV[2] then return {kind, 0} end
for i = 4, #ARGV do
  if ARGV[i] == kind then
    if ARGV[2] == 'healthy' then
      redis.call('HDEL', KEYS[1], ARGV[1])
    else
      redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    end
    return {kind, 1}
  end
end
return {kind, 0}
"#
);

/// Registers a tenant `pending` (`O365_CONSENT_MODE=approval`). KEYS[1] the states hash,
/// KEYS[2] (standalone and Sentinel) the records hash; ARGV[1] tenant, ARGV[2] the pending
/// state JSON, ARGV[3] the record JSON. With KEYS[2], a tenant registered already is left as it
/// is ({'registered', 0}); otherwise its state becomes `pending` (a `since` already pending is
/// kept) and then its record is written ({previous kind, 1}). The state is written first: a
/// script that fails half-way (Redis does not roll back) leaves at most a pending state without
/// a record — not registered, so not served. Never a record without its state, which would read
/// as healthy.
const REGISTER_PENDING: &str = concat!(
    r#"
if #KEYS == 2 and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'registered', 0} end"#,
    current_kind!(),
    r#"if kind ~= 'pending' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
if #KEYS == 2 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
return {kind, 1}
"#
);

/// The tenant registry, see [`Store::tenants`].
pub struct TenantRegistry<'a>(&'a Store);

impl<'a> TenantRegistry<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        TenantRegistry(store)
    }

    fn key(&self) -> String {
        self.0.key("tenants")
    }

    /// The tenant's record JSON, if registered.
    pub async fn get(&self, t: &TenantId) -> StoreResult<Option<String>> {
        let mut c = self.0.conn().await?;
        let r = c.hget(self.key(), t.as_str()).await;
        self.0.observe(r)
    }

    /// Registers (or overwrites) the tenant's record JSON.
    pub async fn put(&self, t: &TenantId, json: &str) -> StoreResult<()> {
        let mut c = self.0.conn().await?;
        let r: Result<(), _> = c.hset(self.key(), t.as_str(), json).await;
        self.0.observe(r)
    }

    /// Removes the tenant: true when it was registered.
    pub async fn remove(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = c.hdel(self.key(), t.as_str()).await;
        self.0.observe(r).map(|n| n > 0)
    }

    fn states_key(&self) -> String {
        self.0.key("tenant-states")
    }

    /// The tenant's state JSON; `None` when healthy.
    pub async fn state(&self, t: &TenantId) -> StoreResult<Option<String>> {
        let mut c = self.0.conn().await?;
        let r = c.hget(self.states_key(), t.as_str()).await;
        self.0.observe(r)
    }

    /// Every tenant's state JSON that is not healthy, by tenant id.
    pub async fn states(&self) -> StoreResult<Vec<(String, String)>> {
        let mut c = self.0.conn().await?;
        let r: Result<Vec<(String, String)>, _> = c.hgetall(self.states_key()).await;
        self.0.observe(r)
    }

    /// Sets the tenant's state to `new` (JSON of kind `new_kind`; `healthy` removes the field)
    /// when its current kind is one of `from` (`healthy` for no field). A tenant already of kind
    /// `new_kind` is left as it is (its `since` kept). Returns the kind it had and whether it
    /// changed.
    pub async fn transition(
        &self,
        t: &TenantId,
        from: &[&str],
        new_kind: &str,
        new: &str,
    ) -> StoreResult<(String, bool)> {
        let mut c = self.0.conn().await?;
        let script = redis::Script::new(TRANSITION);
        let mut inv = script.prepare_invoke();
        inv.key(self.states_key())
            .arg(t.as_str())
            .arg(new_kind)
            .arg(new);
        for f in from {
            inv.arg(*f);
        }
        let r: Result<(String, i64), _> = inv.invoke_async(&mut c).await;
        self.0
            .observe(r)
            .map(|(kind, changed)| (kind, changed == 1))
    }

    /// Registers a new tenant as `pending`, its record and state together (see
    /// [`REGISTER_PENDING`]). Returns false when a record existed already (it was left as it
    /// is, state included).
    ///
    /// Standalone and Sentinel: one script over both hashes, so the tenant is registered
    /// pending or not at all. In a cluster the two deployment-wide hashes lie in different
    /// slots (their names are kept as earlier versions wrote them, so `redis-migrate` and
    /// upgrades need nothing) and no script or MULTI may span slots: the state is written first
    /// and the record after it (`HSETNX`, so a record written meanwhile by another replica or
    /// the CLI stands). What decides that a tenant is served — a record, and a state that is not
    /// `pending` — can then never be seen half-written: between the two writes, or after a
    /// failure between them, the tenant is a pending state without a record, which is not
    /// registered and not served; the next consent completes it.
    pub async fn register_pending(
        &self,
        t: &TenantId,
        record: &str,
        pending: &str,
    ) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let script = redis::Script::new(REGISTER_PENDING);
        let mut inv = script.prepare_invoke();
        inv.key(self.states_key());
        if !self.0.is_cluster() {
            inv.key(self.key());
        }
        inv.arg(t.as_str()).arg(pending).arg(record);
        let r: Result<(String, i64), _> = inv.invoke_async(&mut c).await;
        let (kind, _) = self.0.observe(r)?;
        if kind == "registered" {
            return Ok(false);
        }
        if self.0.is_cluster() {
            let r: Result<bool, _> = c.hset_nx(self.key(), t.as_str(), record).await;
            return self.0.observe(r);
        }
        Ok(true)
    }

    /// Every registered tenant's record JSON, in no particular order.
    pub async fn all(&self) -> StoreResult<Vec<String>> {
        let mut c = self.0.conn().await?;
        let r: Result<Vec<(String, String)>, _> = c.hgetall(self.key()).await;
        self.0
            .observe(r)
            .map(|fields| fields.into_iter().map(|(_, json)| json).collect())
    }
}
