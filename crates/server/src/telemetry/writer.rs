//! A log writer that never makes the thread logging a line wait: lines are gathered in memory
//! and a thread of their own writes them out together, `period` after the first of them, so a
//! busy server wakes that thread a few times a second rather than once a line.
//!
//! Not tracing-appender's `non_blocking`: its writer thread wakes for every line, a wake-up per
//! request that cost api + worker about 80 µs of p50 at concurrency 1 (docs/performance-notes.md).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Longest the guard waits, on drop, for the lines held to be written.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// A batch buffer larger than this after a write is given back rather than kept for the next.
const KEPT_CAPACITY: usize = 1 << 20;

/// The lines waiting, shared between the threads that log and the writing thread.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a line arrives in an empty buffer, and on stop.
    changed: Condvar,
    /// Bytes held at most; a line that does not fit is dropped.
    limit: usize,
    dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    stopping: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` to give a `tracing_subscriber::fmt` layer.
#[derive(Clone)]
pub struct Gathered {
    shared: Arc<Shared>,
}

impl Gathered {
    /// Lines dropped so far because `limit` bytes were already waiting.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.shared.dropped.clone()
    }
}

/// One line: the fmt layer formats a whole event, then writes it in one call.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shared = self.0;
        let mut s = shared.lock();
        if s.lines.len() + buf.len() > shared.limit {
            drop(s);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let first = s.lines.is_empty();
            s.lines.extend_from_slice(buf);
            drop(s);
            if first {
                shared.changed.notify_one();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Gathered {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.shared)
    }
}

/// Keeps the writing thread running; dropping it writes out what is held (waiting at most a
/// second for `out`) and stops the thread.
pub struct WriterGuard {
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_one();
        let _ = self.done.recv_timeout(SHUTDOWN_WAIT);
    }
}

/// Starts a thread named `thread` that writes to `out`, in order, the lines logged through the
/// returned writer: `period` after a line arrives, everything held then, in one `write_all`.
/// At most `limit` bytes are held; lines past that are dropped and counted.
pub fn spawn<W: Write + Send + 'static>(
    mut out: W,
    thread: &str,
    limit: usize,
    period: Duration,
) -> std::io::Result<(Gathered, WriterGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        changed: Condvar::new(),
        limit,
        dropped: Arc::default(),
    });
    let (done_tx, done) = mpsc::channel();
    let writer = shared.clone();
    std::thread::Builder::new()
        .name(thread.to_string())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let mut s = writer.lock();
                while s.lines.is_empty() && !s.stopping {
                    s = writer.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.lines.is_empty() {
                    break;
                }
                // Let the lines of the next `period` join this one (cut short by a stop).
                let (mut s, _) = writer
                    .changed
                    .wait_timeout_while(s, period, |s| !s.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut s.lines, &mut batch);
                drop(s);
                // A line that cannot be written is lost either way; the next may succeed.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
                if batch.capacity() > KEPT_CAPACITY {
                    batch = Vec::new();
                }
            }
            let _ = out.flush();
            let _ = done_tx.send(());
        })?;
    Ok((
        Gathered {
            shared: shared.clone(),
        },
        WriterGuard { shared, done },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the stalled sink has seen.
    #[derive(Default)]
    struct Sink {
        entered: bool,
        released: bool,
        written: Vec<u8>,
    }

    /// A sink that takes nothing until it is released, and tells when a write first reaches it.
    #[derive(Clone, Default)]
    struct Stalled {
        state: Arc<(Mutex<Sink>, Condvar)>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, changed) = &*self.state;
            let mut s = lock.lock().unwrap();
            s.entered = true;
            changed.notify_all();
            while !s.released {
                s = changed.wait(s).unwrap();
            }
            s.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(writer: &Gathered, line: &str) {
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn a_stalled_sink_never_holds_up_the_logger_and_lost_lines_are_counted() {
        let sink = Stalled::default();
        // Room for four 7-byte lines.
        let (writer, guard) = spawn(sink.clone(), "log-test", 28, Duration::ZERO).unwrap();
        let (lock, changed) = &*sink.state;
        log(&writer, "line 0\n");
        // Wait until the writer is stuck in the sink with line 0.
        let mut s = lock.lock().unwrap();
        while !s.entered {
            s = changed.wait(s).unwrap();
        }
        drop(s);
        for i in 1..=100 {
            log(&writer, &format!("line {i}\n"));
        }
        assert_eq!(
            writer.dropped().load(Ordering::Relaxed),
            96,
            "4 held, 96 dropped"
        );
        lock.lock().unwrap().released = true;
        changed.notify_all();
        drop(guard);
        let written = String::from_utf8(lock.lock().unwrap().written.clone()).unwrap();
        assert_eq!(written, "line 0\nline 1\nline 2\nline 3\nline 4\n");
    }

    /// A sink that records each `write_all` it gets as one piece.
    #[derive(Clone, Default)]
    struct Pieces(Arc<Mutex<Vec<String>>>);

    impl Write for Pieces {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8(buf.to_vec()).unwrap();
            self.0.lock().unwrap().push(text);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_of_one_period_are_written_together_in_order_and_the_guard_writes_the_rest() {
        let sink = Pieces::default();
        // A period far longer than the test: only the guard's stop can end it.
        let (writer, guard) =
            spawn(sink.clone(), "log-test", 1 << 20, Duration::from_secs(3600)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        log(&writer, &format!("{t} {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "nothing written before the period ends"
        );
        drop(guard);
        let pieces = sink.0.lock().unwrap().clone();
        assert_eq!(pieces.len(), 1, "one write for the whole batch");
        let lines: Vec<&str> = pieces[0].lines().collect();
        assert_eq!(lines.len(), 1000);
        for t in 0..4 {
            let of_thread: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .collect();
            let expected: Vec<String> = (0..250).map(|i| format!("{t} {i}")).collect();
            assert_eq!(
                of_thread, expected,
                "each thread's lines whole and in order"
            );
        }
        assert_eq!(writer.dropped().load(Ordering::Relaxed), 0);
    }

    /// A sink that refuses its first write, then records the rest like `Pieces`.
    #[derive(Clone, Default)]
    struct FailsOnce {
        failed: Arc<std::sync::atomic::AtomicBool>,
        pieces: Pieces,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.failed.swap(true, Ordering::SeqCst) {
                return Err(std::io::Error::other("disk full"));
            }
            self.pieces.write(buf)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_loses_its_batch_and_the_writer_goes_on() {
        let sink = FailsOnce::default();
        let (writer, guard) = spawn(sink.clone(), "log-test", 1 << 20, Duration::ZERO).unwrap();
        log(&writer, "lost\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sink.failed.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        log(&writer, "kept\n");
        drop(guard);
        assert_eq!(*sink.pieces.0.lock().unwrap(), ["kept\n"]);
    }

    #[test]
    fn lines_are_written_a_period_after_they_arrive_without_a_stop() {
        let sink = Pieces::default();
        let (writer, _guard) =
            spawn(sink.clone(), "log-test", 1 << 20, Duration::from_millis(5)).unwrap();
        log(&writer, "first\n");
        // Bounded wait: the writer has a 5 ms period; give it up to 10 s on a loaded machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        log(&writer, "second\n");
        while sink.0.lock().unwrap().len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "second line never written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*sink.0.lock().unwrap(), ["first\n", "second\n"]);
    }
}
