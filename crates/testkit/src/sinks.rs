//! Local receivers that record what is sent to them: an HTTP server
//! ([`HttpSink`]: webhooks, pings) and an SMTP server ([`SmtpSink`]:
//! email), each on a free loopback port, served by plain threads (so they
//! work from sync and async tests alike) and stopped when dropped.
//!
//! They speak just enough of each protocol for a real client (reqwest,
//! lettre) to deliver: HTTP/1.1 with Content-Length bodies and keep-alive;
//! SMTP's EHLO/HELO, MAIL, RCPT, DATA (with dot-unstuffing), RSET, NOOP,
//! QUIT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One HTTP request received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// One email received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent (CRLF line ends, dot-unstuffed).
    pub data: String,
}

/// What a sink does with one connection: serve it, keeping what arrives.
type Handler<T> = fn(TcpStream, Arc<Mutex<Vec<T>>>) -> std::io::Result<()>;

struct Server<T> {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<T>>>,
    stop: Arc<AtomicBool>,
}

impl<T: Clone + Send + 'static> Server<T> {
    fn start(handle: Handler<T>) -> Server<T> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let g = g.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = handle(conn, g);
                });
            }
        });
        Server { addr, got, stop }
    }

    fn received(&self) -> Vec<T> {
        self.got.lock().expect("not poisoned").clone()
    }

    fn wait_for(&self, n: usize, what: &str) -> Vec<T> {
        crate::wait::wait_until(Duration::from_secs(60), what, || {
            self.got.lock().expect("not poisoned").len() >= n
        });
        self.received()
    }
}

impl<T> Drop for Server<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// An HTTP server that answers 200 to everything and records requests.
pub struct HttpSink(Server<Request>);

impl HttpSink {
    pub fn start() -> HttpSink {
        HttpSink(Server::start(serve_http))
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
    }

    pub fn received(&self) -> Vec<Request> {
        self.0.received()
    }

    /// Waits (60 s at most) until at least `n` requests arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Request> {
        self.0
            .wait_for(n, &format!("{n} HTTP requests reach {}", self.url()))
    }
}

fn serve_http(conn: TcpStream, got: Arc<Mutex<Vec<Request>>>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.trim().eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        got.lock().expect("not poisoned").push(Request {
            method,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
        w.flush()?;
    }
}

/// An SMTP server that accepts every message and records it.
pub struct SmtpSink(Server<Mail>);

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink(Server::start(serve_smtp))
    }

    /// `smtp://127.0.0.1:PORT` (no TLS).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.0.addr)
    }

    pub fn received(&self) -> Vec<Mail> {
        self.0.received()
    }

    /// Waits (60 s at most) until at least `n` messages arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Mail> {
        self.0
            .wait_for(n, &format!("{n} emails reach {}", self.url()))
    }
}

fn address(arg: &str) -> String {
    let a = arg.split_once(':').map_or(arg, |(_, v)| v).trim();
    a.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}

fn serve_smtp(conn: TcpStream, got: Arc<Mutex<Vec<Mail>>>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 lifeboat-testkit ESMTP sink\r\n")?;
    let mut from = String::new();
    let mut to = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => w.write_all(b"250-lifeboat-testkit\r\n250 8BITMIME\r\n")?,
            "HELO" | "NOOP" => w.write_all(b"250 ok\r\n")?,
            "RSET" => {
                from.clear();
                to.clear();
                w.write_all(b"250 ok\r\n")?;
            }
            "MAIL" => {
                from = address(&cmd[4..]);
                w.write_all(b"250 ok\r\n")?;
            }
            "RCPT" => {
                to.push(address(&cmd[4..]));
                w.write_all(b"250 ok\r\n")?;
            }
            "DATA" => {
                w.write_all(b"354 end with .\r\n")?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                got.lock().expect("not poisoned").push(Mail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                w.write_all(b"250 queued\r\n")?;
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"502 not implemented\r\n")?,
        }
        w.flush()?;
    }
}

/// A loopback address nothing listens on (bound, then released): a dead
/// endpoint that refuses connections.
pub fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("bound")
}
