//! `o365-relay redis-migrate --from URL`: copies a standalone Redis's keys to the Redis this
//! deployment is configured with (`O365_REDIS_MODE`, `O365_REDIS_URL`), under the names that
//! topology gives them — the step from one server to a Redis Cluster
//! (docs/OPERATIONS.md, "Outgrowing one machine"; [`o365_relay::store::migrate`]).

use super::{Failure, Outcome};
use o365_relay::config::{RedisMode, RedisSettings, Settings};
use o365_relay::store::{migrate, Store};

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The standalone Redis to copy from (`redis://` or `rediss://`; the same prefix,
    /// O365_REDIS_PREFIX, and CA, O365_REDIS_CA_PATH).
    #[arg(long)]
    from: String,
}

pub async fn run(args: MigrateArgs) -> Outcome {
    let settings = super::settings()?;
    if !(args.from.starts_with("redis://") || args.from.starts_with("rediss://")) {
        return Err(Failure::usage(
            "--from must be a redis:// or rediss:// URL of one standalone Redis",
        ));
    }
    let source_settings = RedisSettings {
        mode: RedisMode::Standalone,
        urls: vec![args.from.into()],
        prefix: settings.redis.prefix.clone(),
        ca: settings.redis.ca.clone(),
    };
    let source =
        Store::open(&source_settings).map_err(|e| Failure::usage(format!("--from: {e}")))?;
    let target = Store::open(&settings.redis).map_err(|e| Failure::Failed(e.into()))?;
    check_distinct(&settings, &source_settings)?;
    let done = migrate::copy(&source, &target)
        .await
        .map_err(|e| Failure::Failed(e.into()))?;
    println!(
        "copied {} keys to the {} Redis ({} already there, left as they were; {} belonging to running replicas not copied; {} expired meanwhile)",
        done.copied,
        settings.redis.mode.as_str(),
        done.present,
        done.skipped,
        done.vanished
    );
    Ok(())
}

/// Copying a Redis onto itself would do nothing useful: refuse it.
fn check_distinct(settings: &Settings, source: &RedisSettings) -> Result<(), Failure> {
    let same = settings.redis.mode == RedisMode::Standalone
        && settings.redis.urls.first().map(|u| u.expose())
            == source.urls.first().map(|u| u.expose());
    if same {
        return Err(Failure::usage(
            "--from is the Redis this deployment is configured with (O365_REDIS_URL)",
        ));
    }
    Ok(())
}
