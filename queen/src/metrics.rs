//! Prometheus metrics of the queen, served on `/metrics` in the text format. Names carry the
//! `rbee_queen_` prefix; requests are counted by outcome code (`ok` or a stable error code).

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use rbee_projections::ClusterView;

pub struct QueenMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    time_to_first_token: HistogramVec,
    slot_wait: HistogramVec,
    completion_tokens: IntCounterVec,
    failovers: IntCounterVec,
    workers: IntGaugeVec,
    log_sequence: IntGaugeVec,
    archive: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

impl QueenMetrics {
    pub fn new() -> QueenMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), &["model"])
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        QueenMetrics {
            requests: counter(
                "rbee_queen_requests_total",
                "Chat completion requests by model and outcome code.",
                &["model", "code"],
            ),
            duration: histogram("rbee_queen_request_duration_seconds", "Time from request to its last byte."),
            time_to_first_token: histogram(
                "rbee_queen_time_to_first_token_seconds",
                "Time from request to the first token.",
            ),
            slot_wait: histogram("rbee_queen_slot_wait_seconds", "Time a request waited for a slot (queue wait)."),
            completion_tokens: counter("rbee_queen_completion_tokens_total", "Tokens generated.", &["model"]),
            failovers: counter(
                "rbee_queen_failovers_total",
                "Streams whose worker was lost mid-stream, by outcome: moved to another worker, or failed.",
                &["model", "outcome"],
            ),
            workers: gauge("rbee_queen_workers", "Workers in the registry by state.", &["state"]),
            log_sequence: gauge(
                "rbee_queen_log_sequence",
                "Last RBEE sequence folded into this queen's view.",
                &["stream"],
            ),
            archive: gauge(
                "rbee_queen_archive",
                "The archiver: sequence stored, events behind the view, errors survived, events flagged.",
                &["measure"],
            ),
            registry,
        }
    }

    pub fn request_done(&self, model: &str, code: &str, seconds: f64) {
        self.requests.with_label_values(&[model, code]).inc();
        self.duration.with_label_values(&[model]).observe(seconds);
    }

    pub fn first_token(&self, model: &str, seconds: f64) {
        self.time_to_first_token.with_label_values(&[model]).observe(seconds);
    }

    pub fn slot_waited(&self, model: &str, seconds: f64) {
        self.slot_wait.with_label_values(&[model]).observe(seconds);
    }

    pub fn tokens(&self, model: &str, n: u32) {
        self.completion_tokens.with_label_values(&[model]).inc_by(n as u64);
    }

    pub fn failover(&self, model: &str, moved: bool) {
        self.failovers.with_label_values(&[model, if moved { "moved" } else { "failed" }]).inc();
    }

    /// The text exposition, with the registry's current shape sampled from `view`.
    pub fn render(&self, view: &ClusterView, archive: Option<&rbee_bus::archive::ArchiveStatus>) -> String {
        for state in ["loading", "ready", "draining", "stale"] {
            let n = view.registry.workers.values().filter(|w| w.state.as_str() == state).count();
            self.workers.with_label_values(&[state]).set(n as i64);
        }
        self.log_sequence.with_label_values(&["RBEE"]).set(view.last_seq as i64);
        if let Some(a) = archive {
            let behind = view.last_seq.saturating_sub(a.archived_seq);
            for (measure, value) in [
                ("archived_seq", a.archived_seq),
                ("lag_events", behind),
                ("retries", a.retries),
                ("flagged", a.flagged),
            ] {
                self.archive.with_label_values(&[measure]).set(value as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for QueenMetrics {
    fn default() -> Self {
        Self::new()
    }
}
