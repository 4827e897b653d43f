//! Loading: flags over environment over file over built-in defaults, and
//! what `receiptd config` prints (each effective setting and its source,
//! secrets left out).

use super::{Cli, ServeArgs};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;

/// Where an effective setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `RECEIPTS_*` environment variable.
    Env,
    /// The `--config` file.
    File,
    /// The built-in default (or unset).
    Default,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Env => "env",
            Self::File => "file",
            Self::Default => "default",
        }
    }
}

/// One effective setting, as the start-up line and `receiptd config` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The flag name without dashes (also the file key).
    pub key: String,
    /// Its values (several for list settings; none when unset), with
    /// secrets replaced by `<redacted>`.
    pub values: Vec<String>,
    /// Whether it is a secret (never printed).
    pub secret: bool,
    /// Whether it takes a list.
    pub list: bool,
    /// Where the value came from.
    pub source: Source,
}

/// A parsed command line and the effective settings behind it.
#[derive(Debug)]
pub struct Loaded {
    /// What to run, with what.
    pub cli: Cli,
    /// Every setting of [`ServeArgs`], in `--help` order.
    pub settings: Vec<Setting>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or value clap refused (or `--help` / `--version`, which print
    /// and are not failures).
    #[error("{0}")]
    Args(#[from] clap::Error),
    /// The configuration file is unreadable or wrong.
    #[error("invalid configuration: --config {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, naming the key.
        reason: String,
    },
}

/// Settings whose values are never logged or printed.
const SECRETS: &[&str] = &["jwt_secret", "redis_password", "scylla_password"];

/// Parses `args` (with the program name first), the environment and the
/// `--config` file (from `--config` or `RECEIPTS_CONFIG`).
pub fn load<I, T>(args: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    let mut from_file = HashSet::new();
    if let Some(path) = config_path(&args) {
        let shown = path.display().to_string();
        let file_err = |reason: String| LoadError::File {
            path: shown.clone(),
            reason,
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| file_err(format!("cannot read it: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_err(e.message().trim().to_string()))?;
        for (key, value) in table {
            let long = key.replace('_', "-");
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != "config")
                .map(|a| a.get_id().clone())
                .ok_or_else(|| file_err(format!("unknown key `{key}`")))?;
            let values = toml_values(&value).ok_or_else(|| {
                file_err(format!(
                    "`{key}`: expected a string, number, boolean or an array of them"
                ))
            })?;
            cmd = cmd.mut_arg(id.clone(), |a| a.default_values(values));
            from_file.insert(id.to_string());
        }
    }
    let matches = cmd.try_get_matches_from(&args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let settings = settings(&matches, &from_file);
    Ok(Loaded { cli, settings })
}

/// `--config FILE`, `--config=FILE` or `RECEIPTS_CONFIG`, found before clap
/// parses (the file supplies clap's defaults).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("RECEIPTS_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn toml_values(value: &toml::Value) -> Option<Vec<String>> {
    fn scalar(v: &toml::Value) -> Option<String> {
        match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        v => scalar(v).map(|s| vec![s]),
    }
}

fn settings(matches: &ArgMatches, from_file: &HashSet<String>) -> Vec<Setting> {
    let serve = ServeArgs::augment_args(clap::Command::new("receiptd"));
    let mut out = Vec::new();
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env,
            Some(ValueSource::DefaultValue) if from_file.contains(id) => Source::File,
            _ => Source::Default,
        };
        let secret = SECRETS.contains(&id);
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vals| {
                vals.map(|v| {
                    if secret {
                        "<redacted>".to_string()
                    } else {
                        redact_password(&v.to_string_lossy())
                    }
                })
                .collect()
            })
            .unwrap_or_default();
        out.push(Setting {
            key: long.to_string(),
            values,
            secret,
            list: arg.get_value_delimiter().is_some(),
            source,
        });
    }
    out
}

/// `scheme://user:password@host` with the password replaced.
fn redact_password(value: &str) -> String {
    if let Some(scheme_end) = value.find("://") {
        let rest = &value[scheme_end + 3..];
        if let Some(at) = rest.find('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            let end = scheme_end + 3 + at;
            return format!("{}<redacted>{}", &value[..start], &value[end..]);
        }
    }
    value.to_string()
}

impl Loaded {
    /// One line for the start-up log: every setting, with its source where
    /// it is not the default; secrets redacted.
    pub fn summary(&self) -> String {
        let mut parts = Vec::with_capacity(self.settings.len());
        for s in &self.settings {
            let value = if s.values.is_empty() {
                "-".to_string()
            } else {
                s.values.join(",")
            };
            match s.source {
                Source::Default => parts.push(format!("{}={value}", s.key)),
                other => parts.push(format!("{}={value} ({})", s.key, other.label())),
            }
        }
        parts.join(" ")
    }

    /// The effective configuration as a TOML file `--config` accepts:
    /// unset settings and secrets commented out, each value's source noted.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# receiptd effective configuration (receiptd config)\n");
        for s in &self.settings {
            let rendered = if s.list {
                let items: Vec<String> = s.values.iter().map(|v| toml_scalar(v)).collect();
                format!("[{}]", items.join(", "))
            } else {
                s.values.first().map(|v| toml_scalar(v)).unwrap_or_default()
            };
            let line = format!("{} = {rendered}", s.key);
            if s.secret || s.values.is_empty() {
                let why = if s.secret {
                    "secret, not shown"
                } else {
                    "unset"
                };
                out.push_str(&format!("# {} = ...  # {why}\n", s.key));
            } else {
                out.push_str(&format!("{line}  # {}\n", s.source.label()));
            }
        }
        out
    }
}

/// The reference table of every setting (file key = flag name, environment
/// variable, default, meaning) in Markdown, as docs/configuration.md holds
/// it; a test keeps the two equal.
pub fn reference_table() -> String {
    let serve = ServeArgs::augment_args(clap::Command::new("receiptd"));
    let mut out = String::from("| key / flag | env | default | meaning |\n|---|---|---|---|\n");
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default =
            if defaults.is_empty() || (defaults == ["false"] && !arg.get_action().takes_values()) {
                if arg.get_action().takes_values() {
                    "—".to_string()
                } else {
                    "off".to_string()
                }
            } else {
                format!("`{}`", defaults.join(","))
            };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| {
                h.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
            .replace('|', "\\|");
        out.push_str(&format!("| `{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

/// A value as TOML: integers and booleans bare, anything else a string.
fn toml_scalar(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_password("redis://:s3cret@r1:6379"),
            "redis://:<redacted>@r1:6379"
        );
        assert_eq!(
            redact_password("redis://app:s3cret@r1"),
            "redis://app:<redacted>@r1"
        );
        assert_eq!(redact_password("redis://r1:6379"), "redis://r1:6379");
        assert_eq!(redact_password("plain"), "plain");
    }

    #[test]
    fn config_path_comes_from_the_flag_in_either_form() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["receiptd", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path(&args(&["receiptd", "--dev-mode", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
    }

    #[test]
    fn toml_values_flatten_scalars_and_arrays() {
        let t: toml::Table = "a = 5\nb = true\nc = [\"x\", \"y\"]\nd = { e = 1 }"
            .parse()
            .unwrap();
        assert_eq!(toml_values(&t["a"]), Some(vec!["5".into()]));
        assert_eq!(toml_values(&t["b"]), Some(vec!["true".into()]));
        assert_eq!(toml_values(&t["c"]), Some(vec!["x".into(), "y".into()]));
        assert_eq!(toml_values(&t["d"]), None);
    }
}
