//! Real servers on loopback for Git access tests: Debian's OpenSSH server,
//! `git http-backend` behind Python's CGI server, and tinyproxy. Each is
//! stopped when its handle drops.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's {package} (`apt-get install {package}`; .ci/run does)"
    );
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenSSH server serving the repositories of this machine to one user.
pub struct Sshd {
    _dir: tempfile::TempDir,
    _process: Process,
    pub port: u16,
    pub authorized_keys: PathBuf,
    /// `[127.0.0.1]:port ssh-ed25519 …`, for a known_hosts file.
    pub known_hosts_line: String,
    /// The host key's `SHA256:` fingerprint.
    pub host_fingerprint: String,
    pub user: String,
}

impl Sshd {
    pub fn start() -> Sshd {
        require("/usr/sbin/sshd", "openssh-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_key"))
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        let authorized_keys = d.join("authorized_keys");
        std::fs::write(&authorized_keys, "").unwrap();
        let port = free_port();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {keys}\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nAllowUsers {user}\nLogLevel VERBOSE\n",
            host_key = d.join("host_key").display(),
            dir = d.display(),
            keys = authorized_keys.display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        // Privilege separation needs this directory; a booted system makes it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = d.join("sshd.log");
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sshd");
        wait_for_port(port, &mut child, &log);
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_pub = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let fingerprint = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(d.join("host_key.pub"))
            .output()
            .unwrap();
        let host_fingerprint = String::from_utf8(fingerprint.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        Sshd {
            known_hosts_line: format!("[127.0.0.1]:{port} {host_pub}\n"),
            _dir: dir,
            _process: Process(child),
            port,
            authorized_keys,
            host_fingerprint,
            user,
        }
    }

    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    pub fn authorize(&self, keys: &[&str]) {
        std::fs::write(
            &self.authorized_keys,
            keys.iter().map(|k| format!("{k}\n")).collect::<String>(),
        )
        .unwrap();
    }
}

/// Git's smart HTTP protocol over TLS: `git http-backend` behind a small
/// Python server with a self-signed certificate, and basic authentication.
pub struct GitHttps {
    _dir: tempfile::TempDir,
    _process: Process,
    pub port: u16,
    /// The server's certificate: the CA to trust.
    pub ca_file: PathBuf,
}

impl GitHttps {
    /// Serves the bare repositories under `root` to `user:password`.
    pub fn start(root: &Path, credentials: &str) -> GitHttps {
        require("/usr/lib/git-core/git-http-backend", "git");
        require("/usr/bin/openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success());
        let port = free_port();
        let log = dir.path().join("https.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/git_http_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(root)
            .arg(&cert)
            .arg(&key)
            .env("GIT_HTTP_AUTH", credentials)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the Git HTTPS server (python3)");
        wait_for_port(port, &mut child, &log);
        GitHttps {
            _dir: dir,
            _process: Process(child),
            port,
            ca_file: cert,
        }
    }

    /// The URL of `name` (a directory under the served root).
    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }
}

/// tinyproxy, logging every request it forwards.
pub struct Proxy {
    _dir: tempfile::TempDir,
    _process: Process,
    pub port: u16,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start() -> Proxy {
        require("/usr/bin/tinyproxy", "tinyproxy");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\nLogLevel Info\nMaxClients 20\nAllow 127.0.0.1\nPidFile \"{pid}\"\n",
            log = log.display(),
            pid = dir.path().join("tinyproxy.pid").display()
        );
        std::fs::write(dir.path().join("tinyproxy.conf"), config).unwrap();
        let out = dir.path().join("stderr.log");
        let mut child = Command::new("/usr/bin/tinyproxy")
            .args(["-d", "-c"])
            .arg(dir.path().join("tinyproxy.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&out).unwrap())
            .spawn()
            .expect("start tinyproxy");
        wait_for_port(port, &mut child, &out);
        Proxy {
            _dir: dir,
            _process: Process(child),
            port,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
