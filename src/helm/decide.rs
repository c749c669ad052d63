//! What to do with one release: its Helm history and the digests of what Git
//! asks for in, one operation out. Pure, so every case is a unit test.

use super::storage::Record;

/// Labels tidegate sets on every release revision it makes.
pub const CHART_DIGEST_LABEL: &str = "tidegate.dev/chart-digest";
pub const VALUES_DIGEST_LABEL: &str = "tidegate.dev/values-digest";

/// Digests of the chart's content and of the merged values, each cut to 32
/// hex characters (label values hold at most 63).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub chart: String,
    pub values: String,
}

impl Digests {
    pub fn labels(&self) -> Vec<(String, String)> {
        vec![
            (CHART_DIGEST_LABEL.to_string(), self.chart.clone()),
            (VALUES_DIGEST_LABEL.to_string(), self.values.clone()),
        ]
    }

    fn of(record: &Record) -> Option<Digests> {
        Some(Digests {
            chart: record.labels.get(CHART_DIGEST_LABEL)?.clone(),
            values: record.labels.get(VALUES_DIGEST_LABEL)?.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Install,
    Upgrade(String),
    /// Nothing changed in Git: upgrade only if the live objects drifted.
    CheckLive,
    /// A release with no tidegate digests (made by helm-operator or by
    /// hand): compare what it was given with what Git asks for.
    CompareAdopted,
    /// A pending revision no operation finishes any more: roll back to
    /// the last deployed one.
    RecoverRollback {
        from: u32,
        to: u32,
        status: String,
    },
    /// A release that never deployed (left pending or failed at install):
    /// uninstall it and install again.
    Reinstall {
        status: String,
    },
    /// These digests were tried and failed; wait for a change in Git.
    Blocked(String),
}

/// The retry policy after a failed upgrade (`rollback.retry`, `maxRetries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub enabled: bool,
    pub max: u64,
}

fn is_pending(status: &str) -> bool {
    status.starts_with("pending-") || status == "uninstalling"
}

pub fn decide(history: &[Record], desired: &Digests, retry: Retry) -> Operation {
    let Some(latest) = history.last() else {
        return Operation::Install;
    };
    let deployed = history.iter().rev().find(|r| r.status == "deployed");
    if is_pending(&latest.status) {
        return match (latest.status.as_str(), deployed) {
            ("pending-upgrade" | "pending-rollback", Some(d)) => Operation::RecoverRollback {
                from: latest.version,
                to: d.version,
                status: latest.status.clone(),
            },
            _ => Operation::Reinstall {
                status: latest.status.clone(),
            },
        };
    }
    let Some(deployed) = deployed else {
        // Only failed (or superseded) revisions: the install never worked.
        let tried = Digests::of(latest).as_ref() == Some(desired);
        if tried && !retry.enabled {
            return Operation::Blocked(format!(
                "the install failed at revision {} ({}); tidegate tries again when the chart or values change",
                latest.version, latest.status
            ));
        }
        return Operation::Reinstall {
            status: latest.status.clone(),
        };
    };
    // The newest revision made from exactly these digests tells whether
    // they were tried already.
    let same: Vec<&Record> = history
        .iter()
        .filter(|r| Digests::of(r).as_ref() == Some(desired))
        .collect();
    if let Some(last_try) = same.last()
        && last_try.status == "failed"
    {
        let failures = same.iter().filter(|r| r.status == "failed").count() as u64;
        // maxRetries 0: no limit, as helm-operator read it.
        if !retry.enabled || (retry.max != 0 && failures > retry.max) {
            return Operation::Blocked(format!(
                "the upgrade to this chart and these values failed at revision {}; \
                 tidegate tries again when the chart or values change{}",
                last_try.version,
                if retry.enabled {
                    format!(" (rollback.maxRetries {} reached)", retry.max)
                } else {
                    " (or set rollback.retry)".to_string()
                }
            ));
        }
        return Operation::Upgrade(format!(
            "retrying the failed upgrade ({failures} of {})",
            retry.max
        ));
    }
    match Digests::of(deployed) {
        None => Operation::CompareAdopted,
        Some(live) if live == *desired => Operation::CheckLive,
        Some(live) => {
            let mut what = Vec::new();
            if live.chart != desired.chart {
                what.push("the chart");
            }
            if live.values != desired.values {
                what.push("the values");
            }
            Operation::Upgrade(format!("{} changed", what.join(" and ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(chart: &str, values: &str) -> Digests {
        Digests {
            chart: chart.into(),
            values: values.into(),
        }
    }

    fn rec(version: u32, status: &str, d: Option<&Digests>) -> Record {
        Record {
            version,
            status: status.into(),
            labels: d
                .map(|d| d.labels().into_iter().collect())
                .unwrap_or_default(),
        }
    }

    const NO_RETRY: Retry = Retry {
        enabled: false,
        max: 5,
    };

    #[test]
    fn absent_is_installed_unchanged_is_checked_live() {
        let a = digests("c1", "v1");
        assert_eq!(decide(&[], &a, NO_RETRY), Operation::Install);
        let history = [rec(1, "superseded", Some(&a)), rec(2, "deployed", Some(&a))];
        assert_eq!(decide(&history, &a, NO_RETRY), Operation::CheckLive);
    }

    #[test]
    fn changed_chart_or_values_upgrade_and_say_which() {
        let a = digests("c1", "v1");
        let history = [rec(1, "deployed", Some(&a))];
        assert_eq!(
            decide(&history, &digests("c2", "v1"), NO_RETRY),
            Operation::Upgrade("the chart changed".into())
        );
        assert_eq!(
            decide(&history, &digests("c1", "v2"), NO_RETRY),
            Operation::Upgrade("the values changed".into())
        );
        assert_eq!(
            decide(&history, &digests("c2", "v2"), NO_RETRY),
            Operation::Upgrade("the chart and the values changed".into())
        );
    }

    #[test]
    fn releases_without_digests_are_compared_not_reinstalled() {
        let history = [rec(1, "superseded", None), rec(2, "deployed", None)];
        assert_eq!(
            decide(&history, &digests("c", "v"), NO_RETRY),
            Operation::CompareAdopted
        );
    }

    #[test]
    fn pending_revisions_are_recovered() {
        let a = digests("c1", "v1");
        let b = digests("c2", "v1");
        let upgrading = [
            rec(1, "deployed", Some(&a)),
            rec(2, "pending-upgrade", Some(&b)),
        ];
        assert_eq!(
            decide(&upgrading, &b, NO_RETRY),
            Operation::RecoverRollback {
                from: 2,
                to: 1,
                status: "pending-upgrade".into()
            }
        );
        let rolling = [
            rec(1, "superseded", Some(&a)),
            rec(2, "deployed", Some(&b)),
            rec(3, "pending-rollback", Some(&a)),
        ];
        assert!(matches!(
            decide(&rolling, &b, NO_RETRY),
            Operation::RecoverRollback { to: 2, .. }
        ));
        let installing = [rec(1, "pending-install", Some(&a))];
        assert_eq!(
            decide(&installing, &a, NO_RETRY),
            Operation::Reinstall {
                status: "pending-install".into()
            }
        );
    }

    #[test]
    fn a_failed_upgrade_rolled_back_is_not_retried_until_git_changes() {
        let good = digests("c1", "v1");
        let bad = digests("c1", "v2");
        let history = [
            rec(1, "superseded", Some(&good)),
            rec(2, "failed", Some(&bad)),
            rec(3, "deployed", Some(&good)),
        ];
        assert!(matches!(
            decide(&history, &bad, NO_RETRY),
            Operation::Blocked(m) if m.contains("failed at revision 2")
        ));
        // Git went back to what is deployed: nothing to do.
        assert_eq!(decide(&history, &good, NO_RETRY), Operation::CheckLive);
        // Something new: upgrade.
        assert!(matches!(
            decide(&history, &digests("c1", "v3"), NO_RETRY),
            Operation::Upgrade(_)
        ));
        // With rollback.retry, retried up to maxRetries.
        let retry = Retry {
            enabled: true,
            max: 1,
        };
        assert!(matches!(
            decide(&history, &bad, retry),
            Operation::Upgrade(m) if m.contains("retrying")
        ));
        let twice = [
            rec(1, "superseded", Some(&good)),
            rec(2, "failed", Some(&bad)),
            rec(3, "superseded", Some(&good)),
            rec(4, "failed", Some(&bad)),
            rec(5, "deployed", Some(&good)),
        ];
        assert!(matches!(decide(&twice, &bad, retry), Operation::Blocked(_)));
        // maxRetries 0: retried without limit, as helm-operator did.
        let unlimited = Retry {
            enabled: true,
            max: 0,
        };
        assert!(matches!(
            decide(&twice, &bad, unlimited),
            Operation::Upgrade(m) if m.contains("retrying")
        ));
    }

    #[test]
    fn a_failed_install_is_reinstalled_only_after_a_change() {
        let a = digests("c1", "v1");
        let history = [rec(1, "failed", Some(&a))];
        assert!(matches!(
            decide(&history, &a, NO_RETRY),
            Operation::Blocked(m) if m.contains("install failed")
        ));
        assert_eq!(
            decide(&history, &digests("c2", "v1"), NO_RETRY),
            Operation::Reinstall {
                status: "failed".into()
            }
        );
    }
}
