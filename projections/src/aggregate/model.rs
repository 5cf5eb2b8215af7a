//! The model aggregate's rules: which nodes hold the model, with which file. Its state is folded
//! from the model's own events ([`apply`]); [`decide`] says what registering or removing records,
//! so several hives registering the same model at once give one registration per node, and the
//! others find it already there.

use std::collections::BTreeMap;

use rbee_bus::{Code, Event, ModelRegistered, ModelRemoved};

/// The nodes that hold the model, each with the sha256 of its file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelState {
    pub nodes: BTreeMap<String, String>,
}

pub fn apply(state: &mut ModelState, event: &Event) {
    match event {
        Event::ModelRegistered(e) => {
            state.nodes.insert(e.node.clone(), e.sha256.clone());
        }
        Event::ModelRemoved(e) => {
            state.nodes.remove(&e.node);
        }
        _ => {}
    }
}

/// What a hive asks of a model on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelCommand {
    /// The file is on the node, verified: catalogue it.
    Register(ModelRegistered),
    /// The file left the node (deleted on request, or found missing): uncatalogue it.
    Remove { model: String, node: String, reason: String },
}

/// The events `command` records. An empty list: the catalog already says so.
pub fn decide(state: &ModelState, command: &ModelCommand) -> Result<Vec<Event>, Code> {
    match command {
        ModelCommand::Register(registered) => {
            if state.nodes.get(&registered.node) == Some(&registered.sha256) {
                Ok(vec![])
            } else {
                Ok(vec![Event::ModelRegistered(registered.clone())])
            }
        }
        ModelCommand::Remove { model, node, reason } => Ok(match state.nodes.get(node) {
            Some(_) => vec![Event::ModelRemoved(ModelRemoved {
                model: model.clone(),
                node: node.clone(),
                reason: reason.clone(),
            })],
            None => vec![],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(node: &str, sha256: &str) -> ModelRegistered {
        ModelRegistered {
            model: "m".into(),
            node: node.into(),
            path: format!("/models/{node}/m.gguf"),
            size_bytes: 10,
            sha256: sha256.into(),
            memory_required_bytes: 12,
        }
    }

    fn given(events: &[Event]) -> ModelState {
        let mut state = ModelState::default();
        events.iter().for_each(|e| apply(&mut state, e));
        state
    }

    fn removed(node: &str) -> Event {
        Event::ModelRemoved(ModelRemoved { model: "m".into(), node: node.into(), reason: "gone".into() })
    }

    #[test]
    fn a_model_is_registered_once_per_node_and_file() {
        let first = ModelCommand::Register(registered("n1", "aa"));
        assert_eq!(decide(&given(&[]), &first), Ok(vec![Event::ModelRegistered(registered("n1", "aa"))]));
        let there = given(&[Event::ModelRegistered(registered("n1", "aa"))]);
        assert_eq!(decide(&there, &first), Ok(vec![]), "a second hive finds it registered");
        let other_node = ModelCommand::Register(registered("n2", "aa"));
        assert_eq!(decide(&there, &other_node), Ok(vec![Event::ModelRegistered(registered("n2", "aa"))]));
        let new_file = ModelCommand::Register(registered("n1", "bb"));
        assert_eq!(decide(&there, &new_file), Ok(vec![Event::ModelRegistered(registered("n1", "bb"))]));
    }

    #[test]
    fn a_removed_model_is_registered_again() {
        let gone = given(&[Event::ModelRegistered(registered("n1", "aa")), removed("n1")]);
        let again = ModelCommand::Register(registered("n1", "aa"));
        assert_eq!(decide(&gone, &again), Ok(vec![Event::ModelRegistered(registered("n1", "aa"))]));
    }

    #[test]
    fn only_a_catalogued_model_is_removed() {
        let there = given(&[Event::ModelRegistered(registered("n1", "aa"))]);
        let remove = |node: &str| ModelCommand::Remove { model: "m".into(), node: node.into(), reason: "gone".into() };
        assert_eq!(decide(&there, &remove("n1")), Ok(vec![removed("n1")]));
        assert_eq!(decide(&there, &remove("n2")), Ok(vec![]));
        assert_eq!(decide(&given(&[]), &remove("n1")), Ok(vec![]));
    }
}
