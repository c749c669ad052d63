//! Kustomize roots: 1,000 objects laid out as a base and an overlay
//! (namespaces as plain files beside them), against the same objects as
//! plain files, in the same run. kustomize runs through a wrapper that
//! counts its processes, so the no-op figure is kustomize's own count.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{
    Bench, Figure, NAMESPACES, commit, generate, limit_figure, median, percentile, ratio_figure,
    repository,
};
use crate::Result;

const OBJECTS: usize = 1000;
const PUSHES: usize = 30;
/// The apps of the running daemon's repository.
const APPS: usize = 10;

/// `tree` (as `generate` wrote it) turned into `apps` bases, each of the
/// objects of its share of the namespaces, and an overlay of each that
/// loads it, labels everything and patches one ConfigMap; the namespaces
/// move to plain files beside them. One app: `base/` and `overlay/`; more:
/// `app-N/base/` and `app-N/overlay/`.
fn layout(tree: &Path, prefix: &str, apps: usize) -> Result<()> {
    let plain = tree.join("namespaces");
    std::fs::create_dir_all(&plain).map_err(|e| e.to_string())?;
    let write = |path: PathBuf, text: String| std::fs::write(path, text).map_err(|e| e.to_string());
    for app in 0..apps {
        let dir = if apps == 1 {
            tree.to_path_buf()
        } else {
            tree.join(format!("app-{app}"))
        };
        let base = dir.join("base");
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let mut resources = Vec::new();
        for n in (0..NAMESPACES).filter(|n| n % apps == app) {
            let ns = format!("{prefix}-{n}");
            let from = tree.join(&ns);
            std::fs::rename(
                from.join("namespace.yaml"),
                plain.join(format!("{ns}.yaml")),
            )
            .map_err(|e| e.to_string())?;
            std::fs::rename(&from, base.join(&ns)).map_err(|e| e.to_string())?;
            let mut files: Vec<String> = std::fs::read_dir(base.join(&ns))
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            files.sort();
            resources.extend(files.into_iter().map(|f| format!("- {ns}/{f}")));
        }
        write(
            base.join("kustomization.yaml"),
            format!("resources:\n{}\n", resources.join("\n")),
        )?;
        let overlay = dir.join("overlay");
        std::fs::create_dir_all(&overlay).map_err(|e| e.to_string())?;
        write(
            overlay.join("kustomization.yaml"),
            "resources: [../base]\npatches: [{path: patch.yaml}]\nlabels:\n- pairs: {tier: bench}\n".into(),
        )?;
        // The first ConfigMap of the app's first namespace (`generate`
        // makes object i a ConfigMap when 3 divides it, in namespace i % 10).
        let cm = (0..)
            .map(|k| app + NAMESPACES * k)
            .find(|i| i % 3 == 0)
            .expect("one");
        write(
            overlay.join("patch.yaml"),
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: obj-{cm}, namespace: {prefix}-{app}}}\ndata:\n  greeting: hello\n"
            ),
        )?;
    }
    Ok(())
}

/// A kustomize that counts its runs in `counter` and runs the real one.
fn counting_kustomize(dir: &Path, real: &Path) -> Result<(PathBuf, PathBuf)> {
    let counter = dir.join("kustomize-runs");
    let script = dir.join("kustomize-counting");
    std::fs::write(&counter, "").map_err(|e| e.to_string())?;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\nexec '{}' \"$@\"\n",
            counter.display(),
            real.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok((script, counter))
}

fn runs(counter: &Path) -> Result<usize> {
    Ok(std::fs::read_to_string(counter)
        .map_err(|e| e.to_string())?
        .lines()
        .count())
}

pub fn kustomize(b: &Bench, figures: &mut Vec<Figure>) -> Result<String> {
    let dir = b.dir.join("kustomize");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (wrapper, counter) = counting_kustomize(&dir, &b.kustomize)?;
    let wrapper_text = wrapper.display().to_string();
    let flags = ["--kustomize-binary", wrapper_text.as_str()];

    // Cold syncs, plain and built, taking turns on objects of their own.
    let (mut plain, mut built) = (Vec::new(), Vec::new());
    for round in 0..2 {
        for turn in 0..2 {
            let kustomized = (round + turn) % 2 == 1;
            let name = format!("{}{round}", if kustomized { "kk" } else { "kp" });
            let prefix = format!("{name}-1k");
            let tree = dir.join(format!("{name}-tree"));
            generate(&tree, &prefix, OBJECTS)?;
            if kustomized {
                layout(&tree, &prefix, 1)?;
            }
            let repo = dir.join(format!("{name}-repo"));
            repository(&repo, &tree)?;
            let set = format!("bench-{name}");
            if kustomized {
                eprintln!("bench: tidegate daemon --once, cold, base and overlay");
                built.push(b.tidegate_sync_with(&repo, &set, &flags)?.wall);
            } else {
                eprintln!("bench: tidegate daemon --once, cold, the same objects as plain files");
                plain.push(b.tidegate_sync(&repo, &set)?.wall);
            }
        }
    }
    let (plain, built) = (median(plain), median(built));

    // The running daemon on the same objects as ten apps of a base and an
    // overlay each: a no-op resync and a push to a plain file run no
    // kustomize; a push to one overlay's patch rebuilds that overlay alone.
    eprintln!("bench: tidegate daemon on ten overlays: no-ops, a plain push, patch pushes");
    let prefix = "kd-1k";
    let tree = dir.join("kd-tree");
    generate(&tree, prefix, OBJECTS)?;
    layout(&tree, prefix, APPS)?;
    let repo = dir.join("kd-repo");
    repository(&repo, &tree)?;
    let daemon = b.daemon(&repo, "bench-kustomize-daemon", &flags)?;
    daemon.until_syncs(1)?;
    let before = runs(&counter)?;
    for _ in 0..5 {
        daemon.resync()?;
    }
    let work = repo.join("work");
    let plain_file = work.join(format!("namespaces/{prefix}-0.yaml"));
    let text = std::fs::read_to_string(&plain_file).map_err(|e| e.to_string())?;
    std::fs::write(
        &plain_file,
        format!("{text}  labels: {{touched: \"yes\"}}\n"),
    )
    .map_err(|e| e.to_string())?;
    let syncs = daemon.syncs()?;
    commit(&work, "a plain file only")?;
    daemon.until_syncs(syncs + 1)?;
    let noop_builds = runs(&counter)? - before;
    let ns = format!("{prefix}-0");
    let work_text = work.display().to_string();
    let pushes = b.probe(&[
        "-engine",
        "push",
        "-work",
        &work_text,
        "-file",
        "app-0/overlay/patch.yaml",
        "-namespace",
        &ns,
        "-names",
        "obj-0",
        "-rounds",
        &PUSHES.to_string(),
    ])?;
    drop(daemon);
    let p50 = percentile(&pushes, 50);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nkustomize: {OBJECTS} objects as a base and an overlay, cold {:.2} s against {:.2} s as plain files; \
         as {APPS} apps of a base and an overlay each, {noop_builds} kustomize runs in 5 no-op resyncs and a plain push, \
         one overlay's patch pushed → applied p50 {p50:.1} ms, p99 {:.1} ms ({PUSHES} pushes)",
        built.as_secs_f64(),
        plain.as_secs_f64(),
        percentile(&pushes, 99),
    );
    figures.push(ratio_figure(
        "kustomize_cold_vs_plain",
        "kustomize cold sync vs the same objects as plain files, 1,000 objects",
        built,
        plain,
        "plain files",
        1.3,
    ));
    figures.push(limit_figure(
        "kustomize_noop_builds",
        "kustomize runs: 5 no-op resyncs and a push to a plain file",
        noop_builds as f64,
        "",
        0.0,
    ));
    figures.push(limit_figure(
        "kustomize_push_p50_ms",
        "push to one overlay's patch → applied, p50, 1,000 objects in 10 overlays",
        p50,
        "ms",
        400.0,
    ));
    Ok(out)
}
