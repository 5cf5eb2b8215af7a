//! The threads that run a forward pass together: the caller and `size - 1` helpers. A pass has many
//! short parallel sections (eight per layer); between them the helpers spin briefly instead of
//! sleeping, so a section starts without a wake-up (with a sleeping pool, the wake-ups cost a
//! fifth of a decode step). Outside a pass the helpers sleep. Spinning yields the CPU often, so a
//! machine with more busy threads than cores still makes progress.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A section's work with its lifetime erased; valid while the section runs (see [`Team::run`]).
type Job = &'static (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped when a section starts.
    epoch: AtomicU64,
    job: Mutex<Option<Job>>,
    /// Helpers still working on the current section.
    pending: AtomicUsize,
    /// A pass is under way: helpers spin between sections.
    active: AtomicBool,
    /// Where helpers sleep between passes.
    wake: (Mutex<()>, Condvar),
    panicked: AtomicBool,
    stop: AtomicBool,
}

pub struct Team {
    size: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

/// Spins before yielding the CPU once.
const SPINS_PER_YIELD: u32 = 64;

impl Team {
    pub fn new(size: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            active: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let mut helpers = Vec::new();
        for index in 1..size.max(1) {
            let shared = shared.clone();
            helpers.push(
                std::thread::Builder::new().name(format!("inference-{index}")).spawn(move || helper(&shared, index))?,
            );
        }
        Ok(Team { size: size.max(1), shared, helpers })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `body` as one pass: between its sections the helpers wait by spinning.
    pub fn pass<R>(&self, body: impl FnOnce() -> R) -> R {
        self.shared.active.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.1.notify_all();
        }
        let result = catch_unwind(AssertUnwindSafe(body));
        self.shared.active.store(false, Ordering::SeqCst);
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Runs `work(i)` on every thread of the team (`i` in `0..size`, the caller is 0) and returns
    /// when all have finished.
    pub fn run(&self, work: &(dyn Fn(usize) + Sync)) {
        if self.size == 1 {
            return work(0);
        }
        // SAFETY: the erased reference is used only until `pending` is back to zero, which this
        // function waits for before returning or unwinding; the job is cleared before returning.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(work) };
        *self.shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        self.shared.pending.store(self.size - 1, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if !self.shared.active.load(Ordering::SeqCst) {
            let _guard = self.shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.1.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| work(0)));
        let mut spins = 0u32;
        while self.shared.pending.load(Ordering::SeqCst) != 0 {
            spin(&mut spins);
        }
        *self.shared.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Err(panic) = mine {
            resume_unwind(panic);
        }
        if self.shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("an inference thread panicked");
        }
    }

    /// Calls `work(i, chunk)` for every `chunk_len`-long chunk of `data` (the last may be shorter),
    /// the chunks handed out to the team's threads as they become free.
    pub fn for_each_chunk<T: Send>(&self, data: &mut [T], chunk_len: usize, work: impl Fn(usize, &mut [T]) + Sync) {
        let (len, chunk_len) = (data.len(), chunk_len.max(1));
        let chunks = len.div_ceil(chunk_len);
        let next = AtomicUsize::new(0);
        let base = SendPtr(data.as_mut_ptr());
        self.run(&|_| {
            let base = &base;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chunks {
                    return;
                }
                let start = i * chunk_len;
                // SAFETY: each chunk index is taken once, so the chunks handed out are disjoint
                // parts of `data`, which stays borrowed mutably until `run` returns.
                let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), chunk_len.min(len - start)) };
                work(i, chunk);
            }
        });
    }
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand out disjoint chunks of a slice of `T: Send` (see `for_each_chunk`).
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn spin(spins: &mut u32) {
    *spins += 1;
    if (*spins).is_multiple_of(SPINS_PER_YIELD) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn helper(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::SeqCst);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if shared.active.load(Ordering::SeqCst) {
                spin(&mut spins);
                continue;
            }
            // Between passes: sleep until woken (the timeout guards a missed notification).
            let guard = shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            if shared.epoch.load(Ordering::SeqCst) == seen
                && !shared.active.load(Ordering::SeqCst)
                && !shared.stop.load(Ordering::SeqCst)
            {
                let _ = shared.wake.1.wait_timeout(guard, Duration::from_millis(50));
            }
        }
        let job = *shared.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(work) = job
            && catch_unwind(AssertUnwindSafe(|| work(index))).is_err()
        {
            shared.panicked.store(true, Ordering::SeqCst);
        }
        shared.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.1.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_handed_out_once() {
        let team = Team::new(3).unwrap();
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7)] {
            let mut data = vec![0u32; len];
            team.pass(|| {
                team.for_each_chunk(&mut data, chunk, |i, part| part.iter_mut().for_each(|v| *v += i as u32 + 1))
            });
            let expected: Vec<u32> = (0..len).map(|j| (j / chunk) as u32 + 1).collect();
            assert_eq!(data, expected);
        }
    }

    #[test]
    fn every_thread_runs_each_section_and_sections_outside_a_pass_work_too() {
        let team = Team::new(4).unwrap();
        let seen = AtomicUsize::new(0);
        team.run(&|i| {
            seen.fetch_or(1 << i, Ordering::SeqCst);
        });
        assert_eq!(seen.load(Ordering::SeqCst), 0b1111);
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| team.run(&|i| assert_ne!(i, 1, "helper fails"))));
        assert!(result.is_err());
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
