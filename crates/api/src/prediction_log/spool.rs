//! The spool: append-only files of JSON lines, one record a line, holding what the database could
//! not take yet.
//!
//! Records are appended to `predictions.spool`. Replay renames that file to
//! `predictions.spool.replaying`, so appends go on in a fresh file, reads it in chunks from the
//! last committed offset and deletes it once every record in it is in the database. A file left by
//! a crash is replayed the same way; a line that is not a record (torn by a crash mid-append) is
//! skipped with a warning. `predictions.spool.lock` keeps a second prediction log (another
//! process sharing the folder) out while one has the spool open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use vatic_store::PredictionRecord;

/// The file appends go to.
pub const ACTIVE: &str = "predictions.spool";
/// The file being replayed.
pub const REPLAYING: &str = "predictions.spool.replaying";
/// Locked while a spool is open.
const LOCK: &str = "predictions.spool.lock";

/// The spool files of one folder. Appends may come from any thread; replay (`next_chunk`,
/// `commit`) from one task only.
pub(crate) struct Spool {
    dir: PathBuf,
    active: Mutex<Active>,
    replay: Mutex<Option<Replay>>,
    /// Bytes not yet in the database: the whole active file and the uncommitted rest of the
    /// replaying one.
    pending: AtomicU64,
    /// Holds the folder's lock until the spool is dropped.
    _lock: File,
}

struct Active {
    /// Open for appending; closed at rotation and after a failed write.
    file: Option<File>,
    /// Its length as far as this process knows.
    len: u64,
    /// Written since the last fsync.
    dirty: bool,
}

struct Replay {
    file: File,
    len: u64,
    /// Everything before this offset is in the database.
    offset: u64,
}

/// Records read from the replaying file, to insert and then `commit`.
pub(crate) struct Chunk {
    pub(crate) records: Vec<PredictionRecord>,
    end: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn file_len(path: &Path) -> io::Result<Option<u64>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "fsync of the spool folder");
    }
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), counting what earlier runs left there.
    /// Fails while another spool has the folder open.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("another prediction log holds {}", dir.join(LOCK).display()),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let active = file_len(&dir.join(ACTIVE))?.unwrap_or(0);
        let mut replaying = file_len(&dir.join(REPLAYING))?.unwrap_or(0);
        if replaying == 0 {
            match fs::remove_file(dir.join(REPLAYING)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => replaying = 0,
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            active: Mutex::new(Active {
                file: None,
                len: active,
                dirty: false,
            }),
            replay: Mutex::new(None),
            pending: AtomicU64::new(active + replaying),
            _lock: lock,
        })
    }

    /// The file appends go to.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ACTIVE)
    }

    /// Bytes waiting to be replayed.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Appends records, one JSON line each; fsyncs when `sync` is set (otherwise the next
    /// `sync` or rotation does).
    pub fn append(&self, records: &[PredictionRecord], sync: bool) -> io::Result<()> {
        let mut lines = Vec::with_capacity(records.len() * 256);
        for r in records {
            serde_json::to_writer(&mut lines, r)?;
            lines.push(b'\n');
        }
        let mut active = lock(&self.active);
        let result = self.write_active(&mut active, &lines, sync);
        if result.is_err() {
            // Part of the lines may be in the file: reopen (and end that line) next time.
            active.file = None;
        }
        result
    }

    fn write_active(&self, active: &mut Active, lines: &[u8], sync: bool) -> io::Result<()> {
        if active.file.is_none() {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(self.path())?;
            let mut len = file.metadata()?.len();
            if len > 0 {
                // A crash or a failed write may have left a line unfinished; end it so the
                // next record starts on a line of its own.
                let mut last = [0u8];
                file.seek(SeekFrom::End(-1))?;
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n")?;
                    len += 1;
                }
            }
            self.adjust(active.len, len);
            active.len = len;
            active.file = Some(file);
        }
        let file = active.file.as_mut().expect("opened above");
        file.write_all(lines)?;
        active.len += lines.len() as u64;
        self.pending
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        if sync {
            file.sync_data()?;
            active.dirty = false;
        } else {
            active.dirty = true;
        }
        Ok(())
    }

    /// Moves the pending count from a believed length to a found one.
    fn adjust(&self, believed: u64, found: u64) {
        if found >= believed {
            self.pending.fetch_add(found - believed, Ordering::Relaxed);
        } else {
            self.sub(believed - found);
        }
    }

    fn sub(&self, n: u64) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            });
    }

    /// Fsyncs appends made without `sync`.
    pub fn sync(&self) -> io::Result<()> {
        let mut active = lock(&self.active);
        if let (true, Some(file)) = (active.dirty, active.file.as_ref()) {
            file.sync_data()?;
            active.dirty = false;
        }
        Ok(())
    }

    /// The next records to replay, at most `max`: from the replaying file, else from the active
    /// file after renaming it. `None` when the spool is empty.
    pub fn next_chunk(&self, max: usize) -> io::Result<Option<Chunk>> {
        let mut replay = lock(&self.replay);
        loop {
            if replay.is_none() {
                *replay = self.start_replay()?;
            }
            let Some(r) = replay.as_mut() else {
                return Ok(None);
            };
            let chunk = read_chunk(r, max)?;
            if chunk.end > r.offset {
                return Ok(Some(chunk));
            }
            // Nothing after the offset: the file is done.
            self.finish_replay()?;
            *replay = None;
        }
    }

    /// Opens the replaying file a crash left, else renames the active file to it.
    fn start_replay(&self) -> io::Result<Option<Replay>> {
        let path = self.dir.join(REPLAYING);
        if file_len(&path)?.is_none() {
            let mut active = lock(&self.active);
            if active.len == 0 {
                // Appends count under this lock and commits come from this task: nothing waits.
                self.pending.store(0, Ordering::Relaxed);
                return Ok(None);
            }
            if let Some(file) = active.file.take() {
                if active.dirty {
                    file.sync_data()?;
                }
            }
            active.dirty = false;
            fs::rename(self.path(), &path)?;
            active.len = 0;
            sync_dir(&self.dir);
        }
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok(Some(Replay {
            file,
            len,
            offset: 0,
        }))
    }

    fn finish_replay(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(REPLAYING)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&self.dir);
        Ok(())
    }

    /// Marks a chunk as in the database; deletes the replaying file when it is all in.
    pub fn commit(&self, chunk: &Chunk) -> io::Result<()> {
        let mut replay = lock(&self.replay);
        let Some(r) = replay.as_mut() else {
            return Ok(());
        };
        if chunk.end > r.offset {
            self.sub(chunk.end - r.offset);
            r.offset = chunk.end;
        }
        if r.offset >= r.len {
            // On failure the state stays, and the next chunk, empty, removes the file.
            self.finish_replay()?;
            *replay = None;
        }
        Ok(())
    }
}

/// Reads up to `max` records after `r.offset`, skipping lines that are not records.
fn read_chunk(r: &mut Replay, max: usize) -> io::Result<Chunk> {
    r.file.seek(SeekFrom::Start(r.offset))?;
    let mut reader = BufReader::new(&r.file);
    let mut records = Vec::new();
    let mut end = r.offset;
    let mut line = Vec::new();
    while records.len() < max {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let at = end;
        end += n as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<PredictionRecord>(&line) {
            Ok(record) => records.push(record),
            Err(e) if line.last() != Some(&b'\n') => {
                tracing::warn!(offset = at, bytes = n, error = %e, "skipping the torn last line of the prediction spool");
            }
            Err(e) => {
                tracing::warn!(offset = at, bytes = n, error = %e, "skipping a prediction spool line that is not a record");
            }
        }
    }
    Ok(Chunk { records, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> PredictionRecord {
        PredictionRecord {
            id: uuid_for(n),
            at: chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap(),
            request_id: format!("req-{n}"),
            model: "m".into(),
            version: "1".into(),
            api_key: None,
            status: 200,
            latency_us: 10,
            request: None,
            response: None,
            sealed: None,
            shadow: false,
        }
    }

    fn uuid_for(n: u32) -> uuid::Uuid {
        uuid::Uuid::from_u128(n as u128 + 1)
    }

    fn drain(spool: &Spool, max: usize) -> Vec<u32> {
        let mut seen = Vec::new();
        while let Some(chunk) = spool.next_chunk(max).unwrap() {
            seen.extend(
                chunk
                    .records
                    .iter()
                    .map(|r| r.request_id[4..].parse::<u32>().unwrap()),
            );
            spool.commit(&chunk).unwrap();
        }
        seen
    }

    #[test]
    fn appends_rotate_replay_in_order_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.pending_bytes(), 0);
        spool.append(&[record(0), record(1)], true).unwrap();
        spool.append(&[record(2)], false).unwrap();
        let size = fs::metadata(spool.path()).unwrap().len();
        assert_eq!(spool.pending_bytes(), size);
        let first = spool.next_chunk(2).unwrap().unwrap();
        // Rotated: new appends start a fresh active file.
        spool.append(&[record(3)], true).unwrap();
        assert!(dir.path().join(REPLAYING).is_file());
        spool.commit(&first).unwrap();
        assert_eq!(drain(&spool, 2), vec![2, 3]);
        assert_eq!(spool.pending_bytes(), 0);
        assert!(!dir.path().join(REPLAYING).exists());
        assert!(!dir.path().join(ACTIVE).exists());
    }

    #[test]
    fn an_uncommitted_chunk_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool
            .append(&[record(0), record(1), record(2)], true)
            .unwrap();
        let a = spool.next_chunk(2).unwrap().unwrap();
        let b = spool.next_chunk(2).unwrap().unwrap();
        assert_eq!(a.records, b.records);
        spool.commit(&b).unwrap();
        assert_eq!(drain(&spool, 10), vec![2]);
    }

    #[test]
    fn torn_lines_are_skipped_and_appends_after_them_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for n in 0..3 {
            text.push_str(&serde_json::to_string(&record(n)).unwrap());
            text.push('\n');
        }
        let torn = serde_json::to_string(&record(99)).unwrap();
        text.push_str(&torn[..torn.len() / 2]);
        fs::write(dir.path().join(REPLAYING), &text).unwrap();
        fs::write(dir.path().join(ACTIVE), &text).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.pending_bytes(), 2 * text.len() as u64);
        // Appending to a file whose last line is torn starts a new line first.
        spool.append(&[record(3)], true).unwrap();
        assert_eq!(drain(&spool, 2), vec![0, 1, 2, 0, 1, 2, 3]);
        assert_eq!(spool.pending_bytes(), 0);
        assert!(!dir.path().join(REPLAYING).exists());
    }

    #[test]
    fn one_spool_per_folder() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let err = Spool::open(dir.path()).err().expect("the folder is locked");
        assert!(
            err.to_string().contains("another prediction log holds"),
            "{err}"
        );
        drop(spool);
        Spool::open(dir.path()).unwrap();
    }

    #[test]
    fn an_empty_replaying_file_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(REPLAYING), "").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join(REPLAYING).exists());
        assert!(spool.next_chunk(10).unwrap().is_none());
    }
}
