//! The model catalog: which models each node holds, where, and how big, folded from events.

use std::collections::BTreeMap;

use rbee_bus::{Event, Recorded};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub model: String,
    pub node: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub memory_required_bytes: u64,
}

/// Models per node. Keyed by (model, node) so "who has model M" is a range scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub entries: BTreeMap<(String, String), CatalogEntry>,
}

impl Catalog {
    pub fn apply(&mut self, rec: &Recorded) {
        if let Event::ModelRemoved(e) = &rec.envelope.event {
            self.entries.remove(&(e.model.clone(), e.node.clone()));
        }
        if let Event::ModelRegistered(e) = &rec.envelope.event {
            self.entries.insert(
                (e.model.clone(), e.node.clone()),
                CatalogEntry {
                    model: e.model.clone(),
                    node: e.node.clone(),
                    path: e.path.clone(),
                    size_bytes: e.size_bytes,
                    sha256: e.sha256.clone(),
                    memory_required_bytes: e.memory_required_bytes,
                },
            );
        }
    }

    /// The entry for a model on a node.
    pub fn get(&self, model: &str, node: &str) -> Option<&CatalogEntry> {
        self.entries.get(&(model.to_string(), node.to_string()))
    }

    /// One page of entries in (model, node) order, optionally only those on `node`, starting after
    /// the key `after` (the last key of the previous page).
    pub fn page(&self, node: Option<&str>, after: Option<&(String, String)>, limit: usize) -> Vec<&CatalogEntry> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
        self.entries
            .range((start, Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| node.is_none_or(|n| e.node == n))
            .take(limit)
            .collect()
    }

    /// Whether any node holds the model.
    pub fn knows(&self, model: &str) -> bool {
        self.entries.range((model.to_string(), String::new())..).next().is_some_and(|((m, _), _)| m == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::*;

    fn registered(model: &str, node: &str) -> Recorded {
        let event = Event::ModelRegistered(ModelRegistered {
            model: model.into(),
            node: node.into(),
            path: format!("/models/{model}.gguf"),
            size_bytes: 98_362_432,
            sha256: "ab".repeat(32),
            memory_required_bytes: estimated_memory_bytes(98_362_432),
        });
        Recorded {
            stream_seq: 1,
            subject: subjects::for_event(&event),
            envelope: Envelope::new(event, 1, &Meta::default()),
        }
    }

    #[test]
    fn a_registered_model_is_known_on_its_node_only() {
        let mut catalog = Catalog::default();
        catalog.apply(&registered("m1", "n1"));
        assert!(catalog.knows("m1"));
        assert!(!catalog.knows("m"), "a prefix is not a model");
        assert!(!catalog.knows("m10"));
        assert_eq!(catalog.get("m1", "n1").unwrap().size_bytes, 98_362_432);
        assert!(catalog.get("m1", "n2").is_none());
    }

    #[test]
    fn pages_cover_every_entry_once_in_order() {
        let mut catalog = Catalog::default();
        for i in 0..25 {
            catalog.apply(&registered(&format!("m{i:02}"), if i % 2 == 0 { "n1" } else { "n2" }));
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = catalog.page(Some("n1"), after.as_ref(), 4);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| (e.model.clone(), e.node.clone()));
            seen.extend(page.iter().map(|e| e.model.clone()));
        }
        let expected: Vec<String> = (0..25).step_by(2).map(|i| format!("m{i:02}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(catalog.page(None, None, 100).len(), 25);
    }

    #[test]
    fn a_removed_model_leaves_only_its_node() {
        let mut catalog = Catalog::default();
        catalog.apply(&registered("m1", "n1"));
        catalog.apply(&registered("m1", "n2"));
        let event =
            Event::ModelRemoved(ModelRemoved { model: "m1".into(), node: "n1".into(), reason: "file gone".into() });
        catalog.apply(&Recorded {
            stream_seq: 3,
            subject: subjects::for_event(&event),
            envelope: Envelope::new(event, 3, &Meta::default()),
        });
        assert!(catalog.get("m1", "n1").is_none());
        assert!(catalog.get("m1", "n2").is_some());
    }

    #[test]
    fn registering_again_on_the_same_node_keeps_one_entry() {
        let mut catalog = Catalog::default();
        catalog.apply(&registered("m1", "n1"));
        catalog.apply(&registered("m1", "n1"));
        catalog.apply(&registered("m1", "n2"));
        assert_eq!(catalog.entries.len(), 2);
    }
}
