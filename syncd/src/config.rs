//! One config file for `syncd serve`: a TOML table whose keys are the
//! command's own long flags (`data-dir`, `metrics-listen`, ...), read from
//! clap's definitions of them, so a flag added to the command is a key of
//! the file with no code here.
//!
//! # Precedence
//! flags > environment > file > defaults. The command line is parsed once
//! with every argument optional to learn where each value came from
//! (`ArgMatches::value_source`); every file key not given by a flag or an
//! environment variable is then appended as `--key=value` and the command
//! line parsed again, for real (required arguments, conflicts, clap's own
//! value parsers).
//!
//! # Validation
//! A key no flag has, a value of the wrong shape (a table, a list for a
//! single value), or a value the flag's parser refuses is an error that
//! names the key and the file, before anything starts.
//!
//! # Printing
//! [`render_effective`] prints the effective configuration as TOML, each key
//! with where its value came from; values of secret-named keys are
//! redacted ([`is_secret`]), as are passwords inside URLs. Files are named,
//! never read, so key material in them is never printed.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Errors of loading a config file; each names the file and, where there is
/// one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: unknown key {key:?}{hint}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("config file {path}: key {key:?}: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Arguments that are not settings (and so not keys).
const NOT_KEYS: &[&str] = &["help", "version"];

/// What the value shown for a redacted key is.
pub const REDACTED: &str = "<redacted>";

/// The command line with the config file's values merged in, and which
/// keys came from the file.
pub struct Layered {
    pub argv: Vec<OsString>,
    pub from_file: BTreeSet<String>,
}

/// Merges the file named by `config_arg` (a flag of `command`, also read
/// from its environment variable) into `argv` under flags and environment.
/// `command` is the (sub)command whose flags are the keys, and `argv` its
/// own arguments, first element the command name; `not_keys` are flags of
/// it that are actions rather than settings. Without a file, `argv` comes
/// back as it is.
pub fn layer(
    command: &Command,
    argv: Vec<OsString>,
    config_arg: &str,
    not_keys: &[&str],
) -> Result<Layered, Vec<ConfigError>> {
    let relaxed = relaxed(command);
    // Errors of this first parse (a bad flag, --help) are left to the real
    // parse after it, which reports them the way clap does.
    let Ok(first) = relaxed.clone().try_get_matches_from(argv.clone()) else {
        return Ok(Layered {
            argv,
            from_file: BTreeSet::new(),
        });
    };
    let Some(path) = first.get_one::<PathBuf>(config_arg).cloned() else {
        return Ok(Layered {
            argv,
            from_file: BTreeSet::new(),
        });
    };
    let table = read_table(&path).map_err(|e| vec![e])?;
    let mut argv = argv;
    let mut from_file = BTreeSet::new();
    let mut errors = Vec::new();
    for (key, value) in &table {
        let Some(arg) = key_arg(command, key)
            .filter(|a| a.get_id() != config_arg && !not_keys.contains(&a.get_id().as_str()))
        else {
            errors.push(unknown_key(command, &path, key, config_arg));
            continue;
        };
        let id = arg.get_id().as_str();
        let outranked = matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        match file_args(arg, key, value).and_then(|args| validate(arg, &args).map(|()| args)) {
            Err(message) => errors.push(ConfigError::BadValue {
                path: path.clone(),
                key: key.clone(),
                message,
            }),
            Ok(_) if outranked => {}
            Ok(args) => {
                argv.extend(args);
                from_file.insert(key.clone());
            }
        }
    }
    if errors.is_empty() {
        Ok(Layered { argv, from_file })
    } else {
        Err(errors)
    }
}

/// The TOML of the effective configuration: every key of `command` with its
/// value in `matches` (secrets redacted) and, as a comment, where it came
/// from; unset keys as comments.
pub fn render_effective(
    command: &Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> String {
    let mut out = String::new();
    for arg in keys(command) {
        let Some(key) = arg.get_long() else { continue };
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            _ if from_file.contains(key) => "config file",
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "",
        };
        if values.is_empty() && !is_flag(arg) {
            out.push_str(&format!("# {key} = (not set)\n"));
            continue;
        }
        let value = if is_flag(arg) {
            toml::Value::Boolean(matches.get_flag(id))
        } else if is_secret(arg) {
            toml::Value::String(REDACTED.into())
        } else if arg.get_action().takes_values() && matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(values.iter().map(|v| typed(&redact_url(v))).collect())
        } else {
            typed(&redact_url(&values[values.len() - 1]))
        };
        if source.is_empty() {
            out.push_str(&format!("{key} = {value}\n"));
        } else {
            out.push_str(&format!("{key} = {value}  # {source}\n"));
        }
    }
    out
}

/// Whether `arg`'s value is secret: a name with a part such as `secret`,
/// `password`, `token` or `key`, unless the value is a path (a `-file`,
/// `-dir` or `-path` name, or a path-typed flag): the file holds the
/// secret, its name does not.
pub fn is_secret(arg: &Arg) -> bool {
    const SECRET_PARTS: &[&str] = &[
        "secret",
        "password",
        "passwd",
        "token",
        "key",
        "credential",
        "credentials",
    ];
    const PATH_PARTS: &[&str] = &["file", "dir", "path"];
    let name = arg.get_long().unwrap_or(arg.get_id().as_str());
    let parts: Vec<String> = name
        .split(['-', '_'])
        .map(str::to_ascii_lowercase)
        .collect();
    let is_path = parts
        .last()
        .is_some_and(|p| PATH_PARTS.contains(&p.as_str()))
        || arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
    !is_path && parts.iter().any(|p| SECRET_PARTS.contains(&p.as_str()))
}

/// `scheme://user:password@host...` with the password replaced.
fn redact_url(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return value.to_owned();
    };
    format!("{scheme}://{}:{REDACTED}{}", &rest[..colon], &rest[at..])
}

/// A value as the TOML type it reads as: numbers as numbers, the rest as
/// strings (the file accepts either for any key).
fn typed(value: &str) -> toml::Value {
    if let Ok(n) = value.parse::<i64>() {
        toml::Value::Integer(n)
    } else {
        toml::Value::String(value.to_owned())
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.message().to_owned(),
    })
}

/// The arguments that are settings.
fn keys(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()) && a.get_long().is_some())
}

fn key_arg<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    keys(command).find(|a| a.get_long() == Some(key))
}

fn unknown_key(command: &Command, path: &Path, key: &str, config_arg: &str) -> ConfigError {
    let kebab = key.replace('_', "-");
    let hint = if key_arg(command, &kebab).is_some_and(|a| a.get_id() != config_arg) && kebab != key
    {
        format!(" (did you mean {kebab:?}?)")
    } else if key == config_arg || kebab == config_arg {
        " (a config file cannot name another one)".to_owned()
    } else {
        String::new()
    };
    ConfigError::UnknownKey {
        path: path.to_path_buf(),
        key: key.to_owned(),
        hint,
    }
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// The command-line arguments a file value stands for.
fn file_args(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let scalar = |value: &toml::Value| -> Result<String, String> {
        match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(format!(
                "expected a string, a number or a boolean, found {}",
                value.type_str()
            )),
        }
    };
    if is_flag(arg) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{key}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        };
    }
    let values = match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        }
        toml::Value::Array(_) => return Err("expected one value, found an array".into()),
        other => vec![scalar(other)?],
    };
    Ok(values
        .into_iter()
        .map(|v| format!("--{key}={v}").into())
        .collect())
}

/// Runs the flag's own parser on the file's values, alone, so that a bad
/// one is reported under its key rather than as a flag nobody typed.
fn validate(arg: &Arg, args: &[OsString]) -> Result<(), String> {
    let alone = arg.clone().required(false).env(None::<&str>);
    let probe = Command::new("config").no_binary_name(true).arg(alone);
    match probe.try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(error) => {
            let text = error.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(first.trim_start_matches("error: ").to_owned())
        }
    }
}

/// `command` with nothing required (the first parse; `syncd config`).
pub fn relaxed(command: &Command) -> Command {
    let groups: Vec<_> = command.get_groups().map(|g| g.get_id().clone()).collect();
    let mut relaxed = command
        .clone()
        .mut_args(|a| a.required(false))
        .subcommand_required(false)
        .arg_required_else_help(false);
    for id in groups {
        relaxed = relaxed.mut_group(id, |g| g.required(false));
    }
    relaxed
}

/// Parses `--large-group-threshold`: a member count of at most
/// [`crate::limits::MAX_LARGE_GROUP_THRESHOLD`].
pub fn large_group_threshold(value: &str) -> Result<usize, String> {
    let max = crate::limits::MAX_LARGE_GROUP_THRESHOLD;
    let threshold: usize = value
        .parse()
        .map_err(|_| format!("{value:?} is not a member count"))?;
    if threshold > max {
        return Err(format!(
            "{threshold} is above the limit: at most {max} (a write-fanout group costs a write per member per message)"
        ));
    }
    Ok(threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[test]
    fn the_large_group_threshold_is_bounded() {
        assert_eq!(large_group_threshold("500"), Ok(500));
        assert_eq!(large_group_threshold("10000"), Ok(10_000));
        let refused = large_group_threshold("10001").unwrap_err();
        assert!(refused.contains("at most 10000"), "{refused}");
        assert!(large_group_threshold("-1").is_err());
        assert!(large_group_threshold("many").is_err());
    }

    /// A stand-in for `syncd serve`: one flag of each shape.
    #[derive(Args, Debug)]
    struct Demo {
        #[arg(long, env = "DEMO_CONFIG_TEST_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "DEMO_CONFIG_TEST_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "DEMO_CONFIG_TEST_STEP", default_value_t = 10)]
        step: u64,
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        api_token: Option<String>,
        #[arg(long)]
        jwt_secret_file: Option<PathBuf>,
        #[arg(long)]
        store: Option<String>,
    }

    fn command() -> Command {
        Demo::augment_args(Command::new("demo"))
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn parse(args: &[&str]) -> Result<(Demo, ArgMatches, Layered), Vec<ConfigError>> {
        let argv = std::iter::once("demo")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let layered = layer(&command(), argv, "config", &[])?;
        let matches = command()
            .try_get_matches_from(layered.argv.clone())
            .unwrap();
        Ok((Demo::from_arg_matches(&matches).unwrap(), matches, layered))
    }

    #[test]
    fn file_values_fill_what_flags_do_not_give() {
        let f = file("data-dir = \"/d\"\nstep = 7\npeers = [\"a:1\", \"b:2\"]\nverbose = true\n");
        let path = f.path().to_str().unwrap();
        let (demo, _, layered) = parse(&["--config", path]).unwrap();
        assert_eq!(demo.data_dir, PathBuf::from("/d"));
        assert_eq!(demo.step, 7);
        assert_eq!(demo.peers, ["a:1", "b:2"]);
        assert!(demo.verbose);
        assert_eq!(layered.from_file.len(), 4);

        let (demo, _, _) = parse(&["--config", path, "--step", "9", "--peers", "c:3"]).unwrap();
        assert_eq!(demo.step, 9, "a flag beats the file");
        assert_eq!(demo.peers, ["c:3"], "a list flag replaces the file's list");
    }

    /// A group that must have one member (say, one way to verify tokens)
    /// may get it from the file.
    #[test]
    fn a_required_group_may_be_satisfied_by_the_file() {
        let command = || {
            Command::new("demo")
                .arg(
                    Arg::new("config")
                        .long("config")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(Arg::new("secret-file").long("secret-file"))
                .arg(Arg::new("key-file").long("key-file"))
                .group(
                    clap::ArgGroup::new("verify")
                        .required(true)
                        .args(["secret-file", "key-file"]),
                )
        };
        let f = file("key-file = \"/k.pem\"\n");
        let argv = ["demo", "--config", f.path().to_str().unwrap()]
            .map(OsString::from)
            .to_vec();
        let layered = layer(&command(), argv, "config", &[]).unwrap();
        let matches = command().try_get_matches_from(layered.argv).unwrap();
        assert_eq!(matches.get_one::<String>("key-file").unwrap(), "/k.pem");
    }

    #[test]
    fn without_a_file_nothing_changes() {
        let (demo, _, layered) = parse(&["--data-dir", "/x"]).unwrap();
        assert_eq!((demo.step, demo.data_dir), (10, PathBuf::from("/x")));
        assert!(layered.from_file.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let f = file(
            "data-dir = \"/d\"\nstepp = 1\nstep = \"many\"\npeers = 3\nverbose = \"yes\"\ndata_dir = \"/e\"\nconfig = \"other.toml\"\n",
        );
        let errors = parse(&["--config", f.path().to_str().unwrap()])
            .err()
            .unwrap();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = messages.join("\n");
        assert_eq!(errors.len(), 5, "{all}");
        assert!(all.contains("unknown key \"stepp\""), "{all}");
        assert!(all.contains("key \"step\": invalid value 'many'"), "{all}");
        assert!(
            all.contains("key \"verbose\": expected true or false"),
            "{all}"
        );
        assert!(
            all.contains("unknown key \"data_dir\" (did you mean \"data-dir\"?)"),
            "{all}"
        );
        assert!(all.contains("unknown key \"config\""), "{all}");
        assert!(all.contains(&f.path().display().to_string()), "{all}");
        // peers = 3 is one value of a list: allowed, parsed as "3".
    }

    #[test]
    fn a_single_value_key_refuses_a_list_and_a_table() {
        let f = file("data-dir = \"/d\"\nstep = [1, 2]\n[store]\nx = 1\n");
        let errors = parse(&["--config", f.path().to_str().unwrap()])
            .err()
            .unwrap();
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter()
                .any(|m| m.contains("key \"step\": expected one value")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("key \"store\": expected a string")),
            "{all:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused() {
        let f = file("data-dir = ");
        let errors = parse(&["--config", f.path().to_str().unwrap()])
            .err()
            .unwrap();
        assert!(
            errors[0].to_string().contains("not valid TOML"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn secrets_are_redacted_and_paths_are_not() {
        let command = command();
        let arg = |name: &str| {
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(name))
                .unwrap()
        };
        assert!(is_secret(arg("api-token")));
        assert!(!is_secret(arg("jwt-secret-file")));
        assert!(!is_secret(arg("data-dir")));
        assert!(!is_secret(arg("step")));

        let f = file(
            "data-dir = \"/d\"\napi-token = \"hunter2\"\njwt-secret-file = \"/etc/s\"\nstore = \"scylla://ops:pa55@h:9042/ks\"\n",
        );
        let (_, matches, layered) =
            parse(&["--config", f.path().to_str().unwrap(), "--step", "3"]).unwrap();
        let text = render_effective(&command, &matches, &layered.from_file);
        assert!(
            !text.contains("hunter2") && !text.contains("pa55"),
            "{text}"
        );
        assert!(
            text.contains("api-token = \"<redacted>\"  # config file"),
            "{text}"
        );
        assert!(
            text.contains("jwt-secret-file = \"/etc/s\"  # config file"),
            "{text}"
        );
        assert!(
            text.contains("store = \"scylla://ops:<redacted>@h:9042/ks\""),
            "{text}"
        );
        assert!(text.contains("step = 3  # command line"), "{text}");
        assert!(text.contains("verbose = false"), "{text}");
        assert!(text.contains("# peers = (not set)"), "{text}");
        let reparsed: toml::Table = toml::from_str(&text).expect("the output is TOML");
        assert_eq!(reparsed["step"].as_integer(), Some(3));
    }
}
