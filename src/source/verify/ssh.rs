//! SSH commit signatures (`gpg.format=ssh`): trusted keys and git's
//! `allowed_signers` in, a signer or the reason a signature is refused out,
//! as `ssh-keygen -Y verify -n git` judges it, with one rule more: under an
//! allowed-signers list, the key must be allowed for the committer's email.

use ssh_key::{HashAlg, PublicKey, SshSig};

use super::{Format, Signer};

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

/// SSH keys trusted to sign as anyone, and the allowed-signers lines that
/// trust a key only for some principals and times.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    anyone: Vec<PublicKey>,
    allowed: Vec<Allowed>,
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone, PartialEq)]
struct Allowed {
    principals: String,
    namespaces: Option<Vec<String>>,
    valid_after: Option<u64>,
    valid_before: Option<u64>,
    key: PublicKey,
}

impl Keyring {
    /// Adds authorized_keys lines: keys trusted for any committer.
    pub fn add_keys(&mut self, text: &str) -> Result<usize, String> {
        let mut added = 0;
        for (n, line) in lines(text) {
            let key = PublicKey::from_openssh(line)
                .map_err(|e| format!("line {n}: not an SSH public key: {e}"))?;
            self.anyone.push(key);
            added += 1;
        }
        if added == 0 {
            return Err("holds no SSH public key".into());
        }
        Ok(added)
    }

    /// Adds the lines of an `allowed_signers` file.
    pub fn add_allowed_signers(&mut self, text: &str) -> Result<usize, String> {
        let mut added = 0;
        for (n, line) in lines(text) {
            match parse_allowed(line) {
                Ok(Some(allowed)) => {
                    self.allowed.push(allowed);
                    added += 1;
                }
                // Certificate authorities sign keys, not commits: such a
                // line allows no commit signature, and says so.
                Ok(None) => tracing::warn!(
                    "allowed_signers line {n}: cert-authority lines are not supported; it allows nothing"
                ),
                Err(why) => return Err(format!("line {n}: {why}")),
            }
        }
        Ok(added)
    }

    pub fn is_empty(&self) -> bool {
        self.anyone.is_empty() && self.allowed.is_empty()
    }

    /// Judges the armored SSH signature `armored` of `data`, made by a
    /// commit of `email` at `time` (seconds since the epoch).
    pub fn verify(
        &self,
        armored: &str,
        data: &[u8],
        email: &str,
        time: u64,
    ) -> Result<Signer, String> {
        let signature = SshSig::from_pem(armored)
            .map_err(|e| format!("the SSH signature cannot be read: {e}"))?;
        let key = PublicKey::from(signature.public_key().clone());
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if signature.namespace() != NAMESPACE {
            return Err(format!(
                "SSH key {fingerprint}: signed in namespace {:?}, not git's",
                signature.namespace()
            ));
        }
        let same = |k: &PublicKey| k.key_data() == key.key_data();
        let name = if self.anyone.iter().any(same) {
            key.comment().to_string()
        } else {
            let lines: Vec<&Allowed> = self.allowed.iter().filter(|a| same(&a.key)).collect();
            if lines.is_empty() {
                return Err(format!(
                    "signed with SSH key {fingerprint}, which is not among the trusted keys"
                ));
            }
            allowed_for(&lines, email, time)
                .map_err(|why| format!("SSH key {fingerprint}: {why}"))?;
            email.to_string()
        };
        if key.verify(NAMESPACE, data, &signature).is_err() {
            return Err(format!(
                "SSH key {fingerprint}: the signature does not match the commit (changed after signing?)"
            ));
        }
        Ok(Signer {
            format: Format::Ssh,
            fingerprint,
            name,
        })
    }
}

/// Whether one of `lines` (all for the signing key) allows `email` to sign
/// in git's namespace at `time`; else why not, for the nearest miss.
fn allowed_for(lines: &[&Allowed], email: &str, time: u64) -> Result<(), String> {
    let mut why = String::new();
    for line in lines {
        if !matches_list(&line.principals, email) {
            why = format!("allowed_signers does not allow it to sign as {email}");
        } else if line
            .namespaces
            .as_ref()
            .is_some_and(|n| !n.iter().any(|n| matches_pattern(n, NAMESPACE)))
        {
            why = "allowed_signers does not allow it to sign in git's namespace".into();
        } else if line.valid_after.is_some_and(|t| time < t) {
            why = "allowed_signers does not allow it yet at the commit's time".into();
        } else if line.valid_before.is_some_and(|t| time > t) {
            why = "allowed_signers no longer allows it at the commit's time".into();
        } else {
            return Ok(());
        }
    }
    Err(why)
}

/// The lines that say something: numbered, without comments and blanks.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// `principals [options] keytype key [comment]`; `None` for a
/// cert-authority line.
fn parse_allowed(line: &str) -> Result<Option<Allowed>, String> {
    let (principals, rest) = split_field(line);
    if principals.is_empty() || rest.is_empty() {
        return Err("expected `principals [options] key`".into());
    }
    let mut allowed = Allowed {
        principals: unquote(principals),
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: PublicKey::from_openssh(rest).or_else(|_| {
            // Not a key yet: the options come first.
            let (_, key) = split_field(rest);
            PublicKey::from_openssh(key).map_err(|e| format!("not an SSH public key: {e}"))
        })?,
    };
    if PublicKey::from_openssh(rest).is_ok() {
        return Ok(Some(allowed));
    }
    let (options, _) = split_field(rest);
    for option in split_options(options) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let value = unquote(value);
        match name.to_ascii_lowercase().as_str() {
            "cert-authority" => return Ok(None),
            "namespaces" => {
                allowed.namespaces = Some(value.split(',').map(str::to_string).collect())
            }
            "valid-after" => allowed.valid_after = Some(parse_time(&value)?),
            "valid-before" => allowed.valid_before = Some(parse_time(&value)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(Some(allowed))
}

/// The first whitespace-separated field (double quotes keep spaces in it)
/// and the rest.
fn split_field(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], text[i..].trim_start()),
            _ => {}
        }
    }
    (text, "")
}

/// Options separated by commas outside double quotes.
fn split_options(text: &str) -> Vec<&str> {
    let mut options = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                options.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    options.push(&text[start..]);
    options.into_iter().filter(|o| !o.is_empty()).collect()
}

fn unquote(text: &str) -> String {
    text.trim_matches('"').to_string()
}

/// `YYYYMMDD[HHMM[SS]][Z]`, read as UTC (the time zone tidegate runs in).
fn parse_time(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a time of the form YYYYMMDD[HHMM[SS]][Z]");
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |from: usize, to: usize| -> u64 {
        digits.get(from..to).map_or(0, |d| d.parse().unwrap_or(0))
    };
    let (year, month, day) = (field(0, 4), field(4, 6), field(6, 8));
    let (hour, minute, second) = (field(8, 10), field(10, 12), field(12, 14));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    u64::try_from(days * 86_400 + (hour * 3600 + minute * 60 + second) as i64).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// OpenSSH's pattern lists: comma-separated patterns, `!` negating; a
/// negated match refuses whatever else matches.
fn matches_list(list: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if matches_pattern(negated, name) {
                return false;
            }
        } else if matches_pattern(pattern, name) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINspW+ovielQbdXhuNMmC5Er5E+qT1j6+sjHls6Q4ayZ alice";

    #[test]
    fn allowed_signers_lines_are_read_with_their_options() {
        let line = format!(
            "alice@example.com,*@ops.example.com namespaces=\"git,file\",valid-after=\"20260101\",valid-before=20270101Z {KEY}"
        );
        let allowed = parse_allowed(&line).unwrap().unwrap();
        assert_eq!(allowed.principals, "alice@example.com,*@ops.example.com");
        assert_eq!(
            allowed.namespaces,
            Some(vec!["git".to_string(), "file".to_string()])
        );
        assert_eq!(allowed.valid_after, Some(1_767_225_600));
        assert_eq!(allowed.valid_before, Some(1_798_761_600));
        let plain = parse_allowed(&format!("bob@example.com {KEY}"))
            .unwrap()
            .unwrap();
        assert_eq!(plain.namespaces, None);
        assert!(
            parse_allowed(&format!("* cert-authority {KEY}"))
                .unwrap()
                .is_none()
        );
        assert!(parse_allowed(&format!("* bogus=1 {KEY}")).is_err());
        assert!(parse_allowed("alice@example.com").is_err());
    }

    #[test]
    fn principals_match_as_openssh_pattern_lists() {
        assert!(matches_list("alice@example.com", "alice@example.com"));
        assert!(!matches_list("alice@example.com", "bob@example.com"));
        assert!(matches_list("*@ops.example.com", "carol@ops.example.com"));
        assert!(!matches_list(
            "*@ops.example.com,!mallory@ops.example.com",
            "mallory@ops.example.com"
        ));
        assert!(matches_list("a?c@x", "abc@x"));
        assert!(!matches_list("a?c@x", "ac@x"));
    }

    #[test]
    fn allowed_signers_times_bound_the_commit_time() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let line = Allowed {
            principals: "alice@example.com".into(),
            namespaces: Some(vec!["git".into()]),
            valid_after: Some(100),
            valid_before: Some(200),
            key,
        };
        assert!(allowed_for(&[&line], "alice@example.com", 150).is_ok());
        assert!(
            allowed_for(&[&line], "alice@example.com", 99)
                .unwrap_err()
                .contains("yet")
        );
        assert!(
            allowed_for(&[&line], "alice@example.com", 201)
                .unwrap_err()
                .contains("no longer")
        );
        assert!(
            allowed_for(&[&line], "bob@example.com", 150)
                .unwrap_err()
                .contains("as bob@example.com")
        );
    }
}
