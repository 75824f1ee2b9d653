//! The event stream's retention against the archive: with an archive configured, the stream
//! may keep far less (`archive.stream_retention`), but never so little that it could drop an
//! event the archive does not hold yet. Checked twice: against the configuration (the
//! retention must cover a segment's age plus the tolerated outage), and, before the
//! definitions are applied, against the archive as it stands (its oldest unarchived event
//! must be younger than the new retention with a segment's age to spare).

use std::path::Path;

use async_nats::jetstream;
use xibaar_config::Config;
use xibaar_streams::{Definitions, names};

/// A retention refused for good: waiting does not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RetentionRefused(String);

/// The stream definitions this configuration asks for (built in, or from `dir`), with its
/// replicas and the event stream's retention, refused when the archive could miss events.
pub fn definitions(config: &Config, dir: Option<&Path>) -> anyhow::Result<Definitions> {
    let mut defs = match dir {
        Some(dir) => Definitions::load_dir(dir)?,
        None => Definitions::builtin(),
    }
    .with_replicas(config.nats.stream_replicas);
    if let Some(retention) = config.archive.stream_retention {
        defs = defs.with_max_age(names::EVENTS, retention);
    }
    if config.archive.enabled() {
        let events = defs
            .stream(names::EVENTS)
            .ok_or_else(|| anyhow::anyhow!("the definitions lack {}", names::EVENTS))?;
        config
            .archive
            .check_stream_retention(events.config.max_age)
            .map_err(|m| {
                RetentionRefused(format!("configuration key `archive.stream_retention`: {m}"))
            })?;
    }
    Ok(defs)
}

/// Refuses definitions that shorten the event stream's retention so far that, once applied,
/// it would drop an event the archive does not hold yet. A stream or archive bucket that does
/// not exist yet holds nothing to lose.
pub async fn guard(
    js: &jetstream::Context,
    config: &Config,
    defs: &Definitions,
) -> anyhow::Result<()> {
    let Some(events) = defs.stream(names::EVENTS) else {
        return Ok(());
    };
    let max_age = events.config.max_age;
    if !config.archive.enabled() || max_age.is_zero() {
        return Ok(());
    }
    // Only shortening the retention can drop what the stream keeps now; every other start
    // (the same definitions applied again) is not checked.
    let current = match js.get_stream(names::EVENTS).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => info.config.max_age,
            Err(_) => return Ok(()),
        },
        Err(_) => return Ok(()),
    };
    if !current.is_zero() && current <= max_age {
        return Ok(());
    }
    let Ok(lag) = xibaar_archive::archive_lag(js).await else {
        return Ok(());
    };
    let needed = lag.seconds_behind + config.archive.segment_max_age.as_secs_f64();
    if needed >= max_age.as_secs_f64() {
        return Err(RetentionRefused(format!(
            "{} would keep events {}, but the archive's oldest unarchived event (sequence {}) is \
             {:.0}s old: applying this now would drop events the archive does not hold yet. Let \
             the archiver catch up (`xibaar lag`) first",
            names::EVENTS,
            humantime::format_duration(max_age),
            lag.archived_through + 1,
            lag.seconds_behind
        ))
        .into());
    }
    Ok(())
}
