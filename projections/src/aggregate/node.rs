//! The node aggregate's rules. A node's events are its hive's registration (a fact it reports) and
//! the commands addressed to it; a command depends on no earlier event of the node, so [`decide`]
//! needs no state: it is the one check of a command's names and sources, made by the CLI before it
//! records the command and by the hive again before it acts on one (a command in the log may come
//! from anyone who can write there).

use rbee_bus::model_ref::ModelRef;
use rbee_bus::{Code, Event, ModelPullRequested, ModelRemoveRequested, WorkerStartRequested, subjects};

/// A command to a node's hive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    StartWorker(WorkerStartRequested),
    PullModel(ModelPullRequested),
    RemoveModel(ModelRemoveRequested),
}

fn names(fields: &[(&'static str, &str)]) -> Result<(), Code> {
    fields.iter().try_for_each(|(field, value)| subjects::validate_name(field, value).map_err(|_| Code::InvalidName))
}

/// The event that records `command`, or why it is refused.
pub fn decide(command: &NodeCommand) -> Result<Vec<Event>, Code> {
    match command {
        NodeCommand::StartWorker(c) => {
            names(&[("node", &c.node), ("worker id", &c.worker), ("model", &c.model)])?;
            Ok(vec![Event::WorkerStartRequested(c.clone())])
        }
        NodeCommand::PullModel(c) => {
            names(&[("node", &c.node), ("model", &c.model)])?;
            ModelRef::parse(&c.source).map_err(|_| Code::InvalidModelSource)?;
            Ok(vec![Event::ModelPullRequested(c.clone())])
        }
        NodeCommand::RemoveModel(c) => {
            names(&[("node", &c.node), ("model", &c.model)])?;
            Ok(vec![Event::ModelRemoveRequested(c.clone())])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(worker: &str, model: &str) -> WorkerStartRequested {
        WorkerStartRequested {
            node: "n1".into(),
            worker: worker.into(),
            model: model.into(),
            source: "file:///models/m.gguf".into(),
            sha256: None,
            slots: 1,
            backend: "cpu".into(),
            device: None,
        }
    }

    fn pull(model: &str, source: &str) -> ModelPullRequested {
        ModelPullRequested { node: "n1".into(), model: model.into(), source: source.into(), sha256: None }
    }

    #[test]
    fn a_well_formed_command_is_recorded_as_it_is() {
        let command = start("n1-w1", "m");
        assert_eq!(decide(&NodeCommand::StartWorker(command.clone())), Ok(vec![Event::WorkerStartRequested(command)]));
        let command = pull("m", "hf:org/repo:m.gguf");
        assert_eq!(decide(&NodeCommand::PullModel(command.clone())), Ok(vec![Event::ModelPullRequested(command)]));
        let command = ModelRemoveRequested { node: "n1".into(), model: "m".into() };
        assert_eq!(decide(&NodeCommand::RemoveModel(command.clone())), Ok(vec![Event::ModelRemoveRequested(command)]));
    }

    #[test]
    fn names_that_could_escape_a_subject_or_a_path_are_refused() {
        for bad in ["../etc", "a.b", "rbee.>", "", "x\u{7}", "with space", "ünï"] {
            assert_eq!(decide(&NodeCommand::StartWorker(start(bad, "m"))), Err(Code::InvalidName), "{bad:?}");
            assert_eq!(decide(&NodeCommand::StartWorker(start("w", bad))), Err(Code::InvalidName), "{bad:?}");
            let remove = ModelRemoveRequested { node: bad.into(), model: "m".into() };
            assert_eq!(decide(&NodeCommand::RemoveModel(remove)), Err(Code::InvalidName), "{bad:?}");
        }
    }

    #[test]
    fn a_pull_from_a_source_that_is_no_model_reference_is_refused() {
        assert_eq!(decide(&NodeCommand::PullModel(pull("m", "hf:"))), Err(Code::InvalidModelSource));
        assert_eq!(decide(&NodeCommand::PullModel(pull("m/../x", "hf:org/repo"))), Err(Code::InvalidName));
    }
}
