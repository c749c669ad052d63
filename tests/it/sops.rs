//! SOPS: files encrypted by the real `sops` (built from the Go module
//! proxy) for Debian's `age` and gnupg keys, decrypted by tidegate as
//! `sops -d` decrypts them, and applied with the values nowhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidegate::render::{self, sops};

use crate::support::{
    GitRepo, client, ns_yaml, status_json, stderr, stdout, tidegate, tools_dir, unique,
};

/// Keys, and `sops` run with them.
struct Sops {
    dir: tempfile::TempDir,
    recipient: String,
    fingerprint: String,
}

use crate::support::run_ok as run;

impl Sops {
    fn new() -> Sops {
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        run("age-keygen", dir.path(), &["-o", "identity.agekey"], &[]);
        let identity = std::fs::read_to_string(dir.path().join("identity.agekey")).unwrap();
        let recipient = identity
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
        let home = gnupg.to_str().unwrap();
        let gpg = |args: &[&str]| {
            let mut all = vec!["--batch", "--pinentry-mode", "loopback", "--passphrase", ""];
            all.extend_from_slice(args);
            run("gpg", dir.path(), &all, &[("GNUPGHOME", home)])
        };
        gpg(&[
            "--quick-gen-key",
            "Sops <sops@example.com>",
            "default",
            "default",
            "never",
        ]);
        let listed =
            String::from_utf8(gpg(&["--with-colons", "--list-keys", "sops@example.com"])).unwrap();
        let fingerprint = listed
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .unwrap();
        let secret = gpg(&["--armor", "--export-secret-keys", "sops@example.com"]);
        std::fs::write(dir.path().join("keys.asc"), secret).unwrap();
        // Another age identity: files for it are not ours to open.
        run("age-keygen", dir.path(), &["-o", "other.key"], &[]);
        Sops {
            dir,
            recipient,
            fingerprint,
        }
    }

    fn other_recipient(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("other.key")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string()
    }

    /// `sops` with the keys (age identity and gpg keyring) in reach.
    fn sops(&self, args: &[&str]) -> Vec<u8> {
        let binary = tools_dir().join("sops");
        let gnupg = self.dir.path().join("gnupg");
        let identity = self.dir.path().join("identity.agekey");
        run(
            binary.to_str().unwrap(),
            self.dir.path(),
            args,
            &[
                ("GNUPGHOME", gnupg.to_str().unwrap()),
                ("SOPS_AGE_KEY_FILE", identity.to_str().unwrap()),
            ],
        )
    }

    /// `plain`, written as `name`, encrypted by sops with `args`.
    fn encrypt(&self, name: &str, plain: &[u8], args: &[&str]) -> Vec<u8> {
        let file = self.dir.path().join(name);
        std::fs::write(&file, plain).unwrap();
        let mut all = vec!["encrypt"];
        all.extend_from_slice(args);
        all.push(file.to_str().unwrap());
        self.sops(&all)
    }

    /// `sops -d` of an encrypted file (named for its format).
    fn decrypt(&self, name: &str, encrypted: &[u8], args: &[&str]) -> Vec<u8> {
        let file = self.dir.path().join(format!("enc-{name}"));
        std::fs::write(&file, encrypted).unwrap();
        let mut all = vec!["decrypt"];
        all.extend_from_slice(args);
        all.push(file.to_str().unwrap());
        self.sops(&all)
    }

    /// The keys directory tidegate reads (`--sops-keys`).
    fn keys_dir(&self) -> PathBuf {
        let keys = self.dir.path().join("tidegate-keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::copy(
            self.dir.path().join("identity.agekey"),
            keys.join("identity.agekey"),
        )
        .unwrap();
        std::fs::copy(self.dir.path().join("keys.asc"), keys.join("team.asc")).unwrap();
        keys
    }

    fn settings(&self) -> sops::Settings {
        let keys = self.keys_dir();
        let entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        let keys =
            sops::Keys::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        sops::Settings {
            keys: Some(Arc::new(keys)),
            structure_only: false,
        }
    }
}

fn secret_yaml(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    replicas: \"3\"\ntype: Opaque\nstringData:\n  password: {value}\n  port: \"5432\"\ndata:\n  token: dG9rZW4=\n"
    )
}

fn value_of(doc: &serde_json::Value) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.retain(|k, _| k == "name" || k == "namespace" || k == "labels");
        if let Some(labels) = meta.get_mut("labels").and_then(|l| l.as_object_mut()) {
            labels.retain(|k, _| !k.starts_with("tidegate.dev"));
        }
    }
    doc
}

#[test]
fn tidegate_decrypts_what_sops_encrypts_as_sops_decrypt_does() {
    let keys = Sops::new();
    let ns = "decrypted";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write = |rel: &str, bytes: &[u8]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let regex = ["--encrypted-regex", "^(data|stringData)$"];
    let age = ["--age", &keys.recipient];
    // YAML for age under a regex; everything encrypted for OpenPGP; JSON;
    // two documents under one MAC.
    let secret = keys.encrypt(
        "a.yaml",
        secret_yaml(ns, "by-age", "hunter2").as_bytes(),
        &[&age[..], &regex[..]].concat(),
    );
    write("secret.yaml", &secret);
    let all = keys.encrypt(
        "b.yaml",
        secret_yaml(ns, "by-openpgp", "swordfish").as_bytes(),
        &["--pgp", &keys.fingerprint],
    );
    write("all.yaml", &all);
    let json = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "json", "namespace": ns}, "data": {"n": "1", "flag": "true"}});
    let json_enc = keys.encrypt("c.json", json.to_string().as_bytes(), &age);
    write("config.json", &json_enc);
    let two = format!(
        "{}---\n{}",
        secret_yaml(ns, "first", "one"),
        secret_yaml(ns, "second", "two")
    );
    let two_enc = keys.encrypt("d.yaml", two.as_bytes(), &[&age[..], &regex[..]].concat());
    write("two.yaml", &two_enc);
    // A kustomize secretGenerator of a binary file and a dotenv file.
    let token = b"\x00binary token\xff\n";
    let token_enc = keys.encrypt(
        "token",
        token,
        &[&age[..], &["--input-type", "binary"]].concat(),
    );
    let env_enc = keys.encrypt("app.env", b"USER=admin\nPASSWORD=p@ss\n", &age);
    write("gen/token.enc", &token_enc);
    write("gen/app.enc.env", &env_enc);
    write(
        "gen/kustomization.yaml",
        format!("namespace: {ns}\ngeneratorOptions:\n  disableNameSuffixHash: true\nsecretGenerator:\n- name: generated\n  files:\n  - token=token.enc\n  - app.env=app.enc.env\n").as_bytes(),
    );
    let options = render::Options {
        sops: keys.settings(),
        kustomize: render::kustomize::Settings {
            binary: tools_dir().join("kustomize"),
            ..Default::default()
        },
        ..Default::default()
    };
    let set = render::render(root, &options);
    assert!(
        set.errors.is_empty(),
        "{:?}",
        set.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
    );
    let object = |name: &str| {
        set.manifests
            .iter()
            .find(|m| m.id.name == name)
            .unwrap_or_else(|| panic!("{name} rendered"))
            .object
            .value()
    };
    let parse = |bytes: Vec<u8>| -> Vec<serde_json::Value> {
        render::manifest::parse_documents(&String::from_utf8(bytes).unwrap(), &Default::default())
            .unwrap()
    };
    let by_sops = parse(keys.decrypt("a.yaml", &secret, &[]));
    assert_eq!(value_of(&object("by-age")), value_of(&by_sops[0]));
    assert_eq!(object("by-age")["stringData"]["password"], "hunter2");
    let by_sops = parse(keys.decrypt("b.yaml", &all, &[]));
    assert_eq!(value_of(&object("by-openpgp")), value_of(&by_sops[0]));
    let by_sops: serde_json::Value =
        serde_json::from_slice(&keys.decrypt("c.json", &json_enc, &[])).unwrap();
    assert_eq!(value_of(&object("json")), value_of(&by_sops));
    let by_sops = parse(keys.decrypt("d.yaml", &two_enc, &[]));
    assert_eq!(value_of(&object("first")), value_of(&by_sops[0]));
    assert_eq!(value_of(&object("second")), value_of(&by_sops[1]));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let generated = object("generated");
    let data = |key: &str| {
        b64.decode(generated["data"][key].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(data("token"), token.to_vec());
    assert_eq!(
        data("token"),
        keys.decrypt(
            "token",
            &token_enc,
            &["--input-type", "binary", "--output-type", "binary"]
        )
    );
    assert_eq!(data("app.env"), keys.decrypt("app.env", &env_enc, &[]));
}

#[test]
fn tampered_wrong_key_and_unsupported_files_are_refused_by_name_and_the_rest_is_kept() {
    let keys = Sops::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let age = [
        "--age",
        &keys.recipient,
        "--encrypted-regex",
        "^(data|stringData)$",
    ];
    let good = keys.encrypt(
        "good.yaml",
        secret_yaml("t", "good", "fine").as_bytes(),
        &age,
    );
    std::fs::write(root.join("good.yaml"), &good).unwrap();
    // A plain value changed after encryption: the MAC no longer holds.
    let text = String::from_utf8(good.clone()).unwrap();
    std::fs::write(
        root.join("renamed.yaml"),
        text.replace("name: good", "name: renamed"),
    )
    .unwrap();
    // A ciphertext changed: it no longer opens.
    let at = text.find("password: ENC[AES256_GCM,data:").unwrap()
        + "password: ENC[AES256_GCM,data:".len();
    let mut flipped = text.clone().into_bytes();
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(root.join("flipped.yaml"), flipped).unwrap();
    let other = keys.encrypt(
        "other.yaml",
        secret_yaml("t", "other", "x").as_bytes(),
        &["--age", &keys.other_recipient()],
    );
    std::fs::write(root.join("other.yaml"), &other).unwrap();
    std::fs::write(root.join("plain.yaml"), ns_yaml("t")).unwrap();
    let options = render::Options {
        sops: keys.settings(),
        ..Default::default()
    };
    let set = render::render(root, &options);
    let errors: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
    let error = |file: &str| {
        errors
            .iter()
            .find(|e| e.starts_with(file))
            .unwrap_or_else(|| panic!("{file} refused: {errors:?}"))
            .clone()
    };
    assert!(
        error("renamed.yaml").contains("the MAC does not match"),
        "{errors:?}"
    );
    assert!(
        error("flipped.yaml").contains("does not decrypt"),
        "{errors:?}"
    );
    let other = error("other.yaml");
    assert!(
        other.contains("no key held opens this file") && other.contains(&keys.other_recipient()),
        "{other}"
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
    assert_eq!(names, ["good", "t"]);
    for e in &errors {
        assert!(!e.contains("fine"), "an error shows no value: {e}");
    }
    // Without keys the file is an error saying how to decrypt it; validate
    // checks its structure.
    let set = render::render(root, &render::Options::default());
    assert!(
        set.errors
            .iter()
            .any(|e| e.to_string().starts_with("good.yaml")
                && e.to_string().contains("--sops-secret"))
    );
    std::fs::remove_file(root.join("other.yaml")).unwrap();
    std::fs::remove_file(root.join("flipped.yaml")).unwrap();
    let out = tidegate(&["validate", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let keys_dir = keys.keys_dir();
    let out = tidegate(&[
        "validate",
        root.to_str().unwrap(),
        "--sops-keys",
        keys_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("renamed.yaml") && stderr(&out).contains("the MAC does not match"),
        "{}",
        stderr(&out)
    );
}

/// Every file below `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_decrypted_secret_is_applied_and_its_value_is_nowhere_else() {
    use k8s_openapi::api::core::v1::{Event, Secret};
    let keys = Sops::new();
    let ns = unique("sops");
    let value = unique("decrypted-value");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns));
    let age = [
        "--age",
        &keys.recipient,
        "--encrypted-regex",
        "^(data|stringData)$",
    ];
    let secret = keys.encrypt("s.yaml", secret_yaml(&ns, "db", &value).as_bytes(), &age);
    repo.write("db.yaml", std::str::from_utf8(&secret).unwrap());
    let disabled = keys.encrypt(
        "x.yaml",
        secret_yaml(&ns, "kept", "left-encrypted").as_bytes(),
        &age,
    );
    let disabled = String::from_utf8(disabled).unwrap().replace(
        "  labels:\n",
        "  annotations:\n    tidegate.dev/decrypt: disabled\n  labels:\n",
    );
    repo.write("kept/kept.yaml", &disabled);
    repo.push("encrypted secret");
    let keys_dir = keys.keys_dir();
    let keys_arg = keys_dir.to_str().unwrap();
    let out = crate::support::tidegate_with_env(
        &repo
            .once_args(&[
                "--sops-keys",
                keys_arg,
                "--git-path",
                "ns.yaml",
                "--git-path",
                "db.yaml",
            ])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("RUST_LOG", "debug")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client().await, &ns);
    let applied = secrets.get("db").await.unwrap();
    assert_eq!(
        applied.data.as_ref().unwrap()["password"].0,
        value.as_bytes()
    );
    let needle = value.as_bytes();
    assert!(
        !stdout(&out).contains(&value) && !stderr(&out).contains(&value),
        "the logs show no value"
    );
    let annotations = serde_json::to_string(&applied.metadata.annotations).unwrap();
    assert!(
        !annotations.contains(&value),
        "no annotation holds the value: {annotations}"
    );
    assert!(
        !status_json(&repo.sync_set).to_string().contains(&value),
        "the status holds no value"
    );
    let events: kube::Api<Event> = kube::Api::namespaced(client().await, "default");
    let events =
        serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
    assert!(!events.contains(&value), "no Event holds the value");
    assert_eq!(
        files_holding(&repo.cache, needle),
        Vec::<PathBuf>::new(),
        "nothing on disk holds the value"
    );
    // diff masks it as every Secret's.
    let checkout = repo.work.to_str().unwrap();
    let diff = tidegate(&[
        "diff",
        checkout,
        "--sync-set-name",
        &repo.sync_set,
        "--sops-keys",
        keys_arg,
        "--git-path",
        "ns.yaml",
        "--git-path",
        "db.yaml",
    ]);
    assert!(
        !stdout(&diff).contains(&value) && !stderr(&diff).contains(&value),
        "diff shows no value"
    );

    // A document that opts out is not decrypted: applied as written, the
    // API server refuses its `sops` field, and the sync prunes nothing.
    let out = repo.sync_once(&["--sops-keys", keys_arg]);
    assert!(!out.status.success());
    let status = status_json(&repo.sync_set);
    let errors = status["errors"].to_string();
    assert!(errors.contains("kept"), "{status}");
    assert!(secrets.get("db").await.is_ok(), "the rest is applied");
}

#[tokio::test]
async fn an_encrypted_helm_release_gives_helm_its_values_and_no_file_holds_them() {
    use crate::helm_releases::{
        copy_chart, crd_installed, helm_binary, helm_release, write_release,
    };
    use k8s_openapi::api::apps::v1::Deployment;
    crd_installed().await;
    let keys = Sops::new();
    let ns = unique("sops-hr");
    let value = unique("decrypted-annotation");
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write("ns.yaml", &ns_yaml(&ns));
    let spec = format!("  values:\n    podAnnotations:\n      password: {value}\n");
    let release = helm_release(&ns, "web", &spec).replace("REPO_URL", &repo.url());
    let age = ["--age", &keys.recipient, "--encrypted-regex", "^(values)$"];
    let encrypted = keys.encrypt("hr.yaml", release.as_bytes(), &age);
    assert!(
        !String::from_utf8_lossy(&encrypted).contains(&value),
        "sops encrypted the value"
    );
    write_release(
        &repo,
        "releases/web.yaml",
        std::str::from_utf8(&encrypted).unwrap(),
    );
    repo.push("an encrypted release");
    let keys_dir = keys.keys_dir();
    // helm, run through a wrapper that looks for the value in every file
    // of the cache (where helm's work directories are) while helm runs.
    let found = keys.dir.path().join("found");
    let wrapper = keys.dir.path().join("helm-looking");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ngrep -rlF '{value}' '{}' >> '{}' 2>/dev/null\nexec '{}' \"$@\"\n",
            repo.cache.display(),
            found.display(),
            helm_binary()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helm = wrapper.to_str().unwrap();
    let out = repo.sync_once(&[
        "--helm-binary",
        helm,
        "--sops-keys",
        keys_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client().await, &ns);
    let web = deployments.get(&format!("{ns}-web")).await.unwrap();
    let annotations = web
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(
        annotations["password"], value,
        "helm had the decrypted values"
    );
    assert!(!stdout(&out).contains(&value) && !stderr(&out).contains(&value));
    assert_eq!(
        files_holding(&repo.cache, value.as_bytes()),
        Vec::<PathBuf>::new(),
        "no file holds the values"
    );
    let seen = std::fs::read_to_string(&found).unwrap_or_default();
    assert_eq!(seen, "", "no file held the values while helm ran");
}
