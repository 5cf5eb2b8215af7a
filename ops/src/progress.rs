//! Following events as they happen, for people: the next event of one or two subscriptions, and a
//! download's progress as a bar on a terminal (a line per tenth elsewhere).

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rbee_bus::Event;

use crate::error::CliResult;
use crate::live::unavailable;

/// The next decodable event from either subscription (the second may be absent).
pub async fn next_event(a: &mut async_nats::Subscriber, b: Option<&mut async_nats::Subscriber>) -> CliResult<Event> {
    let mut b = b;
    loop {
        let msg = tokio::select! {
            m = a.next() => m,
            m = async { match b.as_deref_mut() { Some(b) => b.next().await, None => std::future::pending().await } } => m,
        };
        let Some(msg) = msg else { return Err(unavailable("event subscription ended")) };
        if let Ok(env) = rbee_bus::Envelope::decode(msg.headers.as_ref(), &msg.payload) {
            return Ok(env.event);
        }
    }
}

/// Bytes as megabytes with one decimal, for people.
pub fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

/// A byte progress bar on a terminal; elsewhere (logs, pipes) a line per tenth.
pub struct Bar {
    bar: ProgressBar,
    printed_tenth: std::cell::Cell<u64>,
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar { bar, printed_tenth: std::cell::Cell::new(0) }
    }

    /// Shows what a download event says: the bar's length and position, resumption, retries.
    pub fn show(&self, event: &Event) {
        match event {
            Event::DownloadStarted(s) => {
                self.length(s.total_bytes);
                if s.resume_from > 0 {
                    let percent = (s.resume_from * 100).checked_div(s.total_bytes).unwrap_or(0);
                    self.say(format!("Resuming from {percent}% ({} of {} MB)", mb(s.resume_from), mb(s.total_bytes)));
                }
                self.position(s.resume_from);
            }
            Event::DownloadProgressed(p) => {
                self.length(p.total_bytes);
                self.position(p.offset);
            }
            Event::DownloadRetried(r) => {
                self.say(format!(
                    "attempt {} failed ({}: {}); retrying in {:.1}s",
                    r.attempt,
                    r.code,
                    r.message,
                    r.delay_ms as f64 / 1000.0
                ));
            }
            Event::DownloadFinished(f) => {
                self.length(f.size_bytes);
                self.position(f.size_bytes);
                self.say(format!("downloaded {} MB, sha256 {} verified", mb(f.size_bytes), f.sha256));
            }
            _ => {}
        }
    }

    /// A line above the bar (or alone, without a terminal).
    pub fn say(&self, line: String) {
        if self.bar.is_hidden() { println!("{line}") } else { self.bar.println(line) }
    }

    fn length(&self, total: u64) {
        if total > 0 {
            self.bar.set_length(total);
        }
    }

    fn position(&self, offset: u64) {
        self.bar.set_position(offset);
        let total = self.bar.length().unwrap_or(0);
        if self.bar.is_hidden() && total > 0 {
            let tenth = offset * 10 / total;
            if tenth > self.printed_tenth.get() {
                self.printed_tenth.set(tenth);
                println!("{}% ({} of {} MB)", tenth * 10, mb(offset), mb(total));
            }
        }
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }

    /// Leaves a started bar where it stopped; one that never started leaves no trace.
    pub fn abandon(&self) {
        if self.bar.is_finished() {
            return;
        }
        if self.bar.length().unwrap_or(0) > 0 { self.bar.abandon() } else { self.bar.finish_and_clear() }
    }
}
