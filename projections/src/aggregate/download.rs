//! The download aggregate's rules: one hive process holds the download of a model to a node at a
//! time, and a new claim resumes what an ended holder left. Its state is the [`Download`] folded
//! by [`crate::Downloads::apply`]; [`decide`] says whether a claim is recorded and from where it
//! resumes. What only the claiming hive can see (is the holder's process alive, is the finished
//! file in place, how much of the partial file it can resume) comes in with the command. The
//! holder's own progress, retries and outcome are facts it reports, appended after its claim.

use rbee_bus::{Code, DownloadStarted, Event};

use crate::{Download, DownloadStatus};

/// A hive process asks to download a model to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The claim as it would start from zero; `resume_from` and `total_bytes` are decided.
    pub started: DownloadStarted,
    /// Whether the current holder's process is still at work.
    pub holder_alive: bool,
    /// Whether a finished download's file is in place with its recorded size.
    pub finished_in_place: bool,
    /// Bytes of the partial file the hive can resume from (0: none, or its hash state is unusable).
    pub resumable_bytes: u64,
}

/// The events a claim records: none when the finished file is in place; refused with
/// `DOWNLOAD_TAKEN_OVER` while a live holder has it.
pub fn decide(state: Option<&Download>, claim: &Claim) -> Result<Vec<Event>, Code> {
    let active = state.filter(|d| d.status == DownloadStatus::Active);
    if active.is_some() && claim.holder_alive {
        return Err(Code::DownloadTakenOver);
    }
    if state.is_some_and(|d| d.status == DownloadStatus::Finished) && claim.finished_in_place {
        return Ok(vec![]);
    }
    let resumed = active.filter(|d| d.offset > 0 && claim.resumable_bytes >= d.offset);
    Ok(vec![Event::DownloadStarted(DownloadStarted {
        resume_from: resumed.map_or(0, |d| d.offset),
        total_bytes: resumed.map_or(0, |d| d.total_bytes),
        ..claim.started.clone()
    })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Downloads;
    use rbee_bus::*;

    const ID: &str = "n1.m";

    fn started(owner: &str, resume_from: u64, total_bytes: u64) -> DownloadStarted {
        DownloadStarted {
            download: ID.into(),
            node: "n1".into(),
            model: "m".into(),
            source: "hf:org/repo".into(),
            total_bytes,
            sha256: None,
            resume_from,
            owner: owner.into(),
            pid: 9,
        }
    }

    fn progressed(offset: u64) -> Event {
        Event::DownloadProgressed(DownloadProgressed {
            download: ID.into(),
            offset,
            total_bytes: 100,
            sha256_state: vec![0; 32],
            bytes_per_sec: 1,
        })
    }

    fn given(events: Vec<Event>) -> Option<Download> {
        let mut downloads = Downloads::default();
        super::super::recorded(events).iter().for_each(|rec| downloads.apply(rec));
        downloads.by_id.get(ID).cloned()
    }

    fn claim(holder_alive: bool, finished_in_place: bool, resumable_bytes: u64) -> Claim {
        Claim { started: started("me", 0, 0), holder_alive, finished_in_place, resumable_bytes }
    }

    fn holding_at_64() -> Option<Download> {
        given(vec![Event::DownloadStarted(started("other", 0, 0)), progressed(64)])
    }

    #[test]
    fn the_first_claim_starts_from_zero() {
        assert_eq!(decide(None, &claim(false, false, 0)), Ok(vec![Event::DownloadStarted(started("me", 0, 0))]));
    }

    #[test]
    fn a_live_holder_keeps_the_download() {
        assert_eq!(decide(holding_at_64().as_ref(), &claim(true, false, 64)), Err(Code::DownloadTakenOver));
    }

    #[test]
    fn an_ended_holder_is_resumed_from_its_last_recorded_chunk_when_the_bytes_are_there() {
        let state = holding_at_64();
        let resumed = Event::DownloadStarted(started("me", 64, 100));
        assert_eq!(decide(state.as_ref(), &claim(false, false, 64)), Ok(vec![resumed.clone()]));
        assert_eq!(decide(state.as_ref(), &claim(false, false, 80)), Ok(vec![resumed]));
        let from_zero = Event::DownloadStarted(started("me", 0, 0));
        assert_eq!(decide(state.as_ref(), &claim(false, false, 10)), Ok(vec![from_zero.clone()]));
        assert_eq!(decide(state.as_ref(), &claim(false, false, 0)), Ok(vec![from_zero]));
    }

    #[test]
    fn a_finished_download_is_not_claimed_while_its_file_is_in_place() {
        let finished =
            Event::DownloadFinished(DownloadFinished { download: ID.into(), size_bytes: 64, sha256: "aa".into() });
        let state = given(vec![Event::DownloadStarted(started("other", 0, 0)), progressed(64), finished]);
        assert_eq!(decide(state.as_ref(), &claim(false, true, 0)), Ok(vec![]));
        let again = Event::DownloadStarted(started("me", 0, 0));
        assert_eq!(decide(state.as_ref(), &claim(false, false, 0)), Ok(vec![again]));
    }

    #[test]
    fn a_failed_download_is_claimed_again_from_zero() {
        let failed =
            Event::DownloadFailed(DownloadFailed { download: ID.into(), code: Code::DiskFull, message: "full".into() });
        let state = given(vec![Event::DownloadStarted(started("other", 0, 0)), progressed(64), failed]);
        assert_eq!(
            decide(state.as_ref(), &claim(true, false, 64)),
            Ok(vec![Event::DownloadStarted(started("me", 0, 0))])
        );
    }
}
