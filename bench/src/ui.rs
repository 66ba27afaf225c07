//! Progress bars on stderr (hidden when stderr is not a terminal, as in CI logs).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A counting bar.
pub(crate) fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    b.set_message(msg.to_owned());
    b
}

/// A spinner with elapsed time, for timed phases.
pub(crate) fn spinner(msg: &str) -> ProgressBar {
    let b = ProgressBar::new_spinner();
    b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
    b.set_message(msg.to_owned());
    b
}

/// Sleeps for `d`, ticking `bar`.
pub(crate) async fn tick_for(bar: &ProgressBar, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        bar.tick();
        tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())).await;
    }
}

/// Prints a line that survives the bars (also when they are hidden).
pub(crate) fn say(line: impl AsRef<str>) {
    eprintln!("{}", line.as_ref());
}

/// Finishes `bar` with `msg`, printing it as a line when bars are hidden.
pub(crate) fn done(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        say(&msg);
    }
    bar.finish_with_message(msg);
}

/// Writes a markdown report to `out` (if given) and says so.
pub(crate) fn write_report(out: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    if let Some(out) = out {
        std::fs::write(out, text).map_err(|e| anyhow::anyhow!("write {}: {e}", out.display()))?;
        say(format!("wrote {}", out.display()));
    }
    Ok(())
}
