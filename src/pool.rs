//! A bounded pool of worker threads over a shared LIFO stack of tasks: the scheduler
//! under [`crate::traverse`], which is its user (tree walks go through `traverse`, not
//! here). Tasks may push more tasks; `run` returns when the stack is empty and no worker
//! is busy, or soon after `cancel` is set. Depth-first order keeps the frontier (and so
//! memory and open descriptors) small. No I/O of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// Where a task pushes follow-up work.
pub struct Queue<T> {
    state: Mutex<(Vec<T>, usize)>,
    cv: Condvar,
}

impl<T> Queue<T> {
    pub fn push(&self, t: T) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0.push(t);
        drop(s);
        self.cv.notify_one();
    }
}

/// Runs `work` on `threads` threads until all tasks (and those they push) are done.
pub fn run<T: Send>(
    threads: usize,
    initial: Vec<T>,
    cancel: &AtomicBool,
    work: impl Fn(T, &Queue<T>) + Sync,
) {
    let q = Queue {
        state: Mutex::new((initial, 0)),
        cv: Condvar::new(),
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
                            }
                            if let Some(t) = st.0.pop() {
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
                    work(task, &q);
                    let mut st = q.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.1 -= 1;
                    let idle = st.1 == 0 && st.0.is_empty();
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
