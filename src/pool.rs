//! A bounded pool of worker threads over a shared LIFO stack of tasks: the scheduler
//! under [`crate::traverse`], which is its user (tree walks go through `traverse`, not
//! here). Tasks may push more tasks; `run` returns when the stack is empty and no worker
//! is busy, or soon after `cancel` is set. Depth-first order keeps the frontier (and so
//! memory and open descriptors) small. No I/O of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Where a task pushes follow-up work.
pub struct Queue<'g, T> {
    /// The tasks waiting, how many are running, and the tasks split off running ones
    /// ([`Queue::push_first`]), taken before the others.
    state: Mutex<(Vec<T>, usize, Vec<T>)>,
    cv: Condvar,
    threads: usize,
    gate: Option<&'g Gate>,
}

impl<T> Queue<'_, T> {
    pub fn push(&self, t: T) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0.push(t);
        drop(s);
        self.cv.notify_one();
    }

    /// Pushes a task taken before every task [`Queue::push`]ed: the rest of a task
    /// split off for an idle thread, to run now rather than behind the work the task
    /// itself pushes meanwhile.
    pub fn push_first(&self, t: T) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.2.push(t);
        drop(s);
        self.cv.notify_one();
    }

    /// No task is waiting, a thread is free to take one, and (under a gate) a permit
    /// is free for it: work pushed now would run at once. A task with much left to do
    /// then splits it off ([`crate::traverse`]: the rest of a directory's listing, at
    /// the end of a walk when few directories are left).
    pub fn hungry(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.0.is_empty() || !s.2.is_empty() || s.1 >= self.threads {
            return false;
        }
        drop(s);
        self.gate.is_none_or(Gate::has_free)
    }
}

/// A limit on the tasks running at once, shared by several pools: a shard worker
/// walks two or more units at once, each on a pool of its own, and together they run
/// at most `--jobs` tasks. A pool whose unit is draining (its last directories, then
/// the unit's seal and commit) leaves its share to the others instead of idling it.
pub struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    pub fn new(permits: usize) -> Gate {
        Gate {
            free: Mutex::new(permits.max(1)),
            cv: Condvar::new(),
        }
    }

    /// A permit is free now.
    fn has_free(&self) -> bool {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) > 0
    }

    /// Waits for a permit; it is given back when the pass is dropped.
    fn enter(&self) -> Pass<'_> {
        self.take();
        Pass(self)
    }

    fn take(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn give(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }

    /// Runs `wait` with the calling task's permit lent to the others: for a task that
    /// blocks on another task's work (a name of a hard-linked inode waiting for its
    /// first name's copy), so that the permits of a gate are never all held by
    /// waiters. Only from within a task of a pool under this gate; `wait` must hold no
    /// lock that a task needs (the permit is taken back after it returns).
    pub fn lend<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.give();
        let r = wait();
        self.take();
        r
    }
}

/// One permit of a [`Gate`].
struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.give();
    }
}

/// Runs `work` on `threads` threads until all tasks (and those they push) are done.
pub fn run<T: Send>(
    threads: usize,
    initial: Vec<T>,
    cancel: &AtomicBool,
    work: impl Fn(T, &Queue<T>) + Sync,
) {
    run_gated(threads, initial, cancel, None, work)
}

/// [`run`], each task waiting for a permit of `gate` (if any) first.
pub fn run_gated<T: Send>(
    threads: usize,
    initial: Vec<T>,
    cancel: &AtomicBool,
    gate: Option<&Gate>,
    work: impl Fn(T, &Queue<T>) + Sync,
) {
    let q = Queue {
        state: Mutex::new((initial, 0, Vec::new())),
        cv: Condvar::new(),
        threads: threads.max(1),
        gate,
    };
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let task = {
                        let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if cancel.load(Ordering::Relaxed) {
                                st.0.clear();
                                st.2.clear();
                            }
                            if let Some(t) = st.2.pop().or_else(|| st.0.pop()) {
                                st.1 += 1;
                                break Some(t);
                            }
                            if st.1 == 0 {
                                break None;
                            }
                            st = q.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let Some(task) = task else {
                        q.cv.notify_all();
                        return;
                    };
                    {
                        let _pass = gate.map(Gate::enter);
                        work(task, &q);
                    }
                    let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.1 -= 1;
                    let idle = st.1 == 0 && st.0.is_empty() && st.2.is_empty();
                    drop(st);
                    if idle {
                        q.cv.notify_all();
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_every_pushed_task_once() {
        for threads in [1, 8] {
            let seen = AtomicUsize::new(0);
            let cancel = AtomicBool::new(false);
            // A binary tree of depth 12 pushed from its root: 2^13 - 1 tasks.
            run(threads, vec![0u32], &cancel, |depth, q| {
                seen.fetch_add(1, Ordering::Relaxed);
                if depth < 12 {
                    q.push(depth + 1);
                    q.push(depth + 1);
                }
            });
            assert_eq!(seen.load(Ordering::Relaxed), (1 << 13) - 1);
        }
    }

    #[test]
    fn pools_sharing_a_gate_run_no_more_tasks_at_once_than_its_permits() {
        let gate = Gate::new(3);
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    run_gated(4, (0..40u32).collect(), &cancel, Some(&gate), |_, _| {
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                });
            }
        });
        // Eight threads over 80 tasks of 2 ms: without the gate they run 8 at once.
        assert_eq!(peak.into_inner(), 3);
    }

    #[test]
    fn a_task_that_lends_its_permit_while_waiting_lets_another_pool_run() {
        let gate = Gate::new(1);
        let cancel = AtomicBool::new(false);
        let (started, flag) = (AtomicBool::new(false), AtomicBool::new(false));
        let saw = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Pool A's one task takes the one permit and waits (up to 5 s) for pool
            // B's task, which needs a permit to run.
            s.spawn(|| {
                run_gated(1, vec![()], &cancel, Some(&gate), |_, _| {
                    started.store(true, Ordering::SeqCst);
                    let t0 = std::time::Instant::now();
                    gate.lend(|| {
                        while !flag.load(Ordering::SeqCst)
                            && t0.elapsed() < std::time::Duration::from_secs(5)
                        {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    });
                    saw.store(flag.load(Ordering::SeqCst), Ordering::SeqCst);
                })
            });
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            s.spawn(|| {
                run_gated(1, vec![()], &cancel, Some(&gate), |_, _| {
                    flag.store(true, Ordering::SeqCst);
                })
            });
        });
        assert!(saw.into_inner(), "pool B ran only after pool A's wait");
    }

    #[test]
    fn cancel_stops_early() {
        let seen = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        run(4, vec![0u32], &cancel, |d, q| {
            if seen.fetch_add(1, Ordering::Relaxed) == 10 {
                cancel.store(true, Ordering::Relaxed);
            }
            q.push(d + 1);
            q.push(d + 1);
        });
        assert!(seen.load(Ordering::Relaxed) < 100);
    }
}
