//! What every scenario runs in: the programs under test, a scratch directory, the child
//! processes it started (so a scenario past its time budget can be put down from outside),
//! undo actions for mounts and kernel settings, and bounded waits.

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The programs and servers the scenarios use.
#[derive(Debug, Clone)]
pub struct Env {
    /// The gateway binary under test.
    pub fieldgate: PathBuf,
    /// mosquitto.
    pub mosquitto: PathBuf,
    /// The SecantusDB launcher (when no external server is given).
    pub secantusd: Option<PathBuf>,
    /// A real MongoDB server to use instead (`FIELDGATE_TEST_MONGODB_URI`).
    pub mongo_uri: Option<String>,
    /// Where scenarios make their scratch directories.
    pub work: PathBuf,
    /// Seed of the random moments (printed, so a run can be repeated).
    pub seed: u64,
}

/// An action that undoes something outside the process (unmount, detach, restore a sysctl).
type Undo = Box<dyn FnOnce() + Send>;

/// Processes and undo actions of one scenario, shared with the runner's watchdog.
#[derive(Default)]
pub struct Guard {
    pids: Mutex<Vec<u32>>,
    undo: Mutex<Vec<(u64, Undo)>>,
    next: Mutex<u64>,
}

impl Guard {
    /// For a scenario past its time: SIGKILL every process it still has registered (they
    /// are running: the owners untrack what they reap), then [`Guard::finish`].
    pub fn put_down(&self) {
        for pid in std::mem::take(&mut *locked(&self.pids)) {
            // SAFETY: plain kill(2) on a pid this scenario started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        self.finish();
    }

    /// Run every undo action still registered, newest first.
    pub fn finish(&self) {
        let mut undo = std::mem::take(&mut *locked(&self.undo));
        while let Some((_, f)) = undo.pop() {
            f();
        }
    }

    /// Run the undo action `id` now, if it has not run yet.
    fn undo(&self, id: u64) {
        let f = {
            let mut undo = locked(&self.undo);
            undo.iter()
                .position(|(i, _)| *i == id)
                .map(|at| undo.remove(at).1)
        };
        if let Some(f) = f {
            f();
        }
    }
}

/// Lock a mutex, carrying on past a panicked holder (the data are counters and logs).
pub fn locked<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One scenario's context.
pub struct Ctx {
    /// The programs.
    pub env: Env,
    /// This scenario's scratch directory.
    pub dir: PathBuf,
    /// A runtime for the async clients (MongoDB driver, WebSocket, HTTP).
    pub rt: tokio::runtime::Runtime,
    /// Random moments, seeded from [`Env::seed`] and the scenario name.
    pub rng: Mutex<rand::rngs::StdRng>,
    guard: Arc<Guard>,
}

impl Ctx {
    /// A context for scenario `name` with a fresh scratch directory.
    pub fn new(env: &Env, name: &str, guard: Arc<Guard>) -> anyhow::Result<Ctx> {
        let dir = env.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let salt = name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        Ok(Ctx {
            env: env.clone(),
            dir,
            rt,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(env.seed ^ salt)),
            guard,
        })
    }

    /// Spawn `cmd`, registered so the watchdog can kill it.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<Child> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        locked(&self.guard.pids).push(child.id());
        Ok(child)
    }

    /// Forget a process that has exited (its pid may be reused).
    pub fn reaped(&self, pid: u32) {
        locked(&self.guard.pids).retain(|p| *p != pid);
    }

    /// Register an undo action; returns its id for [`Ctx::undo_handle`].
    pub fn on_exit(&self, f: impl FnOnce() + Send + 'static) -> u64 {
        let mut next = locked(&self.guard.next);
        *next += 1;
        locked(&self.guard.undo).push((*next, Box::new(f)));
        *next
    }

    /// Something that runs the undo action `id` now (if it has not run yet), for owners
    /// of a registered resource that release it early.
    pub fn undo_handle(&self) -> impl Fn(u64) + Send + 'static {
        let guard = Arc::clone(&self.guard);
        move |id| guard.undo(id)
    }

    /// A random duration in `[lo, hi)`.
    pub fn random_between(&self, lo: Duration, hi: Duration) -> Duration {
        let ms =
            locked(&self.rng).random_range(lo.as_millis() as u64..hi.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Poll `cond` every 20 ms until it returns `Some`, or fail after `limit` naming `what`.
pub fn until<T>(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if t0.elapsed() > limit {
            bail!(
                "timed out after {:.0} s waiting for {what}",
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command to completion (bounded by the caller's own tools), failing with its
/// stderr if it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One entry of [`listing`]: (relative path, mode, uid, content of a file).
pub type Entry = (PathBuf, u32, u32, Vec<u8>);

/// Everything under `dir`: (relative path, mode, uid, content of files), sorted; for
/// proving a refused start left a journal untouched.
pub fn listing(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let m = std::fs::symlink_metadata(&p)?;
            let content = if m.is_file() {
                std::fs::read(&p)?
            } else {
                if m.is_dir() {
                    stack.push(p.clone());
                }
                Vec::new()
            };
            let rel = p.strip_prefix(dir)?.to_path_buf();
            out.push((rel, m.mode(), m.uid(), content));
        }
    }
    out.sort();
    Ok(out)
}
