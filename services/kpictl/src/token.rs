//! `kpictl token new`: a bearer token for a `--tokens` file (CONTRACT §8,
//! §8.1): the projector's (readers, operators) or an ingest service's
//! (senders, operators). The token is printed once and stored nowhere; the
//! file keeps only its SHA-256.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: print it once, and the line for the tokens file.
    New(NewTokenArgs),
}

#[derive(Debug, Args)]
pub struct NewTokenArgs {
    /// The unit whose subtree the token reads (its id), or `*` for all.
    #[arg(long)]
    pub scope: String,
    /// `reader` (the projector's API), `operator` (also the audit calls,
    /// and sending), or `sender` (an ingest service's: posts events for its
    /// scope).
    #[arg(long, value_enum)]
    pub role: TokenRole,
    /// Whom the token is for, as the server's logs and refusals name it.
    #[arg(long)]
    pub name: String,
    /// The units file the servers load: the scope must be one of its
    /// units (a tokens file naming another is refused by the servers).
    #[arg(long, env = "KPI_UNITS")]
    pub units: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenRole {
    Reader,
    Operator,
    Sender,
}

impl TokenRole {
    fn as_str(self) -> &'static str {
        match self {
            TokenRole::Reader => "reader",
            TokenRole::Operator => "operator",
            TokenRole::Sender => "sender",
        }
    }

    /// Whose `--tokens` file the line goes into.
    fn servers(self) -> &'static str {
        match self {
            TokenRole::Reader => "projector",
            TokenRole::Operator => "projector (và của các dịch vụ nhận sự kiện, để gửi)",
            TokenRole::Sender => "các dịch vụ nhận sự kiện (intake, resolution, feedback)",
        }
    }
}

/// 32 random bytes from the operating system, as hex after a prefix that
/// says what the string is.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("no randomness from the operating system: {err}"))?;
    Ok(format!("kpi_{}", hex::encode(bytes)))
}

/// The tokens file's entry for `token`.
fn entry(token: &str, args: &NewTokenArgs) -> serde_json::Value {
    json!({
        "name": args.name,
        "sha256": kpi_api::access::token_sha256(token),
        "scope": args.scope,
        "role": args.role.as_str(),
    })
}

/// Whether `scope` is `*` or a unit of `units`; the error says what is.
fn check_scope(scope: &str, units: &kpi_domain::UnitRegistry) -> anyhow::Result<()> {
    if scope == "*" || units.find(scope).is_some() {
        return Ok(());
    }
    anyhow::bail!(
        "--scope `{scope}` is not a unit of the units file (nor `*`, every unit): \
         `kpictl units` lists them"
    )
}

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::New(args) => {
            match &args.units {
                Some(path) => check_scope(&args.scope, &crate::load_units(path)?)?,
                None => eprintln!(
                    "lưu ý: --scope `{}` chưa được đối chiếu với tệp đơn vị (dùng --units hoặc đặt KPI_UNITS)",
                    args.scope
                ),
            }
            let token = new_token()?;
            println!("token (trao cho {}; chỉ hiện một lần này):", args.name);
            println!("{token}");
            println!();
            println!(
                "dòng cho tệp --tokens của {} (rồi gửi SIGHUP cho chúng):",
                args.role.servers()
            );
            println!("{}", entry(&token, &args));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_random_and_its_line_holds_only_its_hash() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        let args = NewTokenArgs {
            scope: "51".into(),
            role: TokenRole::Reader,
            name: "Sở Nội vụ".into(),
            units: None,
        };
        let line = entry(&a, &args);
        assert_eq!(line["sha256"], kpi_api::access::token_sha256(&a));
        assert_eq!(line["role"], "reader");
        assert!(
            !line.to_string().contains(&a[4..]),
            "the token itself is not in the line"
        );
    }

    #[test]
    fn a_scope_outside_the_units_file_is_refused() {
        let units = kpi_domain::UnitRegistry::from_json(
            r#"{"units": [{"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"}]}"#
                .as_bytes(),
        )
        .unwrap();
        assert!(check_scope("51", &units).is_ok());
        assert!(check_scope("*", &units).is_ok());
        let err = check_scope("9999", &units).unwrap_err().to_string();
        assert!(err.contains("`9999` is not a unit"), "{err}");
    }
}
