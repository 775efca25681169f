//! Work that must not slow a `follow` session's micro-batches or a server's requests: a
//! thread of its own at the lowest CPU priority, with a runtime of its own, so it uses the
//! cores only while they would idle (a merge of `customer_tags`, a server's index load).
//!
//! Owns: starting such a thread. Must not: decide what runs on it.

/// Run `work` (a future made on the new thread) to its end on a thread named `name` at the
/// lowest CPU priority; the handle gives its output.
pub fn at_lowest_priority<T, F>(name: &str, work: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<T>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lowest_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for background work");
            runtime.block_on(work())
        })
        .expect("starting a background thread")
}

/// Give the calling thread (and the threads it starts) the lowest CPU priority. On Linux a
/// thread has a scheduling policy of its own: `SCHED_IDLE` runs it only on a core nothing
/// else wants, and a waking batch thread takes the core from it at once (at nice 19, the
/// policy before, it kept a small share and a waking thread could wait for its time slice:
/// a background merge slowed the batches beside it by about a tenth, measured at 1M
/// customers). Its nice value is set to 19 too, which is what `top` shows. Elsewhere the
/// thread keeps its priority.
pub fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; a failure leaves the priority.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(test)]
mod tests {
    /// Background work, and the threads it starts, run at the lowest priority; the thread
    /// that started it keeps its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn background_work_runs_at_the_lowest_priority() {
        let priority = || {
            // SAFETY: reads the calling thread's nice value and scheduling policy.
            unsafe {
                (
                    libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t),
                    libc::sched_getscheduler(0),
                )
            }
        };
        let before = priority();
        let (own, started) = super::at_lowest_priority("test", move || async move {
            (priority(), std::thread::spawn(priority).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(own, (19, libc::SCHED_IDLE));
        assert_eq!(started, own);
        assert_eq!(priority(), before);
        assert_ne!(before.1, libc::SCHED_IDLE);
    }
}
