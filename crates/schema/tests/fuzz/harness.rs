//! The fuzz driver shared by vatic's fuzz test binaries: a time budget, the committed seed
//! corpus, byte-level mutations of it, and a loop of proptest runs until the budget is spent.
//!
//! Each target runs proptest batches of [`BATCH`] cases until `VATIC_FUZZ_SECONDS` (default
//! [`DEFAULT_SECONDS`]) have passed, then prints `fuzz <target>: N executions, 0 failures`. A
//! failing case is shrunk, its seed is written to `tests/fuzz/regressions/<target>.txt` of the
//! crate, and every later run replays that seed first.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use std::cell::Cell;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds per target when `VATIC_FUZZ_SECONDS` is unset: short enough for the ordinary test run.
pub const DEFAULT_SECONDS: f64 = 2.5;
/// Cases per proptest run; the budget is checked between runs.
const BATCH: u32 = 128;
/// A case slower than this fails: a parser that needs seconds for a small body is a way to tie up
/// a server.
const SLOW_CASE: Duration = Duration::from_secs(10);
/// Longest time spent shrinking a failure before it is reported as found.
const SHRINK_MILLIS: u32 = 60_000;

/// How long each target runs: `VATIC_FUZZ_SECONDS`, else [`DEFAULT_SECONDS`].
pub fn budget() -> Duration {
    let seconds = match std::env::var("VATIC_FUZZ_SECONDS") {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| {
                panic!("VATIC_FUZZ_SECONDS must be a number of seconds, got '{text}'")
            }),
        Err(_) => DEFAULT_SECONDS,
    };
    Duration::from_secs_f64(seconds)
}

/// Bytes under test, shown escaped when a case fails.
#[derive(Clone, PartialEq, Eq)]
pub struct Input(pub Vec<u8>);

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// The seed corpus of `target`: every file of `testdata/fuzz/<target>/`, in name order.
pub fn corpus(target: &str) -> Arc<Vec<Vec<u8>>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the seed corpus {} is empty",
        dir.display()
    );
    Arc::new(
        files
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect(),
    )
}

/// One edit of a byte string; positions are fractions of the current length, so they shrink
/// towards the start and stay valid whatever came before.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    Flip(Index, u8),
    /// Overwrites a byte with one that matters to a parser.
    Set(Index, u8),
    /// Inserts a token of the target's dictionary.
    Token(Index, Index),
    /// Inserts arbitrary bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes.
    Delete(Index, usize),
    /// Cuts the input short.
    Truncate(Index),
    /// Repeats a stretch in place.
    Duplicate(Index, usize),
    /// Replaces everything from a point with the tail of another seed.
    Splice(Index, Index, Index),
}

/// Bytes that change how JSON, numbers and headers parse.
const SPECIAL: &[u8] = b"\0\t\n\r \"',-.0123456789:Ee[\\]{}+\x7f\x80\xc3\xe2\xff";

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), prop::sample::select(SPECIAL)).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, token)| Mutation::Token(at, token)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..64).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(seed, at, from)| Mutation::Splice(seed, at, from)),
    ]
}

/// Up to eight mutations.
pub fn mutations() -> BoxedStrategy<Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..8).boxed()
}

fn at(index: Index, len: usize) -> usize {
    // `len + 1` places: before every byte, and at the end.
    index.index(len + 1)
}

/// Applies `mutations` to `bytes`; `Splice` draws from `seeds`.
pub fn mutate(
    mut bytes: Vec<u8>,
    mutations: &[Mutation],
    seeds: &[Vec<u8>],
    dictionary: &[&str],
) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Flip(..) | Mutation::Set(..) => {}
            Mutation::Token(..) if dictionary.is_empty() => {}
            Mutation::Token(i, token) => {
                let token = dictionary[token.index(dictionary.len())].as_bytes();
                let i = at(*i, len);
                bytes.splice(i..i, token.iter().copied());
            }
            Mutation::Insert(i, inserted) => {
                let i = at(*i, len);
                bytes.splice(i..i, inserted.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i, len);
                bytes.drain(i..(i + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(at(*i, len)),
            Mutation::Duplicate(i, n) => {
                let i = at(*i, len);
                let stretch = bytes[i..(i + n).min(len)].to_vec();
                bytes.splice(i..i, stretch);
            }
            Mutation::Splice(seed, i, from) => {
                let other = &seeds[seed.index(seeds.len())];
                let from = at(*from, other.len());
                bytes.truncate(at(*i, len));
                bytes.extend_from_slice(&other[from..]);
            }
        }
    }
    bytes
}

/// A seed of `seeds`, mutated.
pub fn mutated_seed(
    seeds: Arc<Vec<Vec<u8>>>,
    dictionary: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), mutations()).prop_map(move |(pick, mutations)| {
        let seed = seeds[pick.index(seeds.len())].clone();
        mutate(seed, &mutations, &seeds, dictionary)
    })
}

/// Runs `test` on cases of `strategy` until the budget is spent, and reports the executions.
///
/// Panics with the smallest failing case when one fails; its seed is kept in
/// `tests/fuzz/regressions/<target>.txt` of the calling crate.
pub fn fuzz<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let regressions: &'static str = Box::leak(
        format!(
            "{}/tests/fuzz/regressions/{target}.txt",
            env!("CARGO_MANIFEST_DIR")
        )
        .into_boxed_str(),
    );
    let config = Config {
        cases: BATCH,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        max_shrink_time: SHRINK_MILLIS,
        max_shrink_iters: u32::MAX,
        ..Config::default()
    };
    let deadline = Instant::now() + budget();
    let executions = Cell::new(0u64);
    let timed = |value: S::Value| {
        executions.set(executions.get() + 1);
        let started = Instant::now();
        test(value)?;
        let took = started.elapsed();
        if took > SLOW_CASE {
            return Err(TestCaseError::fail(format!(
                "one case took {took:?}, more than {SLOW_CASE:?}"
            )));
        }
        Ok(())
    };
    // Each batch gets its own generator, drawn from one (fixed by PROPTEST_RNG_SEED if set).
    let mut batches = TestRunner::new(config.clone());
    loop {
        let mut runner = TestRunner::new_with_rng(config.clone(), batches.new_rng());
        match runner.run(&strategy, timed) {
            Ok(()) => {}
            Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
            Err(TestError::Fail(why, smallest)) => {
                let shown = format!("{smallest:?}");
                // Once more outside proptest, whose panic hook is silent, so that a panic's
                // location (and backtrace, with RUST_BACKTRACE=1) is printed.
                let _ = test(smallest);
                panic!(
                    "fuzz {target}: {why}\nsmallest failing input: {shown}\n\
                     its seed is kept in {regressions} and replayed first by every run"
                );
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    println!("fuzz {target}: {} executions, 0 failures", executions.get());
}
