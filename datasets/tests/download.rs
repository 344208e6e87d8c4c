//! `download::fetch` against a real HTTP server on 127.0.0.1 serving a CIFAR-shaped
//! archive: download, resume after a dropped connection, checksum, offline.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use datasets::cifar10::{self, BINARY_DIR, TEST_FILE, TRAIN_FILES};
use datasets::download::{self, DownloadError, Source};
use md5::{Digest, Md5};

/// A tar.gz laid out like the official one, with two real images per batch.
fn archive() -> Vec<u8> {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/cifar10");
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for f in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        let bytes = std::fs::read(shared.join(f)).unwrap();
        let records = &bytes[..2 * cifar10::RECORD_BYTES];
        let mut header = tar::Header::new_gnu();
        header.set_size(records.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("{BINARY_DIR}/{f}"), records)
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `body` to at most `connections` requests, honouring `Range: bytes=N-`; the
/// first response stops after `cut_first` bytes when given. Returns the base URL and the
/// ranges asked for.
fn serve(
    body: Vec<u8>,
    connections: usize,
    cut_first: Option<usize>,
) -> (String, Arc<Mutex<Vec<Option<u64>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/cifar-10-binary.tar.gz",
        listener.local_addr().unwrap()
    );
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    thread::spawn(move || {
        for (i, stream) in listener.incoming().take(connections).enumerate() {
            let Ok(stream) = stream else { return };
            let _ = handle(stream, &body, if i == 0 { cut_first } else { None }, &seen);
        }
    });
    (url, ranges)
}

fn handle(
    mut stream: TcpStream,
    body: &[u8],
    cut: Option<usize>,
    seen: &Mutex<Vec<Option<u64>>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
    }
    seen.lock().unwrap().push(range);
    let start = range.unwrap_or(0) as usize;
    let rest = &body[start..];
    let head = match range {
        Some(_) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
            rest.len(),
            body.len() - 1,
            body.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            rest.len()
        ),
    };
    stream.write_all(head.as_bytes())?;
    stream.write_all(&rest[..cut.unwrap_or(rest.len()).min(rest.len())])?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

#[test]
fn download_resumes_after_a_dropped_connection_then_checks_and_unpacks() {
    let body = archive();
    let (url, ranges) = serve(body.clone(), 2, Some(body.len() / 2));
    let source = Source {
        url,
        md5: md5_hex(&body),
        file_name: "cifar-10-binary.tar.gz".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let first = download::fetch(&source, dir.path(), |_| {});
    let err = first.unwrap_err();
    assert!(matches!(err, DownloadError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("resume"), "{err}");
    let part = dir.path().join("cifar-10-binary.tar.gz.part");
    assert_eq!(
        std::fs::metadata(&part).unwrap().len() as usize,
        body.len() / 2
    );

    let mut last = None;
    let unpacked = download::fetch(&source, dir.path(), |p| last = Some(p)).unwrap();
    assert_eq!(
        *ranges.lock().unwrap(),
        vec![None, Some((body.len() / 2) as u64)]
    );
    let last = last.unwrap();
    assert_eq!(
        (last.done, last.total),
        (body.len() as u64, Some(body.len() as u64))
    );
    let data = cifar10::load(&unpacked).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (10, 2));
    // Whole and unpacked: a second fetch does nothing.
    assert_eq!(
        download::fetch(&source, dir.path(), |_| {}).unwrap(),
        unpacked
    );
}

#[test]
fn a_checksum_mismatch_is_named_and_the_file_deleted() {
    let body = archive();
    let (url, _) = serve(body, 1, None);
    let source = Source {
        url,
        md5: "00000000000000000000000000000000".into(),
        file_name: "cifar-10-binary.tar.gz".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let err = download::fetch(&source, dir.path(), |_| {}).unwrap_err();
    assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("cifar-10-binary.tar.gz"));
    assert!(!dir.path().join("cifar-10-binary.tar.gz").exists());
    assert!(!dir.path().join(BINARY_DIR).exists());
}

#[test]
fn offline_says_it_cannot_reach_the_address_and_how_to_use_a_copy() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = Source {
        url: format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz"),
        ..Source::cifar10_binary()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = download::fetch(&source, dir.path(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot reach http://127.0.0.1"), "{err}");
    assert!(err.contains("--data DIR or FL_DATA"), "{err}");
}
