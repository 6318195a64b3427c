//! A real `redis-server` on a free 127.0.0.1 port, for the shared-mode tests: started from the
//! Debian package's binary (`.ci/run` installs it), with no persistence, stopped on drop.
//! A test that needs it fails (never skips) when the binary is missing.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a port that was just free, and waits until it answers PING.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL: no goodbye to the clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing persists).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command(&["PING"]).as_deref() == Some("+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Runs one command and returns the first line of the raw reply (`+OK`, `:1`, `$-1`...),
    /// or `None` when the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        self.command_bytes(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
    }

    /// [`command`](Self::command) with binary arguments.
    pub fn command_bytes(&self, args: &[&[u8]]) -> Option<String> {
        let mut stream = self.send(args)?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            reply.push(byte[0]);
        }
        reply.truncate(reply.len() - 2);
        String::from_utf8(reply).ok()
    }

    /// Connects and sends one command (RESP array of bulk strings); the reply is the caller's.
    fn send(&self, args: &[&[u8]]) -> Option<TcpStream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        stream.write_all(&out).ok()?;
        Some(stream)
    }

    /// Runs one command and parses the whole reply; `None` when the server cannot be reached.
    pub fn query(&self, args: &[&[u8]]) -> Option<Resp> {
        let stream = self.send(args)?;
        Resp::read(&mut std::io::BufReader::new(&stream))
    }

    /// `GET key`: the value, or `None` when there is none.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self
            .query(&[b"GET", key.as_bytes()])
            .expect("server reachable")
        {
            Resp::Bulk(value) => value,
            other => panic!("GET {key}: {other:?}"),
        }
    }

    /// The names of the keys matching `pattern`, sorted.
    pub fn key_names(&self, pattern: &str) -> Vec<String> {
        match self
            .query(&[b"KEYS", pattern.as_bytes()])
            .expect("server reachable")
        {
            Resp::Array(Some(items)) => {
                let mut names: Vec<String> = items
                    .into_iter()
                    .map(|item| match item {
                        Resp::Bulk(Some(name)) => String::from_utf8(name).unwrap(),
                        other => panic!("KEYS {pattern}: {other:?}"),
                    })
                    .collect();
                names.sort();
                names
            }
            other => panic!("KEYS {pattern}: {other:?}"),
        }
    }

    /// `PUBLISH channel message`: how many subscribers got it.
    pub fn publish(&self, channel: &str, message: &str) -> i64 {
        match self
            .query(&[b"PUBLISH", channel.as_bytes(), message.as_bytes()])
            .expect("server reachable")
        {
            Resp::Int(receivers) => receivers,
            other => panic!("PUBLISH {channel}: {other:?}"),
        }
    }

    /// `PUBSUB NUMSUB channel`: how many clients are subscribed to it.
    pub fn subscribers(&self, channel: &str) -> i64 {
        match self
            .query(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()])
            .expect("server reachable")
        {
            Resp::Array(Some(items)) => match items.get(1) {
                Some(Resp::Int(count)) => *count,
                other => panic!("PUBSUB NUMSUB {channel}: {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB {channel}: {other:?}"),
        }
    }

    /// `SET key value`, asserting the server took it.
    pub fn set(&self, key: &str, value: &[u8]) {
        assert_eq!(
            self.command_bytes(&[b"SET", key.as_bytes(), value])
                .as_deref(),
            Some("+OK")
        );
    }

    /// The keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> usize {
        let reply = self.command(&["KEYS", pattern]).expect("server reachable");
        reply.trim_start_matches('*').parse().unwrap()
    }
}

/// A parsed reply (RESP2).
#[derive(Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn read(reader: &mut impl std::io::BufRead) -> Option<Resp> {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).ok()?;
        if !line.ends_with(b"\r\n") {
            return None;
        }
        line.truncate(line.len() - 2);
        let (kind, rest) = line.split_first()?;
        let rest = String::from_utf8(rest.to_vec()).ok()?;
        match kind {
            b'+' => Some(Resp::Simple(rest)),
            b'-' => Some(Resp::Error(rest)),
            b':' => rest.parse().ok().map(Resp::Int),
            b'$' => {
                let len: i64 = rest.parse().ok()?;
                if len < 0 {
                    return Some(Resp::Bulk(None));
                }
                let mut value = vec![0u8; usize::try_from(len).ok()? + 2];
                reader.read_exact(&mut value).ok()?;
                value.truncate(value.len() - 2);
                Some(Resp::Bulk(Some(value)))
            }
            b'*' => {
                let len: i64 = rest.parse().ok()?;
                if len < 0 {
                    return Some(Resp::Array(None));
                }
                let items = (0..len)
                    .map(|_| Resp::read(reader))
                    .collect::<Option<Vec<_>>>()?;
                Some(Resp::Array(Some(items)))
            }
            _ => None,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
