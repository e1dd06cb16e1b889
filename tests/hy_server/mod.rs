//! A running `hy run` for the integration tests: started with the given arguments on a free
//! port (`--port 0`), its address read from the line it prints when ready; killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct HyServer {
    child: Child,
    /// e.g. `http://127.0.0.1:41234/v1`
    pub base: String,
    /// The line `hy run` printed when ready.
    #[allow(dead_code)] // not every test binary that includes this module reads it
    pub ready_line: String,
}

impl HyServer {
    /// `hy run ARGS --port 0`; returns once the server is ready.
    pub fn start(args: &[&str]) -> HyServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hy"))
            .arg("run")
            .args(args)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hy run");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the ready line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in the ready line: {line:?}"))
            .to_string();
        HyServer { child, base, ready_line: line }
    }
}

impl Drop for HyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
