//! The PostgreSQL password the libpq way, so that it need not be in the
//! `--database` URL (where every local user can read it in
//! `/proc/PID/cmdline`).
//!
//! The `postgres` crate reads no environment variable and no password file
//! itself; [`resolve`] does, in libpq's order, when the URL carries no
//! password:
//!
//! 1. `PGPASSWORD` (discouraged by libpq too: some systems show a process's
//!    environment to other users);
//! 2. the password file `PGPASSFILE`, else `~/.pgpass`: lines
//!    `hostname:port:database:username:password`, `*` matching anything in
//!    the first four fields, `\:` and `\\` escaping, `#` starting a comment
//!    line, the first matching line winning. Like libpq, a file that group
//!    or others can access (mode not 0600 or stricter), or that is not a
//!    regular file, is ignored with a warning.
//!
//! [`lookup`] is the pure part (one file's text against one target).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The password file is read up to this size; a larger one is ignored with
/// a warning (libpq has no limit, but a password file is a few lines).
pub const MAX_PASSFILE_BYTES: u64 = 1024 * 1024;

/// What a connection is made to, as a password file line matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Host name or address; a Unix socket directory's path (libpq also
    /// matches the default socket directory as `localhost`).
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Database name.
    pub database: &'a str,
    /// User name.
    pub user: &'a str,
}

/// Where a password came from (never the password itself, for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `PGPASSWORD` environment variable.
    Environment,
    /// A line of this password file.
    File(PathBuf),
}

/// Splits one password file line into its five fields, unescaping `\:`
/// and `\\` (libpq: a backslash escapes the next character). `None` for a
/// comment, a blank line or a line with fewer than five fields.
pub fn fields(line: &str) -> Option<[String; 5]> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(5);
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    field.push(next);
                }
            }
            // libpq: the fifth field (the password) takes the rest of the line.
            ':' if out.len() < 4 => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    <[String; 5]>::try_from(out).ok()
}

/// Whether a field (already unescaped) matches `value`: `*` matches anything.
/// As in libpq, an escaped `\*` is indistinguishable from `*` after
/// unescaping, so it is a wildcard too.
fn matches(field: &str, value: &str) -> bool {
    field == "*" || field == value
}

/// The password of the first line of `contents` that matches `target`.
pub fn lookup(contents: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let hosts: &[&str] = if is_default_socket_dir(target.host) {
        &[target.host, "localhost"]
    } else {
        &[target.host]
    };
    contents
        .lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter_map(fields)
        .find(|[host, p, db, user, _]| {
            hosts.iter().any(|h| matches(host, h))
                && matches(p, &port)
                && matches(db, target.database)
                && matches(user, target.user)
        })
        .map(|[.., password]| password)
}

/// libpq matches a connection over its default Unix socket directory as
/// host `localhost`.
fn is_default_socket_dir(host: &str) -> bool {
    matches!(
        host.trim_end_matches('/'),
        "/var/run/postgresql" | "/run/postgresql" | "/tmp"
    )
}

/// Why a password file was not used (printed as a warning, as libpq does).
pub fn check_mode(path: &Path, metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if !metadata.is_file() {
        return Err(format!(
            "password file {} is not a plain file; ignored",
            path.display()
        ));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "password file {} has group or world access (mode {mode:03o}); permissions should \
             be u=rw (0600) or less; ignored",
            path.display()
        ));
    }
    if metadata.len() > MAX_PASSFILE_BYTES {
        return Err(format!(
            "password file {} is larger than {MAX_PASSFILE_BYTES} bytes; ignored",
            path.display()
        ));
    }
    Ok(())
}

/// The password for `target` when the URL had none, and the warnings to
/// print. `env` reads an environment variable (the process's, or a test's).
pub fn resolve(
    target: &Target<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<(String, Source)>, Vec<String>) {
    let mut warnings = Vec::new();
    if let Some(password) = env("PGPASSWORD").filter(|p| !p.is_empty()) {
        return (Some((password, Source::Environment)), warnings);
    }
    let path = match env("PGPASSFILE").filter(|p| !p.is_empty()) {
        Some(file) => PathBuf::from(file),
        None => match env("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Path::new(&home).join(".pgpass"),
            None => return (None, warnings),
        },
    };
    // Opened first and checked through the open file, so what is checked is
    // what is read (no swap between the check and the read).
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // No password file is the usual case, not worth a warning.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, warnings),
        Err(e) => {
            warnings.push(format!("password file {}: {e}; ignored", path.display()));
            return (None, warnings);
        }
    };
    let checked = file
        .metadata()
        .map_err(|e| format!("password file {}: {e}; ignored", path.display()))
        .and_then(|m| check_mode(&path, &m));
    if let Err(warning) = checked {
        warnings.push(warning);
        return (None, warnings);
    }
    let mut contents = String::new();
    // Bounded by bytes read, not by the size the metadata claimed.
    if let Err(e) = file.take(MAX_PASSFILE_BYTES).read_to_string(&mut contents) {
        warnings.push(format!("password file {}: {e}; ignored", path.display()));
        return (None, warnings);
    }
    (
        lookup(&contents, target).map(|p| (p, Source::File(path))),
        warnings,
    )
}

/// Whether a `postgres://` URL carries a password (`user:password@`), for
/// the warning about command lines.
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_password = rest
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv.starts_with("password=")));
    userinfo_password || query_password
}

/// The warning printed when a URL given on the command line carries a password.
pub const URL_PASSWORD_WARNING: &str = "warning: the --database URL carries a password, which \
     every local user can read in /proc/PID/cmdline; put it in a password file instead \
     (PGPASSFILE or ~/.pgpass, mode 0600), or in PGPASSWORD";

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            host: "db.example",
            port: 5432,
            database: "hub",
            user: "sonotap",
        }
    }

    #[test]
    fn issue13_07_first_matching_line_wins_with_wildcards() {
        let file = "\
# comment: any:1:2:3:4
other.example:5432:hub:sonotap:nope
*:5432:hub:sonotap:first
*:*:*:*:second
";
        assert_eq!(lookup(file, &target()).as_deref(), Some("first"));
        let elsewhere = Target {
            port: 6543,
            ..target()
        };
        assert_eq!(lookup(file, &elsewhere).as_deref(), Some("second"));
        assert_eq!(lookup("db.example:5432:hub:other:x\n", &target()), None);
        assert_eq!(lookup("", &target()), None);
    }

    #[test]
    fn issue13_07_escaped_colons_and_backslashes() {
        assert_eq!(
            fields(r"h\:x:1:d\\b:u:pa\:ss:word").expect("five fields"),
            ["h:x", "1", r"d\b", "u", "pa:ss:word"].map(String::from)
        );
        let file = "db.example:5432:hub:sonotap:s\\:e\\\\c\\:ret\r\n";
        assert_eq!(lookup(file, &target()).as_deref(), Some("s:e\\c:ret"));
        // Too few fields: skipped, not a match of the password field.
        assert_eq!(fields("a:b:c:d"), None);
        assert_eq!(lookup("*:*:*:only-four\n", &target()), None);
    }

    #[test]
    fn issue13_07_default_socket_directory_matches_localhost() {
        let socket = Target {
            host: "/var/run/postgresql",
            ..target()
        };
        assert_eq!(
            lookup("localhost:5432:hub:sonotap:local\n", &socket).as_deref(),
            Some("local")
        );
        let other_socket = Target {
            host: "/srv/pg",
            ..target()
        };
        assert_eq!(
            lookup("localhost:5432:hub:sonotap:local\n", &other_socket),
            None
        );
        assert_eq!(
            lookup("/srv/pg:5432:hub:sonotap:dir\n", &other_socket).as_deref(),
            Some("dir")
        );
    }

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn issue13_07_pgpassword_then_passfile_then_home_pgpass() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pass");
        std::fs::write(&file, "*:*:hub:sonotap:from-file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let passfile = file.display().to_string();

        let env = env_of(&[
            ("PGPASSWORD", "from-env".into()),
            ("PGPASSFILE", passfile.clone()),
        ]);
        let (found, warnings) = resolve(&target(), &env);
        assert_eq!(found, Some(("from-env".into(), Source::Environment)));
        assert!(warnings.is_empty());

        let env = env_of(&[("PGPASSFILE", passfile.clone())]);
        let (found, warnings) = resolve(&target(), &env);
        assert_eq!(
            found,
            Some(("from-file".into(), Source::File(file.clone())))
        );
        assert!(warnings.is_empty());

        std::fs::copy(&file, dir.path().join(".pgpass")).expect("copy");
        std::fs::set_permissions(
            dir.path().join(".pgpass"),
            std::fs::Permissions::from_mode(0o400),
        )
        .expect("chmod");
        let env = env_of(&[("HOME", dir.path().display().to_string())]);
        let (found, _) = resolve(&target(), &env);
        assert_eq!(
            found.map(|(p, _)| p).as_deref(),
            Some("from-file"),
            "~/.pgpass at 0400 is used"
        );

        let (found, warnings) = resolve(&target(), &env_of(&[]));
        assert_eq!((found, warnings), (None, vec![]));
    }

    #[test]
    fn issue13_07_group_or_world_readable_passfile_is_ignored_with_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pass");
        std::fs::write(&file, "*:*:*:*:secret-in-open-file\n").expect("write");
        let env = env_of(&[("PGPASSFILE", file.display().to_string())]);
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let (found, warnings) = resolve(&target(), &env);
            assert_eq!(found, None, "mode {mode:o}");
            assert_eq!(warnings.len(), 1, "mode {mode:o}");
            assert!(
                warnings[0].contains("group or world access")
                    && warnings[0].contains("0600")
                    && !warnings[0].contains("secret"),
                "{}",
                warnings[0]
            );
        }
        // A directory is not a password file.
        let env = env_of(&[("PGPASSFILE", dir.path().display().to_string())]);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let (found, warnings) = resolve(&target(), &env);
        assert_eq!(found, None);
        assert!(warnings[0].contains("not a plain file"), "{warnings:?}");
    }

    #[test]
    fn issue13_07_url_password_is_noticed() {
        assert!(url_has_password("postgres://u:pw@h/db"));
        assert!(url_has_password("postgresql://u:@h:5/db?sslmode=disable"));
        assert!(url_has_password(
            "postgres://u@h/db?sslmode=disable&password=x"
        ));
        assert!(!url_has_password("postgres://u@h/db"));
        assert!(!url_has_password(
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db"
        ));
        assert!(!url_has_password("postgres://h:5432/db"));
    }
}
