//! What every benchmark measures the same way: medians, and time to the first text delta of a
//! streamed chat completion.

use std::time::Instant;

use futures::StreamExt;

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seconds from sending `request` (a streamed chat completion) to its first text delta; reads the
/// stream to its end so the next measurement starts on an idle worker.
pub async fn seconds_to_first_delta(request: reqwest::RequestBuilder) -> f64 {
    let t0 = Instant::now();
    let mut bytes = request.send().await.expect("the queen answers").bytes_stream();
    let mut seen = String::new();
    let mut first = None;
    while let Some(chunk) = bytes.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on")));
        if first.is_none() && seen.contains("\"content\":\"") && seen.matches("data: ").count() >= 2 {
            first = Some(t0.elapsed().as_secs_f64());
        }
    }
    first.expect("a delta arrived")
}
