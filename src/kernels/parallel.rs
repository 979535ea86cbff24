//! Parallel loops in which the calling thread does its share of the work, helped by threads
//! that stay awake between loops.
//!
//! A rayon parallel iterator started outside rayon's pool hands the whole loop to the pool and
//! puts the calling thread to sleep until it is done; between loops, the pool's threads spin
//! looking for work while the caller runs the serial ops that sit between them (dfdx's own
//! kernels, allocation). With a pool of as many threads as cores that is one thread more than
//! cores: `perf` put 10% of the GPT training step in the scheduler, and the same step run on a
//! pool thread (so that only the pool's threads ran) was 1.17-1.3x faster. Rayon's threads also
//! fall asleep within tens of microseconds, and on this machine a sleeping thread takes 20-50 µs
//! to wake: 30-50 µs a loop, against 35 µs tasks in the encoder's products.
//!
//! So the calling thread works through the items itself, with the crate's own helper threads,
//! one fewer than cores (as OpenMP's teams do in PyTorch): a loop publishes its work, the
//! helpers, spinning for up to [`HELPER_SPIN`] after their last loop, join within a microsecond,
//! and the caller waits for them (spinning) only for their last items. A loop started on a thread
//! of a rayon pool (a caller's `ThreadPool::install`) is helped by that pool's other threads
//! instead, so a caller can still choose the number of threads; `RAYON_NUM_THREADS` sets it for
//! the helpers as for rayon's own pool. Loops that several threads start at once take turns
//! with the helpers: one has them, the others run alone.
//!
//! Items are taken one at a time from a shared iterator, so a thread that another process slows
//! simply takes fewer of them. Each item's work must not depend on which thread runs it (the
//! kernels write disjoint outputs, and reductions combine per-item results in item order), so
//! results do not depend on scheduling. A loop started inside another one's item runs on that
//! item's thread, sequentially: the outer loop already occupies every thread.
//!
//! This module exists for its `unsafe`: a helper runs the loop's closure, which borrows from
//! the caller's stack, through a pointer whose lifetime is erased. The caller does not return
//! or unwind until every helper that joined the loop has finished with it ([`Closing`]), and a
//! helper that arrives after the caller has closed the loop never touches the closure. And
//! [`new_vec`] hands out a new vector's chunks to the threads that initialise them.

use std::any::Any;
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// Whether this thread is running an item of a parallel loop.
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as inside a loop's item while alive.
struct InLoop(bool);

impl InLoop {
    fn enter() -> Self {
        Self(IN_LOOP.replace(true))
    }
}

impl Drop for InLoop {
    fn drop(&mut self) {
        IN_LOOP.set(self.0);
    }
}

/// Runs `f` on every item of `items`, on the calling thread and up to [`threads`]` - 1` helper
/// threads (none for a single item). Returns when every item is done; a panic in `f` is
/// propagated then.
pub(crate) fn for_each<I, F>(items: I, f: F)
where
    I: Iterator + Send,
    I::Item: Send,
    F: Fn(I::Item) + Sync,
{
    match items.size_hint() {
        // An iterator that cannot tell it has several items (a `flat_map`'s lower bound is 0):
        // counted first, so that it is not taken for a single item and run alone.
        (lower, upper) if lower < 2 && upper.is_none_or(|upper| upper >= 2) => {
            for_each_counted(items.collect::<Vec<_>>().into_iter(), f)
        }
        _ => for_each_counted(items, f),
    }
}

/// [`for_each`] for items whose `size_hint` gives a lower bound of at least 2, or the exact count.
fn for_each_counted<I, F>(items: I, f: F)
where
    I: Iterator + Send,
    I::Item: Send,
    F: Fn(I::Item) + Sync,
{
    let team = Team::here();
    let helpers = team.helpers().min(items.size_hint().0.saturating_sub(1));
    if helpers == 0 {
        let _inside = InLoop::enter();
        items.for_each(f);
        return;
    }
    let queue = Mutex::new(items);
    let work = || {
        let _inside = InLoop::enter();
        // The lock is held only to take the next item (a panic in `next` poisons it; the other
        // threads then stop taking items, and the panic propagates to the caller).
        while let Some(item) = queue.lock().ok().and_then(|mut q| q.next()) {
            f(item);
        }
    };
    run_team(team, helpers, &work);
}

/// Runs `work` on the calling thread and on `helpers` threads of `team`. Not generic, so that
/// the hand-off to the threads is compiled once, here, rather than again for every loop in
/// every crate that runs a model.
fn run_team(team: Team, helpers: usize, work: &(dyn Fn() + Sync)) {
    match team {
        Team::Pool => rayon::in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| work());
            }
            work();
        }),
        Team::Helpers(team) => team.run(work),
        Team::Alone => unreachable!("a thread alone has no helpers"),
    }
}

/// [`for_each`] that returns `f`'s results in the order of the items.
pub(crate) fn map<I, F, R>(items: I, f: F) -> Vec<R>
where
    I: Iterator + Send,
    I::Item: Send,
    F: Fn(I::Item) -> R + Sync,
    R: Send,
{
    let results = Mutex::new(Vec::with_capacity(items.size_hint().0));
    for_each(items.enumerate(), |(i, item)| {
        let r = f(item);
        results.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((i, r));
    });
    let results = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Placed by index rather than sorted: a sort is much more code, instantiated for every `R`.
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(results.len()).collect();
    for (i, r) in results {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.expect("every item ran once")).collect()
}

/// A new vector of `len` elements, written in chunks of `chunk` elements (the last one shorter)
/// on the threads of a loop: `fill(i, part)` gets chunk `i`, zeroed, and writes it; its results
/// come back in chunk order. Each chunk is zeroed on the thread that fills it, right before,
/// while it is in that core's cache: a `vec![0; len]` made first would be zeroed by the calling
/// thread alone (a serial `memset` of every kernel's output).
pub(crate) fn new_vec<E, R, F>(len: usize, chunk: usize, fill: F) -> (Vec<E>, Vec<R>)
where
    E: num_traits::Zero + Copy + Send + Sync,
    R: Send,
    F: Fn(usize, &mut [E]) -> R + Sync,
{
    let mut out: Vec<E> = Vec::with_capacity(len);
    let results = map(out.spare_capacity_mut()[..len].chunks_mut(chunk.max(1)).enumerate(), |(i, part)| {
        part.fill(MaybeUninit::new(E::zero()));
        // SAFETY: every element of `part` is initialised (just above), and `MaybeUninit<E>` has
        // the layout of `E`; the new slice takes over the unique borrow of `part`.
        #[allow(unsafe_code)]
        let part = unsafe { &mut *(part as *mut [MaybeUninit<E>] as *mut [E]) };
        fill(i, part)
    });
    // SAFETY: the chunks cover the first `len` elements of the capacity, and each was
    // initialised by its item; `map` returns once every item has run (a panic in one unwinds
    // before this line, dropping `out` empty).
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len);
    }
    (out, results)
}

/// How many threads a loop started here runs on, the calling thread included: one inside
/// another loop's item; on a thread of a rayon pool (a caller's `ThreadPool::install`), that
/// pool's size; elsewhere `RAYON_NUM_THREADS` when set, else the machine's cores (a loop that
/// starts while another thread's loop has the helpers then runs alone, see [`Helpers::run`]).
pub(crate) fn threads() -> usize {
    Team::here().helpers() + 1
}

/// Who helps a loop started on this thread.
enum Team {
    /// Nobody: inside another loop's item, or on a machine (or setting) of one thread.
    Alone,
    /// The other threads of the rayon pool this thread belongs to.
    Pool,
    /// The crate's own helper threads, one fewer than [`default_threads`].
    Helpers(&'static Helpers),
}

impl Team {
    fn here() -> Self {
        if IN_LOOP.get() {
            Team::Alone
        } else if rayon::current_thread_index().is_some() {
            Team::Pool
        } else {
            Helpers::get().map_or(Team::Alone, Team::Helpers)
        }
    }

    fn helpers(&self) -> usize {
        match self {
            Team::Alone => 0,
            Team::Pool => rayon::current_num_threads().saturating_sub(1),
            Team::Helpers(helpers) => helpers.count,
        }
    }
}

/// Threads for loops started outside any rayon pool: `RAYON_NUM_THREADS` when it is a positive
/// number (as rayon reads it), else the machine's available parallelism.
fn default_threads() -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
    from_env.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// How long a helper keeps looking for the next loop before it sleeps: loops follow each other
/// within microseconds to a few milliseconds in a forward or backward pass, and a sleeping
/// thread takes 20-50 µs to wake (rayon's threads, which sleep sooner, cost 30-50 µs a loop on
/// this machine's small products).
const HELPER_SPIN: Duration = Duration::from_millis(2);

/// The crate's helper threads. A loop publishes a [`Job`] in `slot` and bumps `generation`;
/// helpers that see the new generation join the job (unless it has closed), work through its
/// items and report back; between loops they spin for [`HELPER_SPIN`], then sleep on `wake`.
struct Helpers {
    count: usize,
    /// Whether a loop has the helpers (loops started on other threads meanwhile run alone).
    busy: AtomicBool,
    generation: AtomicU64,
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    job: Option<Arc<Job>>,
    sleeping: usize,
}

/// One loop's work as the helpers see it.
struct Job {
    /// The loop's `work` closure, its lifetime erased: only dereferenced by a helper that joined
    /// the job before it closed, and the loop does not return (so `work` lives) until every such
    /// helper has finished (see [`Helpers::run`]).
    work: *const (dyn Fn() + Sync + 'static),
    /// Helpers that joined, plus [`CLOSED`] once the loop's own thread has finished its items.
    joined: AtomicUsize,
    finished: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

const CLOSED: usize = 1 << (usize::BITS - 1);

// SAFETY: `work` points to a `Sync` closure, called from helpers only under the protocol above;
// everything else in `Job` is `Send` and `Sync`.
#[allow(unsafe_code)]
unsafe impl Send for Job {}
#[allow(unsafe_code)]
unsafe impl Sync for Job {}

impl Helpers {
    /// The helpers, started on first use; `None` with one thread in all (or if the operating
    /// system refuses threads: loops then run on the calling thread alone).
    fn get() -> Option<&'static Helpers> {
        static HELPERS: OnceLock<Option<&'static Helpers>> = OnceLock::new();
        *HELPERS.get_or_init(|| {
            let count = default_threads().saturating_sub(1);
            if count == 0 {
                return None;
            }
            let helpers: &'static Helpers = Box::leak(Box::new(Helpers {
                count,
                busy: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                slot: Mutex::new(Slot::default()),
                wake: Condvar::new(),
            }));
            for i in 0..count {
                let spawned =
                    std::thread::Builder::new().name(format!("typeformer-helper-{i}")).spawn(move || helpers.serve());
                if spawned.is_err() {
                    return None; // the threads already started only ever sleep
                }
            }
            Some(helpers)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` on this thread and on every helper that joins in time; returns when all of
    /// them have returned from it, and propagates a panic of any of them. Runs it on this
    /// thread alone while another thread's loop has the helpers.
    fn run<'a>(&self, work: &'a (dyn Fn() + Sync + 'a)) {
        if self.busy.swap(true, Ordering::Acquire) {
            work();
            return;
        }
        // SAFETY: only the lifetime changes; `Closing` (below) keeps this call from returning or
        // unwinding until every helper that may still dereference the pointer has finished.
        #[allow(unsafe_code)]
        let erased: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(work) };
        let job = Arc::new(Job {
            work: erased,
            joined: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        {
            let mut slot = self.lock();
            slot.job = Some(Arc::clone(&job));
            self.generation.fetch_add(1, Ordering::Release);
            if slot.sleeping > 0 {
                self.wake.notify_all();
            }
        }
        let closing = Closing { helpers: self, job: &job };
        work();
        drop(closing);
        let panic = job.panic.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
    }

    /// A helper thread's life: wait for a new job, join it if still open, work, report back.
    fn serve(&self) {
        let mut seen = self.generation.load(Ordering::Acquire);
        loop {
            seen = self.next_generation(seen);
            let Some(job) = self.lock().job.clone() else { continue };
            if job.joined.fetch_add(1, Ordering::AcqRel) & CLOSED != 0 {
                continue; // the loop ended before this helper arrived
            }
            // SAFETY: this helper joined before the job closed, so the loop that owns `work` is
            // still waiting for `finished` to reach the count that includes it (see `Closing`).
            #[allow(unsafe_code)]
            let work = unsafe { &*job.work };
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                job.panic.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(panic);
            }
            job.finished.fetch_add(1, Ordering::Release);
        }
    }

    /// Waits until the generation differs from `seen`, spinning for [`HELPER_SPIN`], then
    /// sleeping; returns the new generation.
    fn next_generation(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > HELPER_SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let mut slot = self.lock();
        loop {
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            slot.sleeping += 1;
            slot = self.wake.wait(slot).unwrap_or_else(|poisoned| poisoned.into_inner());
            slot.sleeping -= 1;
        }
    }
}

/// Closes a job when the loop's own thread is done with its items (or unwinds from a panic in
/// them), then waits for the helpers that joined: the loop's `work` must outlive their use of it.
struct Closing<'a> {
    helpers: &'a Helpers,
    job: &'a Arc<Job>,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let joined = self.job.joined.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let start = Instant::now();
        while self.job.finished.load(Ordering::Acquire) < joined {
            // The helpers are finishing their last items; yield if one of them was preempted.
            if start.elapsed() > Duration::from_micros(50) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        self.helpers.lock().job = None;
        self.helpers.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How many of `items` (each a millisecond's sleep, so that every thread gets some) the
    /// calling thread ran itself.
    fn taken_by_caller<I>(items: I) -> usize
    where
        I: Iterator + Send,
        I::Item: Send,
    {
        let by_caller = AtomicUsize::new(0);
        let caller = std::thread::current().id();
        for_each(items, |_| {
            if std::thread::current().id() == caller {
                by_caller.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        by_caller.into_inner()
    }

    #[test]
    fn every_item_runs_once_and_map_keeps_their_order() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a thread pool");
        let seen: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        pool.install(|| {
            for_each(0..1000, |i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            })
        });
        assert!(seen.iter().all(|n| n.load(Ordering::Relaxed) == 1));
        // From outside the pool too (the calling thread works alongside the pool's).
        let squares = map((0..500usize).map(|i| i * 3), |x| x * x);
        assert_eq!(squares, (0..500usize).map(|i| (i * 3) * (i * 3)).collect::<Vec<_>>());
    }

    #[test]
    fn the_caller_and_the_pool_share_the_items() {
        // Items that take a while, so both threads of a two-thread pool get some: the one that
        // starts the loop (here a pool thread, as `install` runs its closure on one) and a helper.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        let n = pool.install(|| taken_by_caller(0..64));
        assert!(n > 0 && n < 64, "the calling thread ran {n} of 64 items");
    }

    #[test]
    fn a_thread_outside_any_pool_works_with_the_helpers() {
        // A test thread is outside any rayon pool, so the crate's helpers join in (when the
        // machine, or RAYON_NUM_THREADS, gives more than one thread); loops started on several
        // threads at once (one has the helpers, the others run alone) all complete.
        assert_eq!(threads(), default_threads());
        // Another test's loop may have the helpers at the moment: try a few times.
        let shared = (0..50).any(|_| {
            let n = taken_by_caller(0..16);
            assert!(n > 0, "the calling thread takes part");
            n < 16
        });
        assert!(shared || default_threads() == 1, "no helper ever took an item");
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                scope.spawn(move || {
                    for round in 0..50u64 {
                        let sums = map(0..100u64, |i| i * t + round);
                        assert_eq!(sums, (0..100u64).map(|i| i * t + round).collect::<Vec<_>>());
                    }
                });
            }
        });
    }

    #[test]
    fn items_of_unknown_count_are_shared_too() {
        // A `flat_map` reports a lower bound of 0: its items must still reach the helpers.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        let items = (0..8).flat_map(|i| (0..8).map(move |j| (i, j)));
        assert_eq!(items.size_hint().0, 0);
        let n = pool.install(|| taken_by_caller(items));
        assert!(n > 0 && n < 64, "the calling thread ran {n} of 64 items");
    }

    #[test]
    fn nested_loops_on_the_helpers_run_inside_their_item() {
        // Outside any pool (the crate's helpers), loops inside items run on the item's thread,
        // while other threads start loops of their own.
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    let total = AtomicUsize::new(0);
                    for_each(0..16, |_| {
                        let outer = std::thread::current().id();
                        for_each(0..16, |_| {
                            assert_eq!(std::thread::current().id(), outer);
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    });
                    assert_eq!(total.load(Ordering::Relaxed), 256);
                });
            }
        });
    }

    #[test]
    fn a_panic_on_a_helper_reaches_the_caller_and_the_helpers_go_on() {
        for _ in 0..20 {
            let result = std::panic::catch_unwind(|| {
                for_each(0..64, |i| {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    if i % 7 == 3 {
                        panic!("item {i}");
                    }
                })
            });
            assert!(result.is_err());
        }
        let total = AtomicUsize::new(0);
        for_each(0..1000, |i| {
            total.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 999 * 1000 / 2);
        assert!(!IN_LOOP.get());
    }

    #[test]
    fn new_vectors_are_written_chunk_by_chunk() {
        for (len, chunk) in [(0, 4), (1, 4), (1000, 64), (1000, 7), (64, 64)] {
            // Each chunk arrives zeroed; it writes its positions and returns its first one.
            let (v, firsts) = new_vec(len, chunk, |i, part: &mut [f64]| {
                assert!(part.iter().all(|&x| x == 0.0));
                assert_eq!(part.len(), chunk.min(len - i * chunk));
                for (j, x) in part.iter_mut().enumerate() {
                    *x = (i * chunk + j) as f64;
                }
                i * chunk
            });
            assert_eq!(v, (0..len).map(|x| x as f64).collect::<Vec<_>>());
            assert_eq!(firsts, (0..len.div_ceil(chunk)).map(|i| i * chunk).collect::<Vec<_>>());
        }
        let panicked = std::panic::catch_unwind(|| new_vec(100, 10, |i, _: &mut [f32]| assert!(i != 5)));
        assert!(panicked.is_err());
    }

    #[test]
    fn nested_loops_run_their_inner_items_on_the_outer_items_thread() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        let total = AtomicUsize::new(0);
        pool.install(|| {
            for_each(0..8, |_| {
                let outer = std::thread::current().id();
                for_each(0..8, |_| {
                    assert_eq!(std::thread::current().id(), outer);
                    total.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(threads(), 1);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_panic_in_an_item_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                for_each(0..100, |i| {
                    if i == 57 {
                        panic!("item 57");
                    }
                })
            })
        }));
        assert!(result.is_err());
        // The thread's flag is restored after the panic.
        assert!(!IN_LOOP.get());
    }
}
