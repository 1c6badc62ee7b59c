//! The sender pool: plain Rust threads that send through `http` and hand outcomes back to the
//! worker's main thread through a channel. Nothing here touches PostgreSQL.

use crate::http::{self, Attempt, Destination, SharedPolicy};
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug)]
pub struct Job {
    pub delivery_id: i64,
    /// The webhook-id.
    pub message_id: String,
    pub attempt: i32,
    pub attempt_in_cycle: i32,
    pub destination: Arc<Destination>,
    pub body: String,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Outcome {
    pub delivery_id: i64,
    pub attempt: i32,
    pub attempt_in_cycle: i32,
    pub endpoint_id: i64,
    pub result: Attempt,
}

pub struct Pool {
    jobs: Sender<Job>,
    job_rx: Receiver<Job>,
    results_tx: Sender<Outcome>,
    results: Receiver<Outcome>,
    threads: Vec<JoinHandle<()>>,
    agent: ureq::Agent,
}

impl Pool {
    pub fn new(policy: SharedPolicy) -> Pool {
        let (jobs, job_rx) = unbounded();
        let (results_tx, results) = unbounded();
        Pool {
            jobs,
            job_rx,
            results_tx,
            results,
            threads: Vec::new(),
            agent: http::agent(policy),
        }
    }

    /// Grow to `n` sender threads (never shrinks; idle threads just wait).
    pub fn ensure_threads(&mut self, n: usize) {
        while self.threads.len() < n {
            let jobs = self.job_rx.clone();
            let results = self.results_tx.clone();
            let agent = self.agent.clone();
            let main_pid = std::process::id() as libc::pid_t;
            let name = format!("webhook-sender-{}", self.threads.len());
            let handle = http::spawn_without_signals(name, move || {
                sender_thread(agent, jobs, results, main_pid)
            })
            .unwrap_or_else(|e| pgrx::error!("webhook: cannot start a sender thread: {e}"));
            self.threads.push(handle);
        }
    }

    pub fn submit(&self, job: Job) {
        self.jobs
            .send(job)
            .expect("the pool holds a receiver, so the channel is open");
    }

    pub fn finished(&self) -> Vec<Outcome> {
        self.results.try_iter().collect()
    }
}

fn sender_thread(
    agent: ureq::Agent,
    jobs: Receiver<Job>,
    results: Sender<Outcome>,
    main_pid: libc::pid_t,
) {
    while let Ok(job) = jobs.recv() {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            http::send(
                &agent,
                &job.destination,
                &job.message_id,
                job.body.as_bytes(),
                job.timeout,
            )
        }))
        .unwrap_or_else(|_| Attempt {
            started_at: 0.0,
            duration: Duration::ZERO,
            status: None,
            error: Some("internal error while sending (panic in the HTTP client)".into()),
            response_body: None,
            retry_after: None,
        });
        let outcome = Outcome {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            attempt_in_cycle: job.attempt_in_cycle,
            endpoint_id: job.destination.endpoint_id,
            result: attempt,
        };
        if results.send(outcome).is_err() {
            break;
        }
        wake_main_thread(main_pid);
    }
}

/// Tell the worker's main thread an outcome is waiting. This thread blocks every signal, so the
/// process-directed SIGUSR1 is taken by the main thread, whose PostgreSQL handler sets its latch:
/// no PostgreSQL function runs here.
fn wake_main_thread(main_pid: libc::pid_t) {
    // SAFETY: kill is async-signal-safe and thread-safe and touches no PostgreSQL state;
    // `main_pid` is this very process (std::process::id()), whose SIGUSR1 handler is PostgreSQL's.
    unsafe { libc::kill(main_pid, libc::SIGUSR1) };
}
