//! Runs the real `ringgate` binary with a given environment and reads its JSON logs.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A running `ringgate` process.
pub struct Process {
    pub child: Child,
    pub logs: mpsc::Receiver<serde_json::Value>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub seen: Vec<serde_json::Value>,
}

impl Process {
    /// Starts the binary with `env` (plus JSON logs) and waits for its listeners.
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::spawn(Self::command(env), env)
    }

    /// Like [`Process::start`], with the process's CPU affinity set to `cpus` (as `taskset`
    /// would).
    pub fn start_on_cpus(env: &[(&str, &str)], cpus: &[usize]) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Self::command(env);
        // SAFETY: cpu_set_t is plain data (zeroed is the empty set).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            // SAFETY: `set` is a valid cpu_set_t.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: the closure only calls sched_setaffinity (async-signal-safe) on a set built
        // before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn(cmd, env)
    }

    /// The command line for the binary: a clean environment plus `env`.
    fn command(env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringgate"));
        cmd.env_clear()
            .env("RINGGATE_LOG_FORMAT", "json")
            .env("RINGGATE_LOG", "info")
            .env("RINGGATE_LISTEN", "127.0.0.1:0")
            .env("RINGGATE_WORKERS", "2")
            .env("RINGGATE_PIN_CORES", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawns `cmd` and waits for the listeners `env` asks for.
    fn spawn(mut cmd: Command, env: &[(&str, &str)]) -> Self {
        let mut child = cmd.spawn().expect("spawn ringgate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"raw": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut p = Process {
            child,
            logs: rx,
            http: None,
            https: None,
            seen: Vec::new(),
        };
        let want_https = env.iter().any(|(k, _)| *k == "RINGGATE_TLS_LISTEN");
        let want_http = !env
            .iter()
            .any(|(k, v)| *k == "RINGGATE_LISTEN" && *v == "off");
        while (want_http && p.http.is_none()) || (want_https && p.https.is_none()) {
            let line = p
                .next_log(Duration::from_secs(10))
                .expect("ringgate logs its listeners");
            let msg = line["fields"]["message"].as_str().unwrap_or("");
            let addr = line["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            match msg {
                "listening (http)" => p.http = addr,
                "listening (https)" => p.https = addr,
                _ => {}
            }
        }
        p
    }

    /// The next log line within `wait`.
    pub fn next_log(&mut self, wait: Duration) -> Option<serde_json::Value> {
        let v = self.logs.recv_timeout(wait).ok()?;
        self.seen.push(v.clone());
        Some(v)
    }

    /// Waits for a log line whose message contains `text`.
    pub fn wait_log(&mut self, text: &str, wait: Duration) -> serde_json::Value {
        let end = std::time::Instant::now() + wait;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.next_log(left) {
                Some(v)
                    if v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(text)) =>
                {
                    return v
                }
                Some(_) => {}
                None => break,
            }
        }
        panic!("no log line containing {text:?}; seen: {:#?}", self.seen);
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!("ringgate did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `env` and `args`; returns (exit code, stdout, stderr).
pub fn run_to_exit(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run ringgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
