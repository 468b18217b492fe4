//! Bounded work per caller (invariant I10): password hashing behind a bounded queue sized to
//! the machine, and token buckets (governor's keyed GCRA limiters) per source address on login
//! and sign-up, per account on logins and writes. A caller past a limit gets 429 with
//! `Retry-After`, a node whose hashing queue is full 503 with `Retry-After`, at once and
//! without any work done for them.
//!
//! Logins per account are limited cluster-wide: every node tells the others of the failed
//! logins it saw (a batch every quarter second, see `control::duties`), and each takes a token from the
//! account's bucket for each, so guesses spread over the nodes draw on one budget.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use governor::clock::Clock;
use governor::clock::DefaultClock;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use governor::RateLimiter;
use uuid::Uuid;

use crate::config::RateLimits;

/// Why a limit refused a caller; the API answers 429 or 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Over a rate: try again in `retry_after` seconds.
    TooMany { message: String, retry_after: u64 },
    /// No room to do the work now: try again in a second.
    Busy(String),
}

/// A token bucket per key, with what it counts for the refusal's message.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    what: &'static str,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// `n` per `period`, as a burst of `n` refilled evenly over the period.
    fn new(n: u32, period: Duration, what: &'static str) -> Keyed<K> {
        let n = NonZeroU32::new(n.max(1)).expect("positive");
        let quota = Quota::with_period(period / n.get()).expect("a positive period").allow_burst(n);
        Keyed { limiter: RateLimiter::keyed(quota), what }
    }

    fn check(&self, key: &K) -> Result<(), Refused> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Refused::TooMany { message: format!("too many {}; try again in {secs} s", self.what), retry_after: secs }
        })
    }

    /// Forgets the keys whose bucket is full again, so memory follows the callers of the
    /// last period, not every caller ever seen.
    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The node's limits on what callers may make it do.
pub struct Limits {
    /// Password hashes computed at once: one per core (each takes ~19 MiB and tens of ms).
    hashing: tokio::sync::Semaphore,
    /// Hashes waiting for a permit, at most `max_waiting`.
    waiting: AtomicUsize,
    max_waiting: usize,
    login_per_source: Keyed<IpAddr>,
    login_per_account: Keyed<String>,
    signup_per_source: Keyed<IpAddr>,
    writes_per_account: Keyed<Uuid>,
    /// Failed logins seen here and not yet told to the other nodes.
    failed: std::sync::Mutex<Vec<String>>,
}

/// Most failed logins kept for the next batch to the other nodes; the per-source limit keeps
/// real batches far smaller.
const MAX_FAILED_BATCH: usize = 4096;

fn account_key(email: &str) -> String {
    email.trim().to_lowercase()
}

impl Limits {
    pub fn new(r: &RateLimits) -> Limits {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Limits {
            hashing: tokio::sync::Semaphore::new(cores),
            waiting: AtomicUsize::new(0),
            max_waiting: 4 * cores,
            login_per_source: Keyed::new(r.login_per_minute, Duration::from_secs(60), "logins from your address"),
            login_per_account: Keyed::new(r.login_per_minute, Duration::from_secs(60), "logins to this account"),
            signup_per_source: Keyed::new(r.signup_per_hour, Duration::from_secs(3600), "sign-ups from your address"),
            writes_per_account: Keyed::new(r.writes_per_second, Duration::from_secs(1), "changes from this account"),
            failed: Default::default(),
        }
    }

    /// Runs a password hash or verification on a blocking thread, if the queue has room:
    /// at most one per core at a time and four per core waiting; beyond that, 503 at once.
    pub async fn hash<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refused> {
        let busy = || Refused::Busy("this node is busy checking passwords; try again in a second".into());
        let permit = match self.hashing.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    crate::metrics::get().refused(crate::metrics::Refusal::HashingQueue);
                    return Err(busy());
                }
                let p = self.hashing.acquire().await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                p.map_err(|_| busy())?
            }
        };
        let done = tokio::task::spawn_blocking(f).await.map_err(|e| Refused::Busy(e.to_string()));
        drop(permit);
        done
    }

    pub fn login(&self, source: IpAddr, email: &str) -> Result<(), Refused> {
        self.counted(self.login_per_source.check(&source))?;
        self.counted(self.login_per_account.check(&account_key(email)))
    }

    /// A login to `email` failed here: the other nodes will hear of it.
    pub fn login_failed(&self, email: &str) {
        let mut f = self.failed.lock().expect("failed logins lock");
        if f.len() < MAX_FAILED_BATCH {
            f.push(account_key(email));
        }
    }

    /// The failed logins to tell the other nodes of, since the last call.
    pub fn take_failed_logins(&self) -> Vec<String> {
        std::mem::take(&mut *self.failed.lock().expect("failed logins lock"))
    }

    /// Failed logins another node saw: each takes a token from its account's bucket here.
    pub fn failed_elsewhere(&self, keys: &[String]) {
        for k in keys.iter().take(MAX_FAILED_BATCH) {
            let _ = self.login_per_account.limiter.check_key(k);
        }
    }

    pub fn signup(&self, source: IpAddr) -> Result<(), Refused> {
        self.counted(self.signup_per_source.check(&source))
    }

    pub fn write(&self, account: Uuid) -> Result<(), Refused> {
        self.counted(self.writes_per_account.check(&account))
    }

    fn counted(&self, r: Result<(), Refused>) -> Result<(), Refused> {
        if r.is_err() {
            crate::metrics::get().refused(crate::metrics::Refusal::RateLimit);
        }
        r
    }

    /// Drops the buckets of callers that went quiet; the node calls it every few seconds.
    pub fn prune(&self) {
        self.login_per_source.prune();
        self.login_per_account.prune();
        self.signup_per_source.prune();
        self.writes_per_account.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_burst_and_says_when_to_come_back() {
        let k: Keyed<u8> = Keyed::new(3, Duration::from_secs(60), "tries");
        for _ in 0..3 {
            k.check(&1).unwrap();
        }
        let Refused::TooMany { retry_after: after, .. } = k.check(&1).unwrap_err() else { panic!("a rate refusal") };
        assert!((1..=20).contains(&after), "one token comes back every 20 s: {after}");
        k.check(&2).unwrap();
    }

    #[tokio::test]
    async fn the_hashing_queue_is_bounded() {
        let l = Limits::new(&RateLimits::default());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let l = std::sync::Arc::new(l);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut held = Vec::new();
        for _ in 0..cores * 5 {
            let (l, rx) = (l.clone(), rx.clone());
            held.push(tokio::spawn(async move {
                l.hash(move || {
                    let _ = rx.lock().unwrap().recv();
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = l.hash(|| ()).await.unwrap_err();
        assert!(matches!(refused, Refused::Busy(_)), "{refused:?}");
        for _ in 0..cores * 5 {
            tx.send(()).unwrap();
        }
        for h in held {
            h.await.unwrap().unwrap();
        }
        l.hash(|| ()).await.unwrap();
    }
}
