//! `annt::data::download` against a tiny HTTP/1.1 server run by the test itself on
//! 127.0.0.1, serving a small `.tar.gz` built here: success, already present, corrupt file
//! replaced, wrong bytes, short body, 404, stopping, and the official/mirror URLs.

use annt::data::DataError;
use annt::data::download::*;
use md5::{Digest, Md5};
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const NAME: &str = "tiny.tar.gz";

/// What the test server answers to every request.
#[derive(Clone)]
enum Reply {
    /// 200 with this body and its true length.
    Body(Vec<u8>),
    /// This status with a short text body.
    Status(u16, &'static str),
    /// 200 announcing `declared` bytes, sending `body` (shorter), then closing.
    Short { body: Vec<u8>, declared: usize },
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 that answers at most `max_requests`
/// requests (one per connection) and stops when finished, dropped, or after 30 s.
struct Server {
    base: String,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(reply: Reply, max_requests: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        // Non-blocking accept so the loop can notice `stop` and its deadline.
        listener.set_nonblocking(true).expect("nonblocking");
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let paths = Arc::clone(&paths);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // No deadline of its own: the server lives until its test is done with it
                // (`finish`, or `Drop` when the test panics), however slow a loaded
                // machine makes the test.
                let mut served = 0;
                while served < max_requests && !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            if let Some(path) = handle(stream, &reply) {
                                paths.lock().expect("lock").push(path);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Self {
            base: format!("http://{addr}/"),
            paths,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and returns the paths it was asked for.
    fn finish(mut self) -> Vec<String> {
        self.shut_down();
        self.paths.lock().expect("lock").clone()
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Reads one request's head, answers it, closes. Returns the request path. Write errors
/// are ignored: a client that stops reading (the `stop` test) resets the connection.
fn handle(mut stream: TcpStream, reply: &Reply) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    // Only a guard against a client that hangs; far above what a loaded machine needs.
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(300)))
        .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();

    let (status, declared, body): (String, usize, &[u8]) = match reply {
        Reply::Body(b) => ("200 OK".into(), b.len(), b),
        Reply::Status(code, text) => (format!("{code} {text}"), text.len(), text.as_bytes()),
        Reply::Short { body, declared } => ("200 OK".into(), *declared, body),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-gzip\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream
        .write_all(header.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Some(path)
}

/// A real `.tar.gz` of ~200 KB of incompressible bytes, so a download takes several
/// chunks.
fn archive() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut data = vec![0u8; 200 * 1024];
    for b in &mut data {
        // xorshift64: deterministic noise that gzip cannot shrink.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = (state >> 24) as u8;
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, bytes) in [
        ("tiny/data_batch_1.bin", &data[..]),
        ("tiny/readme.txt", b"hello"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, bytes)
            .expect("tar append");
    }
    builder
        .into_inner()
        .expect("tar finish")
        .finish()
        .expect("gzip finish")
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The spec of `NAME` with `md5`, fetched from `server`.
fn spec(server: &Server, md5: &str) -> DownloadSpec {
    let template = DownloadSpec {
        url: String::new(),
        md5: md5.to_owned(),
        file_name: NAME.to_owned(),
    };
    with_mirror(template, &server.base)
}

/// File names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn never() -> bool {
    false
}

fn no_progress(_: u64, _: Option<u64>) {}

#[test]
fn fresh_download_then_already_present() {
    let bytes = archive();
    let server = Server::start(Reply::Body(bytes.clone()), 2);
    let tmp = tempfile::tempdir().expect("tempdir");
    // A folder that does not exist yet: download creates it.
    let dir = tmp.path().join("data").join("cifar");
    let spec = spec(&server, &md5_hex(&bytes));

    let calls = RefCell::new(Vec::new());
    let out = download(
        &spec,
        &dir,
        &mut |done, total| calls.borrow_mut().push((done, total)),
        &never,
    )
    .expect("download");
    assert_eq!(out.status, DownloadStatus::Downloaded);
    assert_eq!(out.path, dir.join(NAME));
    assert_eq!(out.bytes, bytes.len() as u64);
    assert_eq!(std::fs::read(&out.path).expect("read"), bytes);
    assert_eq!(names(&dir), [NAME], "only the final file is left");

    let calls = calls.into_inner();
    let len = bytes.len() as u64;
    assert_eq!(calls.first(), Some(&(0, Some(len))));
    assert_eq!(calls.last(), Some(&(len, Some(len))));
    assert!(calls.len() > 2, "progress per chunk: {calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");

    // Second call: verified from disk, the server is not asked again.
    let again = download(&spec, &dir, &mut no_progress, &never).expect("second download");
    assert_eq!(again.status, DownloadStatus::AlreadyPresent);
    assert_eq!(again.bytes, len);
    assert_eq!(server.finish(), [format!("/{NAME}")]);
}

#[test]
fn corrupt_file_is_replaced() {
    let bytes = archive();
    let server = Server::start(Reply::Body(bytes.clone()), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(NAME), b"not the archive").expect("write corrupt");

    let out = download(
        &spec(&server, &md5_hex(&bytes)),
        dir.path(),
        &mut no_progress,
        &never,
    )
    .expect("download");
    assert_eq!(out.status, DownloadStatus::ReplacedCorrupt);
    assert_eq!(std::fs::read(&out.path).expect("read"), bytes);
    assert_eq!(names(dir.path()), [NAME]);
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn corrupt_file_is_kept_when_the_new_download_fails() {
    let server = Server::start(Reply::Status(404, "Not Found"), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(NAME), b"not the archive").expect("write corrupt");
    let err = download(
        &spec(&server, &md5_hex(b"whatever")),
        dir.path(),
        &mut no_progress,
        &never,
    )
    .expect_err("404");
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert_eq!(names(dir.path()), [NAME], "no partial file");
    assert_eq!(
        std::fs::read(dir.path().join(NAME)).expect("read"),
        b"not the archive"
    );
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn wrong_bytes_fail_the_checksum_and_leave_nothing() {
    let bytes = archive();
    let server = Server::start(Reply::Body(bytes.clone()), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = md5_hex(b"some other archive");

    let err = download(
        &spec(&server, &expected),
        dir.path(),
        &mut no_progress,
        &never,
    )
    .expect_err("checksum mismatch");
    match &err {
        DataError::Checksum {
            path,
            expected: e,
            actual,
        } => {
            assert_eq!(path, &dir.path().join(NAME));
            assert_eq!(e, &expected);
            assert_eq!(actual, &md5_hex(&bytes));
        }
        other => panic!("expected a checksum error, got {other}"),
    }
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn short_body_fails_and_leaves_nothing() {
    let bytes = archive();
    let half = bytes[..bytes.len() / 2].to_vec();
    let server = Server::start(
        Reply::Short {
            body: half,
            declared: bytes.len(),
        },
        1,
    );
    let dir = tempfile::tempdir().expect("tempdir");

    let err = download(
        &spec(&server, &md5_hex(&bytes)),
        dir.path(),
        &mut no_progress,
        &never,
    )
    .expect_err("short body");
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn not_found_is_a_download_error_naming_the_status() {
    let server = Server::start(Reply::Status(404, "Not Found"), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = spec(&server, &md5_hex(b"x"));

    let err = download(&spec, dir.path(), &mut no_progress, &never).expect_err("404");
    match &err {
        DataError::Download { url, reason } => {
            assert_eq!(url, &spec.url);
            assert!(reason.contains("404"), "{reason}");
        }
        other => panic!("expected a download error, got {other}"),
    }
    assert!(err.to_string().contains("404"), "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn stopping_mid_download_leaves_nothing() {
    let bytes = archive();
    let server = Server::start(Reply::Body(bytes.clone()), 1);
    let dir = tempfile::tempdir().expect("tempdir");

    // The user presses Ctrl-C once the first bytes have arrived.
    let pressed = Cell::new(false);
    let err = download(
        &spec(&server, &md5_hex(&bytes)),
        dir.path(),
        &mut |done, _| pressed.set(pressed.get() || done > 0),
        &|| pressed.get(),
    )
    .expect_err("stopped");
    assert!(matches!(err, DataError::Stopped), "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    assert_eq!(server.finish().len(), 1);
}

#[test]
fn stopped_before_starting_makes_no_request() {
    let server = Server::start(Reply::Body(archive()), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = download(
        &spec(&server, &md5_hex(b"x")),
        dir.path(),
        &mut no_progress,
        &|| true,
    )
    .expect_err("stopped");
    assert!(matches!(err, DataError::Stopped), "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    assert!(server.finish().is_empty());
}

#[test]
fn official_archives_and_mirrors() {
    let cases = [
        (
            CifarVariant::Cifar10,
            ArchiveFormat::Binary,
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
        ),
        (
            CifarVariant::Cifar10,
            ArchiveFormat::Python,
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
        (
            CifarVariant::Cifar100,
            ArchiveFormat::Binary,
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        ),
        (
            CifarVariant::Cifar100,
            ArchiveFormat::Python,
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ];
    for (variant, format, file, md5) in cases {
        let spec = official(variant, format);
        assert_eq!(spec.file_name, file);
        assert_eq!(spec.md5, md5);
        assert_eq!(spec.url, format!("https://www.cs.toronto.edu/~kriz/{file}"));

        for base in [
            "https://mirror.example/cifar",
            "https://mirror.example/cifar/",
        ] {
            let m = with_mirror(spec.clone(), base);
            assert_eq!(m.url, format!("https://mirror.example/cifar/{file}"));
            assert_eq!(m.md5, md5);
            assert_eq!(m.file_name, file);
        }
    }
}

#[test]
fn default_data_dir_is_annt_under_the_data_dir() {
    if let Some(d) = default_data_dir() {
        assert_eq!(d.file_name().and_then(|n| n.to_str()), Some("annt"));
    }
}

#[test]
fn variants_and_formats_serialise_kebab_case() {
    let s = serde_json::to_string(&(CifarVariant::Cifar100, ArchiveFormat::Python)).expect("json");
    assert_eq!(s, r#"["cifar100","python"]"#);
}
