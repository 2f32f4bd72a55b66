//! A moto S3 server per test (`moto_server` or `python3 -m moto.server`), killed on drop.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::free_port;

/// Hint printed when moto is missing.
pub const INSTALL_HINT: &str =
    "moto's S3 server not found: install it with `pip install 'moto[server]'`";

/// Dummy credentials moto accepts.
pub const ACCESS_KEY: &str = "testing";
/// Dummy secret moto accepts.
pub const SECRET_KEY: &str = "testing";
/// Region used against moto.
pub const REGION: &str = "us-east-1";

/// A running moto server on a free loopback port.
pub struct MotoServer {
    port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Starts moto and waits until it answers HTTP; panics with an install hint when moto is
    /// not installed.
    pub fn start() -> MotoServer {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("moto log file");
        let spawn = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.reopen().map(Stdio::from).unwrap_or(Stdio::null()))
                .stderr(log.reopen().map(Stdio::from).unwrap_or(Stdio::null()))
                .spawn()
        };
        let has_moto = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        let child = match spawn("moto_server", &[]) {
            Ok(child) => child,
            Err(_) if has_moto => spawn("python3", &["-m", "moto.server"])
                .unwrap_or_else(|err| panic!("cannot start moto: {err}. {INSTALL_HINT}")),
            Err(_) => panic!("{INSTALL_HINT}"),
        };
        let mut server = MotoServer { port, child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "moto exited early ({status}); log: {}. {INSTALL_HINT}",
                    server.log.path().display()
                );
            }
            if server.answers() {
                return server;
            }
            if Instant::now() > deadline {
                panic!(
                    "moto did not answer on port {} within 30s; log: {}",
                    server.port,
                    server.log.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }

    /// `http://127.0.0.1:<port>`: the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (S3 `CreateBucket`, path style; moto does not check signatures).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream
            .write_all(request.as_bytes())
            .expect("send CreateBucket");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "CreateBucket {bucket} failed: {answer}"
        );
    }

    /// Environment variables pointing an S3 client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
        ]
    }

    /// An `object_store` client for `bucket` on this server, as gong-load's S3 stage reaches it.
    pub fn store(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("an S3 client for the moto server")
    }

    /// The server's log file.
    pub fn log_path(&self) -> &std::path::Path {
        self.log.path()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
