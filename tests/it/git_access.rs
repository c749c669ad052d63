//! Git over SSH with the deploy key (real sshd) and over HTTP through a real
//! proxy (git http-backend, tinyproxy).

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;

use crate::servers::{GitHttps, Proxy, Sshd};
use crate::support::{
    GitRepo, app_yaml, client, create_secret, eventually, settings_value, stderr, stdout, tidegate,
    unique,
};

/// `tidegate identity` for a key Secret of the test's own; returns (public key, fingerprint).
fn identity(secret: &str, regenerate: bool) -> (String, String) {
    let mut args = vec!["identity", "--k8s-secret-name", secret];
    if regenerate {
        args.push("--regenerate");
    }
    let out = tidegate(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let public = lines.next().unwrap().to_string();
    let fingerprint = lines.next().unwrap().to_string();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    (public, fingerprint)
}

struct SshSetup {
    sshd: Sshd,
    repo: GitRepo,
    secret: String,
    known_hosts: tempfile::NamedTempFile,
    ns: String,
}

fn ssh_setup() -> SshSetup {
    let sshd = Sshd::start();
    let repo = GitRepo::new();
    let ns = unique("ssh");
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    let known_hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(known_hosts.path(), &sshd.known_hosts_line).unwrap();
    SshSetup {
        sshd,
        repo,
        secret: unique("deploy-key"),
        known_hosts,
        ns,
    }
}

impl SshSetup {
    fn sync(&self) -> std::process::Output {
        let url = self.sshd.url(&self.repo.bare);
        let known_hosts = self.known_hosts.path().to_string_lossy().into_owned();
        self.repo.sync_once_from(
            &url,
            &[
                "--k8s-secret-name",
                &self.secret,
                "--ssh-known-hosts",
                &known_hosts,
            ],
            &[],
        )
    }
}

#[tokio::test]
async fn ssh_clone_and_fetch_with_the_deploy_key() {
    let s = ssh_setup();
    let (public, _) = identity(&s.secret, false);
    // The same key on every call until regenerated.
    assert_eq!(identity(&s.secret, false).0, public);
    s.sshd.authorize(&[&public]);
    let out = s.sync();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(settings_value(&s.ns).await.as_deref(), Some("1"));

    // known_hosts from a ConfigMap instead of a file.
    let known_hosts: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": s.secret},
        "data": {"known_hosts": s.sshd.known_hosts_line}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client().await, "default")
        .create(&PostParams::default(), &known_hosts)
        .await
        .unwrap();
    s.repo.write("app.yaml", &app_yaml(&s.ns, "2"));
    s.repo.push("second");
    let url = s.sshd.url(&s.repo.bare);
    let from = format!("configmap/{}", s.secret);
    let out = s.repo.sync_once_from(
        &url,
        &[
            "--k8s-secret-name",
            &s.secret,
            "--ssh-known-hosts-from",
            &from,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("configured v1 ConfigMap {}/settings", s.ns)));
    assert_eq!(settings_value(&s.ns).await.as_deref(), Some("2"));
}

#[tokio::test]
async fn ssh_key_not_authorized_says_which_key_to_add() {
    let s = ssh_setup();
    let (public, _) = identity(&s.secret, false);
    let out = s.sync();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("add this deploy key to the repository"),
        "{err}"
    );
    assert!(
        err.contains(&public),
        "the key itself is in the message: {err}"
    );
}

#[tokio::test]
async fn ssh_wrong_host_key_is_refused() {
    let s = ssh_setup();
    let (public, _) = identity(&s.secret, false);
    s.sshd.authorize(&[&public]);
    // known_hosts lists another key for this host and port.
    let other = Sshd::start();
    let wrong = other
        .known_hosts_line
        .replace(&format!("]:{}", other.port), &format!("]:{}", s.sshd.port));
    std::fs::write(s.known_hosts.path(), wrong).unwrap();
    let out = s.sync();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "host key mismatch for [127.0.0.1]:{}",
            s.sshd.port
        )),
        "{err}"
    );
    assert!(
        err.contains(&s.sshd.host_fingerprint),
        "names the presented key: {err}"
    );

    // And a host missing from known_hosts is refused too.
    std::fs::write(s.known_hosts.path(), "").unwrap();
    let err = stderr(&s.sync());
    assert!(
        err.contains(&format!("unknown host [127.0.0.1]:{}", s.sshd.port)),
        "{err}"
    );
    assert_eq!(settings_value(&s.ns).await, None);
}

#[tokio::test]
async fn regenerated_key_is_used_by_the_running_daemon() {
    let s = ssh_setup();
    let (old, _) = identity(&s.secret, false);
    s.sshd.authorize(&[&old]);
    let url = s.sshd.url(&s.repo.bare);
    let known_hosts = s.known_hosts.path().to_string_lossy().into_owned();
    let daemon = s.repo.daemon(
        &url,
        &[
            "--k8s-secret-name",
            &s.secret,
            "--ssh-known-hosts",
            &known_hosts,
            "--git-poll-interval",
            "1s",
            "--listen",
            "off",
        ],
    );
    eventually(
        "the first sync over SSH",
        Duration::from_secs(30),
        || async { settings_value(&s.ns).await },
    )
    .await;

    let (new, _) = identity(&s.secret, true);
    assert_ne!(new, old);
    // The old key is removed from the Git host: tidegate must use the new one.
    s.sshd.authorize(&[&new]);
    s.repo
        .write("app.yaml", &app_yaml(&s.ns, "after-regenerate"));
    s.repo.push("after regenerate");
    eventually(
        "a sync with the new key",
        Duration::from_secs(30),
        || async { (settings_value(&s.ns).await? == "after-regenerate").then_some(()) },
    )
    .await;
    drop(daemon);

    // With only the old key authorized, fetching fails again.
    s.sshd.authorize(&[&old]);
    let out = s.sync();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&new), "{}", stderr(&out));
}

async fn https_secret(name: &str, password: &str) {
    create_secret(
        name,
        serde_json::json!({"username": "reader", "password": password}),
    )
    .await;
}

#[tokio::test]
async fn https_with_credentials_custom_ca_and_a_proxy() {
    let repo = GitRepo::new();
    let ns = unique("https");
    repo.write("app.yaml", &app_yaml(&ns, "via-proxy"));
    repo.push("first");
    let server = GitHttps::start(repo.bare.parent().unwrap(), "reader:letmein");
    let proxy = Proxy::start();
    let url = server.url("repo.git");
    let proxy_url = proxy.url();
    let ca = server.ca_file.to_string_lossy().into_owned();
    let good = unique("https-creds");
    https_secret(&good, "letmein").await;
    let access = [
        "--git-https-secret",
        good.as_str(),
        "--git-ca-file",
        ca.as_str(),
    ];
    let tunnel = format!("CONNECT 127.0.0.1:{}", server.port);

    let out = repo.sync_once_from(&url, &access, &[("HTTPS_PROXY", &proxy_url)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(settings_value(&ns).await.as_deref(), Some("via-proxy"));
    let through = proxy.log_text().matches(&tunnel).count();
    assert!(
        through > 0,
        "the fetch went through the proxy: {}",
        proxy.log_text()
    );

    // NO_PROXY exempts the host: the proxy sees nothing more.
    repo.write("app.yaml", &app_yaml(&ns, "direct"));
    repo.push("second");
    let out = repo.sync_once_from(
        &url,
        &access,
        &[("https_proxy", &proxy_url), ("no_proxy", "127.0.0.1")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(settings_value(&ns).await.as_deref(), Some("direct"));
    assert_eq!(
        proxy.log_text().matches(&tunnel).count(),
        through,
        "bypassed"
    );

    // --git-proxy sets it explicitly.
    repo.write("app.yaml", &app_yaml(&ns, "explicit"));
    repo.push("third");
    let out = repo.sync_once_from(
        &url,
        &[&access[..], &["--git-proxy", &proxy_url]].concat(),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(proxy.log_text().matches(&tunnel).count() > through);

    // Without the CA the certificate is refused; with a wrong password, authentication.
    let out = repo.sync_once_from(&url, &["--git-https-secret", &good], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    let bad = unique("https-bad");
    https_secret(&bad, "wrong").await;
    let out = repo.sync_once_from(
        &url,
        &["--git-https-secret", &bad, "--git-ca-file", &ca],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("authentication to"),
        "{}",
        stderr(&out)
    );

    // A repository that is not there.
    let out = repo.sync_once_from(&server.url("missing.git"), &access, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_repositorys_proxy_settings_carry_the_next_fetches() {
    // No --git-proxy and no proxy variable: after the first sync, the
    // daemon fetches through the proxy the repository declares.
    let repo = GitRepo::new();
    let ns = unique("repo-proxy");
    let proxy = Proxy::start();
    repo.write("app.yaml", &app_yaml(&ns, "direct")).write(
        "proxy.yaml",
        &format!(
            "apiVersion: tidegate.dev/v1\nkind: ProxySettings\nmetadata: {{name: proxy}}\nspec: {{httpsProxy: \"{}\"}}\n",
            proxy.url()
        ),
    );
    repo.push("first, with proxy settings");
    let server = GitHttps::start(repo.bare.parent().unwrap(), "reader:letmein");
    let url = server.url("repo.git");
    let ca = server.ca_file.to_string_lossy().into_owned();
    let secret = unique("repo-proxy-creds");
    https_secret(&secret, "letmein").await;
    let port = crate::servers::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = repo.daemon(
        &url,
        &[
            "--git-https-secret",
            &secret,
            "--git-ca-file",
            &ca,
            "--git-poll-interval",
            "1s",
            "--listen",
            &listen,
        ],
    );
    eventually("the first sync", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("direct")).then_some(())
    })
    .await;
    repo.write("app.yaml", &app_yaml(&ns, "through the proxy"));
    repo.push("second");
    eventually("the second commit", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("through the proxy")).then_some(())
    })
    .await;
    let tunnel = format!("CONNECT 127.0.0.1:{}", server.port);
    assert!(
        proxy.log_text().contains(&tunnel),
        "fetched through the repository's proxy: {}",
        proxy.log_text()
    );
}
