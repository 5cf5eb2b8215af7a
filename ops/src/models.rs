//! `rbee models`: the model catalog, folded from the log right now.

use crate::error::CliResult;

pub async fn models(nats_url: &str, node: Option<&str>, json: bool) -> CliResult<()> {
    let cluster = crate::live::connect(nats_url).await?;
    let entries: Vec<_> = cluster.view.read(|v| v.catalog.page(node, None, usize::MAX).into_iter().cloned().collect());
    if json {
        println!("{}", serde_json::to_string_pretty(&entries).expect("plain data serializes"));
        return Ok(());
    }
    println!("{:<32} {:<16} {:>10} {:>10}  PATH", "MODEL", "NODE", "SIZE MB", "NEEDS MB");
    for e in &entries {
        let mb = |b: u64| format!("{:.1}", b as f64 / 1_048_576.0);
        println!("{:<32} {:<16} {:>10} {:>10}  {}", e.model, e.node, mb(e.size_bytes), mb(e.memory_required_bytes), e.path);
    }
    if entries.is_empty() {
        println!("(no models)");
    }
    Ok(())
}
