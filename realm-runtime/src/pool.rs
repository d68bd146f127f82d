//! The inference pool: at most `workers` inferences run at once, on tokio's
//! blocking threads, and at most `queue` more wait. A request beyond that is
//! refused at once with "busy" rather than queued without bound.
//!
//! Must never: run inference on the async threads (one slow model would
//! stall every connection), or let waiting requests grow without limit.

use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Semaphore;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PoolError {
    /// Every worker is busy and the queue is full.
    #[error("the runtime is busy ({0} requests queued); try again shortly")]
    Busy(usize),
    /// The job panicked (a bug in tract or in a model).
    #[error("inference failed unexpectedly")]
    Panicked,
}

/// The pool.
#[derive(Debug, Clone)]
pub struct InferencePool {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    capacity: usize,
}

impl InferencePool {
    /// `workers` concurrent inferences (use the number of cores) and a
    /// queue of `queue` waiting ones.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(workers + queue)),
            running: Arc::new(Semaphore::new(workers)),
            capacity: workers + queue,
        }
    }

    /// Requests running or waiting.
    pub fn depth(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    /// Run `job` on a worker, or refuse at once if the pool is full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _slot = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolError::Busy(self.depth()))?;
        let worker = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Panicked)?;
        // The slot and worker permits are held until the job ends, even if
        // the requesting connection goes away meanwhile: the thread is busy
        // either way, so the pool must keep counting it.
        tokio::task::spawn_blocking(move || {
            let out = job();
            drop(worker);
            out
        })
        .await
        .map_err(|_| PoolError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn refuses_when_full_and_recovers() {
        let pool = InferencePool::new(1, 1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let p = pool.clone();
        let running = tokio::spawn(async move {
            p.run(move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                1
            })
            .await
        });
        started_rx.recv().await.unwrap();
        // One queued behind it...
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(|| 2).await });
        while pool.depth() < 2 {
            tokio::task::yield_now().await;
        }
        // ...and a third is refused.
        assert_eq!(pool.run(|| 3).await, Err(PoolError::Busy(2)));
        release_tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(1));
        assert_eq!(queued.await.unwrap(), Ok(2));
        assert_eq!(pool.run(|| 4).await, Ok(4));
        assert_eq!(pool.depth(), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_crash() {
        let pool = InferencePool::new(1, 0);
        let r: Result<(), _> = pool.run(|| panic!("model bug")).await;
        assert_eq!(r, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| 5).await, Ok(5));
    }
}
